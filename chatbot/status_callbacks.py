"""Delivery receipts: Twilio's status callbacks for each sent part, and what a failed one means."""
from __future__ import annotations

import time

from flask import Blueprint, current_app, request

from chatbot.error_explanations import twilio_error
from chatbot.models import ReplyPart
from chatbot.webhook import MalformedWebhook, _fields, _refuse, acknowledge_status, signature_problem
from chatbot.whatsapp import PERMANENT_CODES, STATUS_CALLBACK_PATH

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
