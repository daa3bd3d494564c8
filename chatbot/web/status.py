"""Delivery receipts: Twilio's status callbacks for each sent part, and what a failed one means."""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, request
from peewee import PeeweeException

from chatbot.error_explanations import twilio_error
from chatbot.models import ReplyPart
from chatbot.sanitizer import whole_number
from chatbot.web import EMPTY_TWIML
from chatbot.web.audit import audit_row, log_unrecorded, record, record_unchanged, refuse
from chatbot.web.inbound import MalformedWebhook, read_fields
from chatbot.web.signature import signature_problem
from chatbot.whatsapp import PERMANENT_CODES, STATUS_CALLBACK_PATH

log = logging.getLogger(__name__)

bp = Blueprint("status_callbacks", __name__)


def failure_fix(error_code: int | None) -> str | None:
    """Say how to fix a delivery that failed with `error_code`, or None when no retry is ruled out."""
    if error_code not in PERMANENT_CODES:
        return None
    explanation = twilio_error(error_code)
    return f"{explanation.source}. {explanation.meaning} {explanation.fix}"


@bp.post(STATUS_CALLBACK_PATH)
def receive_status():
    """Accept Twilio's report of how far one sent part got."""
    started = time.perf_counter()
    request.get_data(cache=True)  # keep the raw body for the audit log; the form parses from it
    config = current_app.extensions["chatbot"].config
    problem = signature_problem(config.twilio_auth_token, config.public_base_url)
    if problem:
        return refuse(403, problem, started, signature_valid=False, verdict="bad_signature")
    try:
        fields = read_fields()
    except MalformedWebhook as exc:
        return refuse(400, f"malformed status callback: {exc}", started, signature_valid=True, verdict="malformed")
    return acknowledge_status(fields, started)


def delivery_fixes(conversation_ids) -> dict:
    """Return, by conversation id, how to fix the failure of its latest reply part when no retry can
    help (a later part delivered clears it)."""
    failures = ReplyPart.latest_failures(conversation_ids)
    return {conversation_id: fix for conversation_id, part in failures.items()
            if (fix := failure_fix(part.error_code))}


def acknowledge_status(fields: dict, started: float) -> Response:
    """Move the reply part a delivery status callback names forward, leave its trace, answer 200.

    The one handler of status callbacks, whichever of the two URLs Twilio posted them to. An unknown
    MessageSid is acknowledged too: refusing it would only make Twilio try again.
    """
    sid = (fields.get("MessageSid") or "").strip()[:64]
    status = (fields.get("MessageStatus") or "").strip().lower()[:32]
    given_code = (fields.get("ErrorCode") or "").strip()
    code = whole_number(given_code) if given_code else None
    if given_code and code is None:
        log.warning("message_sid=%s ErrorCode %r is not a whole number in range: the status is applied without it",
                    sid or "-", given_code[:20])
    try:
        unchanged = ReplyPart.apply_status(sid, status, code)
        # A receipt that moved a part is stored whole; one that moved none may be a replay, and is budgeted.
        (record if unchanged is None else record_unchanged)(
            audit_row(200, started, signature_valid=True, verdict="status_callback", message_sid=sid or None,
                      error=unchanged))
    except PeeweeException as error:
        # Nothing was stored; a 503 lets Twilio report it again if it retries.
        log_unrecorded(audit_row(503, started, signature_valid=True, message_sid=sid or None,
                               verdict="database_unavailable", error="database unavailable"), error)
        return Response("database unavailable\n", status=503, mimetype="text/plain")
    log.info("message_sid=%s delivery status=%s%s", sid or "-", status or "-",
             f" error_code={code}" if code is not None else "")
    return Response(EMPTY_TWIML, status=200, mimetype="text/xml")

