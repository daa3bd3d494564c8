"""The second attack round's requests from outside, replayed through the signed webhook and the status
callback URL: what a captured signed request can still do, and numbers out of the database's range."""
from __future__ import annotations

import json
import logging

import pytest

from chatbot.models import Message, ReplyPart, WebhookLog
from chatbot.web import audit
from tests.conftest import WEBHOOK_URL
from tests.support import inbound_form, sign
from tests.test_delivery_receipts import STATUS_URL, post_status, stored_reply

HUGE = "9" * 30
# The red team's count; the budget is lowered to 20 rows a minute below, so that it is passed.
REPLAYS = 50
ROWS = 20
# What the red team added to each replay: 90 junk headers of 8 KB, 720 KB a request.
JUNK_HEADERS = {f"X-Junk-{number}": "x" * 8000 for number in range(90)}


def log_bytes() -> int:
    """What the webhook log holds, in characters of headers, bodies and errors."""
    return sum(len(json.dumps(row.headers)) + len(row.body or "") + len(row.error or "")
               for row in WebhookLog.select())


@pytest.fixture
def one_minute(monkeypatch):
    """Every replay falls in the same minute of the budgets, however long the test takes, and the
    budget is ROWS a minute."""
    monkeypatch.setattr(audit, "current_minute", lambda: 29_500_000)
    monkeypatch.setattr(audit, "ROWS_PER_MINUTE", ROWS)


# --- one captured signed request, replayed -------------------------------------------------------

def test_a_replayed_signed_duplicate_fills_a_few_rows_not_the_disk(post_webhook, services, one_minute):
    form = inbound_form("Hello")
    for _ in range(REPLAYS):
        assert post_webhook(form, headers=dict(JUNK_HEADERS)).status_code == 200

    rows = list(WebhookLog.select().order_by(WebhookLog.id))
    verdicts = [row.verdict for row in rows]
    assert verdicts.count("allowed") == 1 and verdicts.count("duplicate") == ROWS
    summary = rows[-1]
    assert summary.verdict == "unchanged_uncounted"
    assert summary.error.startswith(f"{REPLAYS - 1 - ROWS} more signed request(s) that changed nothing")
    assert all(sum(len(name) + len(value) for name, value in row.headers.items()) <= audit.MAX_HEADER_CHARS
               for row in rows)
    assert log_bytes() < 100_000  # 50 replays of 720 KB each: 36 MB before
    assert Message.select().count() == 1


def test_a_replayed_signed_receipt_fills_a_few_rows_not_the_disk(client, services, one_minute):
    part = stored_reply([("sent", None)]).parts[0]
    form = {"MessageSid": part.twilio_sid, "MessageStatus": "delivered", "AccountSid": "AC" + "0" * 32}
    headers = {**JUNK_HEADERS, "X-Twilio-Signature": sign(STATUS_URL, form)}
    for _ in range(REPLAYS):
        assert client.post("/whatsapp/status", data=form, headers=headers).status_code == 200

    rows = list(WebhookLog.select().order_by(WebhookLog.id))
    moved = [row for row in rows if row.verdict == "status_callback" and row.error is None]
    assert len(moved) == 1  # the first one moved the part: always kept
    assert len(rows) == 1 + ROWS + 1 and rows[-1].verdict == "unchanged_uncounted"
    assert log_bytes() < 100_000
    assert ReplyPart.get_by_id(part.id).status == "delivered"


def test_a_moving_receipt_is_kept_however_many_replays_came_first(client, services, one_minute):
    part = stored_reply([("sent", None)]).parts[0]
    for _ in range(REPLAYS):
        post_status(client, part.twilio_sid, "sent")
    post_status(client, part.twilio_sid, "read")

    assert WebhookLog.select().where(WebhookLog.verdict == "status_callback", WebhookLog.error.is_null()).count() == 1
    assert ReplyPart.get_by_id(part.id).status == "read"


# --- numbers out of range -------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("code", [HUGE, "²"], ids=["30 digits", "superscript two"])
@pytest.mark.parametrize("url", [STATUS_URL, WEBHOOK_URL], ids=["status URL", "webhook URL"])
def test_an_error_code_out_of_range_is_ignored_and_the_receipt_applied(client, services, caplog, code, url):
    answer = stored_reply([("sent", None)])
    part = answer.parts[0]
    with caplog.at_level(logging.WARNING):
        response = post_status(client, part.twilio_sid, "undelivered", error_code=code, url=url)

    assert response.status_code == 200
    applied = ReplyPart.get_by_id(part.id)
    assert (applied.status, applied.error_code) == ("undelivered", None)
    assert f"message_sid={part.twilio_sid} ErrorCode" in caplog.text and "applied without it" in caplog.text
    assert WebhookLog.get().verdict == "status_callback"
