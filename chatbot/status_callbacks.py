"""Delivery receipts: Twilio's status callbacks for each sent part, and what a failed one means."""
from __future__ import annotations

import time

from flask import Blueprint, current_app, request

from chatbot.models import ReplyPart
from chatbot.webhook import MalformedWebhook, _fields, _refuse, acknowledge_status, signature_problem
from chatbot.whatsapp import PERMANENT_CODES, STATUS_CALLBACK_PATH, WINDOW_CLOSED_CODE

bp = Blueprint("status_callbacks", __name__)
# What the operator can do about a part that failed for good, by Twilio error code (as in
# docs/troubleshooting.md); a permanent code not listed gets the generic advice.
FIXES = {
    WINDOW_CLOSED_CODE: ("Outside the 24-hour customer-service window. The user must write again before the "
                         "bot can reply freely; configure an approved template (WINDOW_TEMPLATE_SID, or per "
                         "number with flask numbers update) to reach them meanwhile."),
    20003: "Twilio refused the credentials: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must belong together.",
    21211: "The user's number is not a valid WhatsApp address; check the webhook log for the From Twilio sent.",
    21408: "This Twilio account may not send to the user's region; enable it in Twilio's geo permissions.",
    21610: "The user unsubscribed from this number (replied STOP); nothing is delivered until they opt in again.",
    21614: "The user's number cannot receive WhatsApp messages; nothing to fix on this side.",
    63003: "The user's number cannot receive WhatsApp messages; nothing to fix on this side.",
    21617: "The reply was too long for one message; this should not happen (replies are split), so report it.",
}
GENERIC_FIX = "Twilio will not deliver to this user until the cause is fixed; see Twilio's error code reference."


def failure_fix(error_code: int | None) -> str | None:
    """Say how to fix a delivery that failed with `error_code`, or None when no retry is ruled out."""
    if error_code not in PERMANENT_CODES:
        return None
    return f"Twilio error {error_code}. {FIXES.get(error_code, GENERIC_FIX)}"


@bp.post(STATUS_CALLBACK_PATH)
def receive_status():
    """Accept Twilio's report of how far one sent part got."""
    started = time.perf_counter()
    request.get_data(cache=True)  # keep the raw body for the audit log; the form parses from it
    config = current_app.extensions["chatbot"].config
    problem = signature_problem(config.twilio_auth_token, config.public_base_url)
    if problem:
        return _refuse(403, problem, started, signature_valid=False, verdict="bad_signature")
    try:
        fields = _fields()
    except MalformedWebhook as exc:
        return _refuse(400, f"malformed status callback: {exc}", started, signature_valid=True, verdict="malformed")
    return acknowledge_status(fields, started)


def delivery_fixes(conversation_ids) -> dict:
    """Return, by conversation id, how to fix the failure of its latest reply part when no retry can
    help (a later part delivered clears it)."""
    failures = ReplyPart.latest_failures(conversation_ids)
    return {conversation_id: fix for conversation_id, part in failures.items()
            if (fix := failure_fix(part.error_code))}
