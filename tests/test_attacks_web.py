"""The second attack round's requests from outside, replayed through the signed webhook and the status
callback URL: what a captured signed request can still do, and numbers out of the database's range."""
from __future__ import annotations

import logging

import pytest

from chatbot.models import ReplyPart, WebhookLog
from tests.test_delivery_receipts import post_status, stored_reply

HUGE = "9" * 30


@pytest.mark.postgres
@pytest.mark.parametrize("code", [HUGE, "²"], ids=["30 digits", "superscript two"])
def test_an_error_code_out_of_range_is_ignored_and_the_receipt_applied(client, services, caplog, code):
    answer = stored_reply([("sent", None)])
    part = answer.parts[0]
    with caplog.at_level(logging.WARNING):
        response = post_status(client, part.twilio_sid, "undelivered", error_code=code)

    assert response.status_code == 200
    applied = ReplyPart.get_by_id(part.id)
    assert (applied.status, applied.error_code) == ("undelivered", None)
    assert f"message_sid={part.twilio_sid} ErrorCode" in caplog.text and "applied without it" in caplog.text
    assert WebhookLog.get().verdict == "status_callback"
