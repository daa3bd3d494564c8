"""The webhook log: an audit row per request, its headers capped, and a per-minute budget of rows for
requests nothing shows came from Twilio and for signed ones that change nothing."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flask import Response, current_app, request
from peewee import PeeweeException
from redis.exceptions import RedisError

from chatbot import metrics
from chatbot.models import WebhookLog
from chatbot.redact import mask_phones_in, redact_headers
from chatbot.web import WEBHOOK_PATH
from chatbot.web.signature import signed_url

log = logging.getLogger(__name__)

MAX_LOGGED_BODY = 8192
# A request's headers are kept, but no client may fill a row with them: Twilio's signature covers
# neither the headers nor the time, so whoever captured one signed request (a tunnel inspector, a
# proxy log) can replay it with any headers added. At most this many headers, each cut this short,
# and this much of them in all: Twilio's own come to well under 1 KB.
MAX_LOGGED_HEADERS = 50
MAX_LOGGED_HEADER_CHARS = 512
MAX_HEADER_CHARS = 2048
# A flood of refused requests, or of signed ones that change nothing (a replayed duplicate or
# receipt), keeps at most this many rows of each kind a minute; the rest are counted on one summary
# row: bytes, not megabytes.
ROWS_PER_MINUTE = 60
# How a refused signature's error names the URL it was checked against, for people reading the log.
CHECKED_AGAINST = "; checked against "


@dataclass(frozen=True)
class RowBudget:
    """At most ROWS_PER_MINUTE audit rows a minute for one kind of request; the rest only counted."""

    key_prefix: str
    # How the minute's summary row names the requests it counts, and its verdict.
    counted_as: str
    summary_verdict: str


# Requests nothing shows came from Twilio.
REFUSED = RowBudget("chatbot:webhook:refused:", "refused request(s)", "refused_uncounted")
# Signed requests that changed nothing: a redelivered message, a receipt that moved no part, a message
# for a number that is not ours or is switched off, a malformed form. Each can be replayed at will.
UNCHANGED = RowBudget("chatbot:webhook:unchanged:", "signed request(s) that changed nothing",
                      "unchanged_uncounted")


def logged_headers() -> dict:
    """The request's headers, redacted, at most MAX_LOGGED_HEADERS of MAX_LOGGED_HEADER_CHARS each
    and MAX_HEADER_CHARS in all: what every audit row keeps of them."""
    excerpt, room = {}, MAX_HEADER_CHARS
    for name, value in list(redact_headers(request.headers).items())[:MAX_LOGGED_HEADERS]:
        value = value[:MAX_LOGGED_HEADER_CHARS]
        if len(name) + len(value) > room:
            break
        excerpt[name[:MAX_LOGGED_HEADER_CHARS]] = value
        room -= len(name) + len(value)
    return excerpt


def audit_row(status: int, started: float, signature_valid: bool | None, **extra) -> dict:
    return {
        "method": request.method,
        "path": request.path[:255],
        "remote_addr": (request.remote_addr or "")[:64],
        "headers": logged_headers(),
        "body": request.get_data(as_text=True)[:MAX_LOGGED_BODY],
        "response_status": status,
        "processing_ms": (time.perf_counter() - started) * 1000,
        "signature_valid": signature_valid,
        **extra,
    }


def record(audit: dict) -> None:
    """Write an audit row for a request that stores nothing else; a database outage must not turn
    the answer into a 500, nor leave the request without a trace."""
    try:
        WebhookLog.insert(**audit).execute()
    except PeeweeException as error:
        log_unrecorded(audit, error)


def log_unrecorded(audit: dict, error: Exception) -> None:
    """Put the audit row's fields (never the body, the headers or a phone number) in the app log."""
    log.warning("webhook not logged (%s) method=%s path=%s remote_addr=%s status=%s verdict=%s message_sid=%s "
                "processing_ms=%.1f reason=%s", error.__class__.__name__, audit["method"], audit["path"],
                audit["remote_addr"] or "-", audit["response_status"], audit.get("verdict") or "-",
                audit.get("message_sid") or "-", audit.get("processing_ms", 0.0), audit.get("error") or "-")


def record_refusal(status: int, verdict: str, reason: str) -> None:
    """Leave a compact audit row for a webhook request refused before it was read (too large, or
    plain http); other paths are not the webhook's to log."""
    if request.path == WEBHOOK_PATH:
        metrics.count_webhook(verdict)
        record_refused(compact_audit_row(status, verdict, reason))


def compact_audit_row(status: int, verdict: str, reason: str, started: float | None = None,
                      signature_valid: bool | None = None) -> dict:
    """The audit row of a request nothing shows came from Twilio: no body, only its size."""
    return {
        "method": request.method[:8],
        "path": request.path[:255],
        "remote_addr": (request.remote_addr or "")[:64],
        "headers": logged_headers(),
        "body": "",
        "response_status": status,
        "processing_ms": (time.perf_counter() - started) * 1000 if started else 0.0,
        "signature_valid": signature_valid,
        "verdict": verdict,
        "error": f"{reason} (body of {request.content_length or 0} bytes not kept)",
    }


def record_refused(audit: dict) -> None:
    """Store a refused request's compact row within the REFUSED budget."""
    if within_budget(REFUSED, audit):
        log.warning("webhook refused status=%d verdict=%s reason=%s", audit["response_status"], audit["verdict"],
                    audit["error"])
        record(audit)


def record_unchanged(audit: dict) -> None:
    """Store the row of a signed request that changed nothing within the UNCHANGED budget: one captured
    request replayed in a loop adds ROWS_PER_MINUTE rows a minute and a count, not a disk's worth."""
    if within_budget(UNCHANGED, audit):
        record(audit)


def within_budget(budget: RowBudget, audit: dict) -> bool:
    """Count the request against this minute's budget; past ROWS_PER_MINUTE it is counted on the
    minute's summary row instead, and False says not to store its own."""
    redis = current_app.extensions["chatbot"].redis
    minute = current_minute()
    key = f"{budget.key_prefix}{minute}"
    try:
        with redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            seen = pipe.execute()[0]
    except RedisError:
        seen = 0  # not counted: the row is stored, and it is small
    if seen <= ROWS_PER_MINUTE:
        return True
    _count_unstored(redis, budget, minute, seen - ROWS_PER_MINUTE, audit)
    return False


def current_minute() -> int:
    """The number of the minute now, since the epoch: the row budgets are per minute."""
    return int(time.time() // 60)


def _count_unstored(redis, budget: RowBudget, minute: int, unstored: int, audit: dict) -> None:
    summary_key = f"{budget.key_prefix}{minute}:summary"
    text = (f"{unstored} more {budget.counted_as} in the minute from "
            f"{time.strftime('%H:%M', time.gmtime(minute * 60))} UTC were counted, not stored")
    try:
        if redis.set(summary_key, "", nx=True, ex=120):
            log.warning("webhook flood: past %d %s a minute only a count is kept", ROWS_PER_MINUTE, budget.counted_as)
            row_id = WebhookLog.insert(**{**audit, "headers": {}, "body": "", "verdict": budget.summary_verdict,
                                          "error": text}).execute()
            redis.set(summary_key, row_id, ex=120)
        elif (row_id := redis.get(summary_key)):
            WebhookLog.update(error=text).where(WebhookLog.id == int(row_id)).execute()
    except (RedisError, PeeweeException) as error:
        log.warning("could not count %s (%s)", budget.counted_as, error.__class__.__name__)


def refuse(status: int, reason: str, started: float, signature_valid: bool | None, verdict: str) -> Response:
    metrics.count_webhook(verdict)
    if signature_valid:
        log.warning("webhook refused status=%d reason=%s", status, reason)
        record_unchanged(audit_row(status, started, signature_valid, error=reason, verdict=verdict))
    elif verdict == "bad_signature":
        # A URL other than the one Twilio signed (PUBLIC_BASE_URL, a proxy) is the usual cause: the
        # row names the URL the signature was checked against. The client is told the reason only.
        url = mask_phones_in(signed_url(current_app.extensions["chatbot"].config.public_base_url))
        url = url[:MAX_LOGGED_HEADER_CHARS]
        record_refused({**compact_audit_row(status, verdict, f"{reason}{CHECKED_AGAINST}{url}", started,
                                            signature_valid), "checked_url": url})
    else:
        record_refused(compact_audit_row(status, verdict, reason, started, signature_valid))
    return Response(f"{reason}\n", status=status, mimetype="text/plain")

