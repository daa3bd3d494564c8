"""The Twilio webhook: verify, parse, store first, enqueue, answer in milliseconds."""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import parse_qs, urlparse

from flask import Blueprint, Response, current_app, jsonify, request
from peewee import IntegrityError, PeeweeException
from redis.exceptions import RedisError
from twilio.request_validator import RequestValidator, add_port, compare, remove_port

from chatbot import metrics
from chatbot.db import database
from chatbot.errors import Category
from chatbot.models import Conversation, Message, ReplyPart, Role, Status, WebhookLog
from chatbot.numbers import Assistant, NumberDirectory
from chatbot.rate_limiter import LIMIT_NOTICES, Allowance, Decision, RateLimiter
from chatbot.redact import mask_phone, mask_phones_in, redact_headers
from chatbot.sanitizer import clean_text, is_whatsapp_address
from chatbot.tasks import enqueue_processing

log = logging.getLogger(__name__)

bp = Blueprint("whatsapp", __name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
WEBHOOK_PATH = "/whatsapp/webhook"
HEALTH_PATH = "/health"
MAX_LOGGED_BODY = 8192
# A refused request's headers are kept, but a hostile client must not fill a row with them.
MAX_LOGGED_HEADERS = 50
MAX_LOGGED_HEADER_CHARS = 512
# A request nothing shows came from Twilio keeps at most this much of its headers, and a flood of
# them at most REFUSED_ROWS_PER_MINUTE rows a minute (the rest are counted): bytes, not megabytes.
MAX_REFUSED_HEADER_CHARS = 2048
REFUSED_ROWS_PER_MINUTE = 60
REFUSED_PREFIX = "chatbot:webhook:refused:"
# How a refused signature's audit row names the URL it was checked against (the admin's detail page reads it).
CHECKED_AGAINST = "; checked against "
SID_SHAPE = re.compile(r"^[A-Za-z]{2}[0-9a-fA-F]{32}$")
MAX_MEDIA = 10
ALLOWED = Decision(Allowance.ALLOWED)


class MalformedWebhook(ValueError):
    """The form does not describe an inbound WhatsApp message."""


@dataclass(frozen=True)
class InboundMessage:
    """The fields of Twilio's inbound message form that the assistant uses."""

    sid: str
    sender: str
    recipient: str
    body: str
    profile_name: str = ""
    wa_id: str = ""
    media: list[dict] = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        """Return what to keep beside the text of the message."""
        details = {"to": self.recipient, "wa_id": self.wa_id, "profile_name": self.profile_name}
        if self.media:
            details["media"] = self.media
        details.update(self.extras)
        return details


def parse_inbound(form, max_chars: int | None = None) -> InboundMessage:
    """Read Twilio's form; unknown fields are ignored, missing or malformed essentials are an error."""
    sid = (form.get("MessageSid") or form.get("SmsMessageSid") or "").strip()
    sender = (form.get("From") or "").strip()
    recipient = (form.get("To") or "").strip()
    problems = []
    if not sid:
        problems.append("MessageSid is missing")
    elif not SID_SHAPE.match(sid):
        problems.append("MessageSid is not a Twilio SID")
    for name, value in (("From", sender), ("To", recipient)):
        if not value:
            problems.append(f"{name} is missing")
        elif not is_whatsapp_address(value):
            problems.append(f"{name} is not a whatsapp:+E.164 address")
    if problems:
        raise MalformedWebhook("; ".join(problems))
    body = clean_text(form.get("Body") or "", max_chars)
    media = []
    for index in range(MAX_MEDIA):
        url = form.get(f"MediaUrl{index}")
        if url:
            media.append({"url": url, "content_type": form.get(f"MediaContentType{index}", "")})
    extras = {
        name: clean_text(form[name], 500).text
        for name in ("Latitude", "Longitude", "ButtonPayload", "OriginalRepliedMessageSid")
        if form.get(name)
    }
    if body.trimmed:
        extras["trimmed"] = True
    return InboundMessage(
        sid=sid,
        sender=sender,
        recipient=recipient,
        body=body.text,
        profile_name=clean_text(form.get("ProfileName") or "", 255).text.strip(),
        wa_id=(form.get("WaId") or "").strip()[:32],
        media=media,
        extras=extras,
    )


def signed_url(public_base_url: str) -> str:
    """Rebuild the URL Twilio signed: the public origin (or the proxied one) + raw path + query."""
    raw_path = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not raw_path:
        query = request.query_string.decode("latin-1")
        raw_path = request.script_root + request.path + (f"?{query}" if query else "")
    origin = public_base_url or request.host_url.rstrip("/")
    return origin + raw_path


def signature_problem(auth_token: str, public_base_url: str) -> str | None:
    """Check X-Twilio-Signature; return why the request is not Twilio's, or None when it is."""
    signature = request.headers.get("X-Twilio-Signature")
    if not auth_token:
        return "TWILIO_AUTH_TOKEN is not set, so no request can be verified"
    if not signature:
        return "X-Twilio-Signature header is missing"
    url = signed_url(public_base_url)
    # Twilio's JSON variant signs the URL (which carries bodySHA256) and hashes the raw body.
    # parse_qs drops a blank bodySHA256, which would then pass for a form post: refuse it first.
    body_hash = parse_qs(urlparse(url).query).get("bodySHA256")
    if "bodySHA256" in request.args and not body_hash:
        return "bodySHA256 is blank"
    validator = _validator(auth_token)
    if not _signature_matches(validator, url, {} if body_hash else request.form, signature):
        return "X-Twilio-Signature does not match (check PUBLIC_BASE_URL and the proxy setup)"
    if body_hash and not compare(validator.compute_hash(request.get_data(as_text=True)), body_hash[0]):
        return "the body does not match bodySHA256"
    return None


def _signature_matches(validator: RequestValidator, url: str, params, signature: str) -> bool:
    """Twilio signs the URL either with its port or without, so its validator computes both HMACs
    for every request. Compute the second only when the first does not match: one per genuine
    request on the hot path, the same two for a forged one."""
    parsed = urlparse(url)
    return any(compare(validator.compute_signature(candidate, params), signature)
               for candidate in (remove_port(parsed), add_port(parsed)))


@lru_cache(maxsize=4)
def _validator(auth_token: str) -> RequestValidator:
    """Return the validator for this token, built once rather than per request."""
    return RequestValidator(auth_token)


def store_inbound(inbound: InboundMessage, audit: dict, conversation_ttl: int,
                  decision: Decision = ALLOWED, number: str = "") -> int | None:
    """Record the message in the sender's conversation with `number` (a conversation key, "" for the
    default number) and its audit row, in one transaction; return its id, or None if seen before.

    A rate-limited message is kept but never reaches the AI; the sender's first one in a window
    gets a canned notice, stored here as its reply.
    """
    try:
        with database.atomic():
            conversation_id = Conversation.resume_or_start_id(inbound.sender, inbound.profile_name, conversation_ttl,
                                                              number)
            message_id = Message.insert_row(
                conversation=conversation_id,
                role=Role.USER.value,
                content=inbound.body,
                status=Status.PENDING.value if decision.allowed else Status.RATE_LIMITED.value,
                twilio_sid=inbound.sid,
                metadata=inbound.metadata(),
            )
            if decision.notify:
                Message.insert_row(
                    conversation=conversation_id,
                    role=Role.ASSISTANT.value,
                    content=LIMIT_NOTICES[decision.allowance],
                    status=Status.UNSENT.value,
                    reply_to=message_id,
                    metadata={"canned": decision.allowance.value},
                )
            WebhookLog.insert_row(**audit)
            return message_id
    except IntegrityError:
        # The MessageSid is stored already: Twilio delivered this message before.
        with database.atomic():
            WebhookLog.insert(**{**audit, "verdict": "duplicate"}, error="duplicate delivery").execute()
        return None


def _audit(status: int, started: float, signature_valid: bool | None, **extra) -> dict:
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


def _record(audit: dict) -> None:
    """Write an audit row for a request that stores nothing else; a database outage must not turn
    the answer into a 500, nor leave the request without a trace."""
    try:
        WebhookLog.insert(**audit).execute()
    except PeeweeException as error:
        _log_unrecorded(audit, error)


def _log_unrecorded(audit: dict, error: Exception) -> None:
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
        _record_refused(_compact_audit(status, verdict, reason))


def _compact_audit(status: int, verdict: str, reason: str, started: float | None = None,
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


def _record_refused(audit: dict) -> None:
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
        _record(audit)
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


def _refuse(status: int, reason: str, started: float, signature_valid: bool | None, verdict: str) -> Response:
    metrics.count_webhook(verdict)
    if signature_valid:
        log.warning("webhook refused status=%d reason=%s", status, reason)
        _record(_audit(status, started, signature_valid, error=reason, verdict=verdict))
    else:
        _record_refused(_compact_audit(status, verdict, _with_checked_url(reason, verdict), started, signature_valid))
    return Response(f"{reason}\n", status=status, mimetype="text/plain")


def _with_checked_url(reason: str, verdict: str) -> str:
    """A refused signature's reason for the audit row, with the URL it was checked against: a URL
    other than the one Twilio signed (PUBLIC_BASE_URL, a proxy) is the usual cause. The client is
    told the reason only."""
    if verdict != "bad_signature":
        return reason
    url = signed_url(current_app.extensions["chatbot"].config.public_base_url)
    return f"{reason}{CHECKED_AGAINST}{mask_phones_in(url)[:MAX_LOGGED_HEADER_CHARS]}"


def _not_for_us(inbound: InboundMessage, assistant: Assistant | None, numbers: NumberDirectory) -> str | None:
    """Say why a signed message must not be answered: it went to a number that is not one of ours
    or is switched off, or it came from one of our own numbers (answering would make the bot talk
    to itself)."""
    if assistant is None:
        return "not_our_number"
    if not assistant.answers:
        return "number_inactive"
    if inbound.sender == assistant.address or numbers.is_ours(inbound.sender):
        return "from_ourselves"
    return None


@bp.post(WEBHOOK_PATH)
def receive_message():
    """Accept an inbound WhatsApp message from Twilio."""
    started = time.perf_counter()
    request.get_data(cache=True)  # keep the raw body for the audit log; the form parses from it
    services = current_app.extensions["chatbot"]
    config = services.config
    problem = signature_problem(config.twilio_auth_token, config.public_base_url)
    if problem:
        return _refuse(403, problem, started, signature_valid=False, verdict="bad_signature")
    try:
        fields = _fields()
        if fields.get("MessageStatus"):
            # A delivery status callback pointed at this URL: stored as one sent to /whatsapp/status, never answered.
            return acknowledge_status(fields, started)
        inbound = parse_inbound(fields, config.max_inbound_chars)
    except MalformedWebhook as exc:
        return _refuse(400, f"malformed webhook: {exc}", started, signature_valid=True, verdict="malformed")
    try:
        assistant = services.numbers.for_recipient(inbound.recipient)
    except PeeweeException as error:
        return _database_unavailable(services, inbound, started, error)
    unanswerable = _not_for_us(inbound, assistant, services.numbers)
    if unanswerable:
        log.warning("message_sid=%s %s: acknowledged, not answered", inbound.sid, unanswerable)
        metrics.count_webhook(unanswerable)
        _record(_audit(200, started, signature_valid=True, message_sid=inbound.sid, verdict=unanswerable,
                       error=f"To {mask_phone(inbound.recipient)}, From {mask_phone(inbound.sender)}: not answered"))
        return Response(EMPTY_TWIML, status=200, mimetype="text/xml")
    decision = _rate_limit(services.rate_limiter, inbound.sender, assistant.key)
    try:
        message_id = store_inbound(
            inbound,
            _audit(200, started, signature_valid=True, message_sid=inbound.sid, verdict=decision.allowance.value),
            config.conversation_ttl,
            decision,
            assistant.key,
        )
    except PeeweeException as error:
        return _database_unavailable(services, inbound, started, error)
    if message_id is None:
        log.info("message_sid=%s duplicate delivery ignored", inbound.sid)
    elif decision.allowed or decision.notify:
        try:
            enqueue_processing(services.queue, message_id, inbound.sender)
            log.info("message_sid=%s sender=%s queued message_id=%s verdict=%s",
                     inbound.sid, mask_phone(inbound.sender), message_id, decision.allowance.value)
        except RedisError as error:
            services.errors.handle(Category.WEBHOOK, error,
                                   f"message_sid={inbound.sid} stored, not queued; the sweeper will queue it")
    else:
        log.info("message_sid=%s sender=%s rate limited, notice already sent this window",
                 inbound.sid, mask_phone(inbound.sender))
    metrics.count_webhook("duplicate" if message_id is None else decision.allowance.value)
    return Response(EMPTY_TWIML, status=200, mimetype="text/xml")


def _database_unavailable(services, inbound: InboundMessage, started: float, error: Exception) -> Response:
    """Nothing was committed; a 503 makes Twilio deliver the message again later. The audit row
    cannot be written either, so its fields go to the app log."""
    _log_unrecorded(_audit(503, started, signature_valid=True, message_sid=inbound.sid,
                           verdict="database_unavailable", error="database unavailable"), error)
    services.errors.handle(Category.SYSTEM, error, f"message_sid={inbound.sid} not stored")
    metrics.count_webhook("database_unavailable")
    return Response("database unavailable\n", status=503, mimetype="text/plain")


def acknowledge_status(fields: dict, started: float) -> Response:
    """Move the reply part a delivery status callback names forward, leave its trace, answer 200.

    The one handler of status callbacks, whichever of the two URLs Twilio posted them to. An unknown
    MessageSid is acknowledged too: refusing it would only make Twilio try again.
    """
    sid = (fields.get("MessageSid") or "").strip()[:64]
    status = (fields.get("MessageStatus") or "").strip().lower()[:32]
    code = (fields.get("ErrorCode") or "").strip()
    try:
        unchanged = ReplyPart.apply_status(sid, status, int(code) if code.isdigit() else None)
        _record(_audit(200, started, signature_valid=True, verdict="status_callback", message_sid=sid or None,
                       error=unchanged))
    except PeeweeException as error:
        # Nothing was stored; a 503 lets Twilio report it again if it retries.
        _log_unrecorded(_audit(503, started, signature_valid=True, message_sid=sid or None,
                               verdict="database_unavailable", error="database unavailable"), error)
        return Response("database unavailable\n", status=503, mimetype="text/plain")
    log.info("message_sid=%s delivery status=%s%s", sid or "-", status or "-",
             f" error_code={code}" if code else "")
    return Response(EMPTY_TWIML, status=200, mimetype="text/xml")


def _fields():
    """The webhook's fields: the form, or the JSON object of Twilio's bodySHA256 variant."""
    if "bodySHA256" not in request.args:
        # A plain dict holding each field's first value, as MultiDict.get gives it: the MultiDict
        # raises and catches an exception for every absent field asked for, a dozen per message.
        return request.form.to_dict()
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise MalformedWebhook("body is not a JSON object")
    return {name: value if isinstance(value, str) else json.dumps(value) for name, value in payload.items()}


def _rate_limit(rate_limiter: RateLimiter, sender: str, number: str) -> Decision:
    try:
        return rate_limiter.check(sender, number)
    except RedisError:
        # Fail open: the message is stored either way, and losing it would be worse than one extra answer.
        log.exception("rate limiter unavailable; letting the message through")
        return ALLOWED


@bp.get(WEBHOOK_PATH)
def webhook_check():
    """Tell an operator who opens the URL that the endpoint is up."""
    return Response("WhatsApp webhook is up. Configure Twilio to POST here.\n", mimetype="text/plain")


@bp.get(HEALTH_PATH)
def health():
    """Report whether the database and Redis are reachable."""
    services = current_app.extensions["chatbot"]
    checks = {"database": _database_ok(), "redis": _redis_ok(services.redis)}
    healthy = all(checks.values())
    body = {"status": "ok" if healthy else "unavailable", **checks}
    return jsonify(body), 200 if healthy else 503


def _database_ok() -> bool:
    try:
        database.execute_sql("SELECT 1")
        return True
    except PeeweeException:
        log.exception("health: database unreachable")
        return False


def _redis_ok(redis) -> bool:
    try:
        return bool(redis.ping())
    except RedisError:
        log.exception("health: redis unreachable")
        return False
