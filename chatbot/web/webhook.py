"""The Twilio webhook: verify, parse, store first, enqueue, answer in milliseconds."""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, request
from peewee import IntegrityError, PeeweeException
from redis.exceptions import RedisError

from chatbot import metrics
from chatbot.errors import Category
from chatbot.jobs.queueing import enqueue_processing
from chatbot.models import Conversation, Message, Role, Status, WebhookLog
from chatbot.models.db import database
from chatbot.numbers import Assistant, NumberDirectory
from chatbot.rate_limiter import LIMIT_NOTICES, Allowance, Decision, RateLimiter
from chatbot.redact import mask_phone
from chatbot.web import EMPTY_TWIML, WEBHOOK_PATH
from chatbot.web.audit import audit_row, log_unrecorded, record_unchanged, refuse
from chatbot.web.inbound import InboundMessage, MalformedWebhook, parse_inbound, read_fields
from chatbot.web.signature import signature_problem
from chatbot.web.status import acknowledge_status

log = logging.getLogger(__name__)

bp = Blueprint("whatsapp", __name__)
ALLOWED = Decision(Allowance.ALLOWED)


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
            message_id = Message.insert(
                conversation=conversation_id,
                role=Role.USER.value,
                content=inbound.body,
                status=Status.PENDING.value if decision.allowed else Status.RATE_LIMITED.value,
                twilio_sid=inbound.sid,
                metadata=inbound.metadata(),
            ).execute()
            if decision.notify:
                Message.insert(
                    conversation=conversation_id,
                    role=Role.ASSISTANT.value,
                    content=LIMIT_NOTICES[decision.allowance],
                    status=Status.UNSENT.value,
                    reply_to=message_id,
                    metadata={"canned": decision.allowance.value},
                ).execute()
            WebhookLog.insert(**audit).execute()
            return message_id
    except IntegrityError:
        # The MessageSid is stored already: Twilio delivered this message before (or it is replayed).
        return None


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
        return refuse(403, problem, started, signature_valid=False, verdict="bad_signature")
    try:
        fields = read_fields()
        if fields.get("MessageStatus"):
            # A delivery status callback pointed at this URL: stored as one sent to /whatsapp/status, never answered.
            return acknowledge_status(fields, started)
        inbound = parse_inbound(fields, config.max_inbound_chars)
    except MalformedWebhook as exc:
        return refuse(400, f"malformed webhook: {exc}", started, signature_valid=True, verdict="malformed")
    try:
        assistant = services.numbers.for_recipient(inbound.recipient)
    except PeeweeException as error:
        return _database_unavailable(services, inbound, started, error)
    unanswerable = _not_for_us(inbound, assistant, services.numbers)
    if unanswerable:
        log.warning("message_sid=%s %s: acknowledged, not answered", inbound.sid, unanswerable)
        metrics.count_webhook(unanswerable)
        record_unchanged(audit_row(200, started, signature_valid=True, message_sid=inbound.sid, verdict=unanswerable,
                                   error=f"To {mask_phone(inbound.recipient)}, From {mask_phone(inbound.sender)}: "
                                         "not answered"))
        return Response(EMPTY_TWIML, status=200, mimetype="text/xml")
    decision = _rate_limit(services.rate_limiter, inbound.sender, assistant.key)
    audit = audit_row(200, started, signature_valid=True, message_sid=inbound.sid, verdict=decision.allowance.value)
    try:
        message_id = store_inbound(inbound, audit, config.conversation_ttl, decision, assistant.key)
    except PeeweeException as error:
        return _database_unavailable(services, inbound, started, error)
    if message_id is None:
        log.info("message_sid=%s duplicate delivery ignored", inbound.sid)
        record_unchanged({**audit, "verdict": "duplicate", "error": "duplicate delivery"})
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
    log_unrecorded(audit_row(503, started, signature_valid=True, message_sid=inbound.sid,
                           verdict="database_unavailable", error="database unavailable"), error)
    services.errors.handle(Category.SYSTEM, error, f"message_sid={inbound.sid} not stored")
    metrics.count_webhook("database_unavailable")
    return Response("database unavailable\n", status=503, mimetype="text/plain")


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

