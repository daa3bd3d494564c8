"""The webhook log: an audit row per request, compact and budgeted for requests nothing shows came from Twilio."""
from __future__ import annotations

import logging
import time

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
# A refused request's headers are kept, but a hostile client must not fill a row with them.
MAX_LOGGED_HEADERS = 50
MAX_LOGGED_HEADER_CHARS = 512
# A request nothing shows came from Twilio keeps at most this much of its headers, and a flood of
# them at most REFUSED_ROWS_PER_MINUTE rows a minute (the rest are counted): bytes, not megabytes.
MAX_REFUSED_HEADER_CHARS = 2048
REFUSED_ROWS_PER_MINUTE = 60
REFUSED_PREFIX = "chatbot:webhook:refused:"
# How a refused signature's error names the URL it was checked against, for people reading the log.
CHECKED_AGAINST = "; checked against "


def audit_row(status: int, started: float, signature_valid: bool | None, **extra) -> dict:
    return {
        "method": request.method,
        "path": request.path[:255],
        "remote_addr": (request.remote_addr or "")[:64],
        "headers": redact_headers(request.headers),
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
    """The audit row of a request nothing shows came from Twilio: no body, only its size, and a
    redacted excerpt of the headers of at most MAX_REFUSED_HEADER_CHARS in all."""
    excerpt, room = {}, MAX_REFUSED_HEADER_CHARS
    for name, value in list(redact_headers(request.headers).items())[:MAX_LOGGED_HEADERS]:
        value = value[:MAX_LOGGED_HEADER_CHARS]
        if len(name) + len(value) > room:
            break
        excerpt[name[:MAX_LOGGED_HEADER_CHARS]] = value
        room -= len(name) + len(value)
    return {
        "method": request.method[:8],
        "path": request.path[:255],
        "remote_addr": (request.remote_addr or "")[:64],
        "headers": excerpt,
        "body": "",
        "response_status": status,
        "processing_ms": (time.perf_counter() - started) * 1000 if started else 0.0,
        "signature_valid": signature_valid,
        "verdict": verdict,
        "error": f"{reason} (body of {request.content_length or 0} bytes not kept)",
    }


def record_refused(audit: dict) -> None:
    """Store a refused request's compact row, unless a flood is under way: past
    REFUSED_ROWS_PER_MINUTE in a minute the rest are only counted, on one summary row per minute."""
    redis = current_app.extensions["chatbot"].redis
    minute = current_minute()
    try:
        with redis.pipeline() as pipe:
            pipe.incr(f"{REFUSED_PREFIX}{minute}")
            pipe.expire(f"{REFUSED_PREFIX}{minute}", 120)
            refused = pipe.execute()[0]
    except RedisError:
        refused = 0  # not counted: the row is stored, and it is compact
    if refused <= REFUSED_ROWS_PER_MINUTE:
        log.warning("webhook refused status=%d verdict=%s reason=%s", audit["response_status"], audit["verdict"],
                    audit["error"])
        record(audit)
        return
    _count_unstored(redis, minute, refused - REFUSED_ROWS_PER_MINUTE, audit)


def current_minute() -> int:
    """The number of the minute now, since the epoch: the refused-row budget is per minute."""
    return int(time.time() // 60)


def _count_unstored(redis, minute: int, unstored: int, audit: dict) -> None:
    summary_key = f"{REFUSED_PREFIX}{minute}:summary"
    text = (f"{unstored} more refused request(s) in the minute from "
            f"{time.strftime('%H:%M', time.gmtime(minute * 60))} UTC were counted, not stored")
    try:
        if redis.set(summary_key, "", nx=True, ex=120):
            log.warning("webhook refusing a flood: past %d refused requests a minute only a count is kept",
                        REFUSED_ROWS_PER_MINUTE)
            row_id = WebhookLog.insert(**{**audit, "headers": {}, "verdict": "refused_uncounted", "error": text}
                                       ).execute()
            redis.set(summary_key, row_id, ex=120)
        elif (row_id := redis.get(summary_key)):
            WebhookLog.update(error=text).where(WebhookLog.id == int(row_id)).execute()
    except (RedisError, PeeweeException) as error:
        log.warning("could not count refused requests (%s)", error.__class__.__name__)


def refuse(status: int, reason: str, started: float, signature_valid: bool | None, verdict: str) -> Response:
    metrics.count_webhook(verdict)
    if signature_valid:
        log.warning("webhook refused status=%d reason=%s", status, reason)
        record(audit_row(status, started, signature_valid, error=reason, verdict=verdict))
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

