"""Delivery receipts: each reply part's Twilio status, reported to /whatsapp/status, shown to the operator."""
from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass

import pytest
from flask import Flask
from werkzeug.serving import make_server

from chatbot import create_app
from chatbot.jobs import tasks
from chatbot.models import Message, ReplyPart, Role, Status, WebhookLog
from chatbot.services import Services, build_services
from tests.conftest import FAST_RETRIES, PUBLIC_BASE_URL, WEBHOOK_URL, WebhookPoster, log_in, wait_for
from tests.support import BurstWorker, conversation_for, inbound_form, sign
from worker import build_worker

ADA = "whatsapp:+15550001111"
STATUS_URL = PUBLIC_BASE_URL + "/whatsapp/status"
OUTSIDE_WINDOW_FIX = "The user must write again before the bot can reply"


@dataclass
class Live:
    """The app served over real HTTP on a loopback port, with PUBLIC_BASE_URL pointing at it."""

    url: str
    app: Flask
    services: Services

    def message(self, body: str, sender: str = ADA) -> None:
        response = WebhookPoster(self.app.test_client())(inbound_form(body, sender), url=self.url + "/whatsapp/webhook")
        assert response.status_code == 200, response.get_data(as_text=True)

    def run_jobs(self) -> None:
        build_worker(self.services, worker_class=BurstWorker).work(burst=True, with_scheduler=False)


@pytest.fixture
def live(config, services):
    served = {}
    server = make_server("127.0.0.1", 0, lambda environ, start: served["app"](environ, start), threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    built = build_services(config.replace(public_base_url=url), ai_options=FAST_RETRIES,
                           whatsapp_options=FAST_RETRIES)
    tasks.install(built)
    served["app"] = create_app(services=built)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield Live(url, served["app"], built)
    server.shutdown()
    server.server_close()


def post_status(client, sid: str, status: str, error_code: int | None = None, url: str = STATUS_URL,
                signature: str | None = None):
    form = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
            "AccountSid": "AC" + "0" * 32, "From": "whatsapp:+14155238886", "To": ADA, "ApiVersion": "2010-04-01"}
    if error_code is not None:
        form["ErrorCode"] = str(error_code)
    path = url.removeprefix(PUBLIC_BASE_URL)
    return client.post(path, data=form, headers={"X-Twilio-Signature": signature or sign(url, form)})


def stored_reply(parts: list[tuple[str, int | None]], phone: str = ADA) -> Message:
    """An answered message whose reply went out in parts with these (status, error code)."""
    conversation = conversation_for(phone)
    question = Message.create(conversation=conversation, role=Role.USER.value, content="Hello",
                              status=Status.ANSWERED.value, twilio_sid="SM" + uuid.uuid4().hex)
    answer = Message.create(conversation=conversation, role=Role.ASSISTANT.value, content="Hi there",
                            status=Status.SENT.value, reply_to=question, parts_sent=len(parts))
    for number, (status, code) in enumerate(parts, start=1):
        ReplyPart.create(message=answer, number=number, twilio_sid="SM" + uuid.uuid4().hex, status=status,
                         error_code=code)
    return answer


def part_status(sid: str) -> tuple[str, int | None]:
    part = ReplyPart.get(ReplyPart.twilio_sid == sid)
    return part.status, part.error_code


@pytest.mark.postgres
def test_each_part_of_a_reply_is_stored_with_its_sid_and_asks_for_reports(live, fake_twilio, fake_openrouter):
    fake_openrouter.reply_for = lambda messages: "First paragraph. " * 100 + "\n\n" + "Second one. " * 100

    live.message("Tell me a lot")
    live.run_jobs()

    parts = list(ReplyPart.select().order_by(ReplyPart.number))
    assert [(part.number, part.twilio_sid, part.status) for part in parts] == [
        (1, fake_twilio.accepted[0]["sid"], "queued"), (2, fake_twilio.accepted[1]["sid"], "queued")]
    assert [sent["StatusCallback"] for sent in fake_twilio.sent] == [live.url + "/whatsapp/status"] * 2


@pytest.mark.postgres
def test_twilio_reports_move_a_part_to_sent_delivered_then_read(live, fake_twilio):
    fake_twilio.statuses = ["sent", "delivered", "read"]

    live.message("Hello")
    live.run_jobs()

    sid = fake_twilio.accepted[0]["sid"]
    assert wait_for(lambda: len(fake_twilio.callbacks) == 3, timeout=10)
    assert [callback["status"] for callback in fake_twilio.callbacks] == [200, 200, 200]
    assert part_status(sid) == ("read", None)
    traces = WebhookLog.select().where(WebhookLog.verdict == "status_callback", WebhookLog.message_sid == sid)
    assert traces.count() == 3


@pytest.mark.postgres
def test_out_of_order_and_repeated_reports_never_move_a_part_backwards(client, services):
    answer = stored_reply([("queued", None), ("queued", None)])
    first, second = [part.twilio_sid for part in answer.parts.order_by(ReplyPart.number)]

    for status in ("delivered", "sent", "delivered", "queued", "read", "delivered", "failed"):
        assert post_status(client, first, status, 30008 if status == "failed" else None).status_code == 200
    for status, code in (("sent", None), ("undelivered", 63016), ("delivered", None), ("sent", None)):
        assert post_status(client, second, status, code).status_code == 200

    assert part_status(first) == ("read", None)
    assert part_status(second) == ("undelivered", 63016)


def test_a_report_posted_to_the_webhook_url_is_stored_the_same_way(client, services):
    sid = stored_reply([("queued", None)]).parts.get().twilio_sid

    response = post_status(client, sid, "delivered", url=WEBHOOK_URL)

    assert response.status_code == 200
    assert part_status(sid) == ("delivered", None)


def test_a_forged_report_is_refused_and_changes_nothing(client, services):
    sid = stored_reply([("sent", None)]).parts.get().twilio_sid

    response = post_status(client, sid, "failed", 63016, signature="forged")

    assert response.status_code == 403
    assert part_status(sid) == ("sent", None)
    [trace] = WebhookLog.select().where(WebhookLog.path == "/whatsapp/status")
    assert (trace.verdict, trace.response_status, trace.signature_valid, trace.body) == (
        "bad_signature", 403, False, "")


def test_a_report_for_an_unknown_sid_is_acknowledged_and_ignored(client, services):
    sid = stored_reply([("sent", None)]).parts.get().twilio_sid
    unknown = "SM" + uuid.uuid4().hex

    response = post_status(client, unknown, "delivered")

    assert response.status_code == 200
    assert part_status(sid) == ("sent", None)
    assert ReplyPart.select().count() == 1
    [trace] = WebhookLog.select().where(WebhookLog.message_sid == unknown)
    assert trace.verdict == "status_callback" and "unknown MessageSid" in trace.error


def test_a_reply_outside_the_24_hour_window_flags_the_conversation_with_the_fix(
        live, fake_twilio, admin_user):
    fake_twilio.statuses = ["sent", ("undelivered", 63016)]

    live.message("Hello")
    live.run_jobs()
    assert wait_for(lambda: ReplyPart.select().where(ReplyPart.status == "undelivered").count() == 1, timeout=10)

    operator = live.app.test_client()
    assert log_in(operator).status_code == 302
    conversation = conversation_for(ADA)
    page = operator.get(f"/admin/conversation/details/?id={conversation.id}").get_data(as_text=True)
    assert 'id="delivery-problem"' in page and OUTSIDE_WINDOW_FIX in page and "63016" in page
    listing = operator.get("/admin/conversation/").get_data(as_text=True)
    assert "delivery-flag" in listing and OUTSIDE_WINDOW_FIX in listing


def test_a_later_delivered_reply_clears_the_flag(operator, services):
    stored_reply([("undelivered", 63016)])
    stored_reply([("delivered", None)])

    page = operator.get(f"/admin/conversation/details/?id={conversation_for(ADA).id}").get_data(as_text=True)

    assert 'id="delivery-problem"' not in page
    assert "delivery-flag" not in operator.get("/admin/conversation/").get_data(as_text=True)


def test_the_transcript_shows_ticks_for_each_part(operator, services):
    stored_reply([("sent", None), ("delivered", None), ("read", None), ("failed", 30008)])

    page = operator.get(f"/admin/conversation/details/?id={conversation_for(ADA).id}").get_data(as_text=True)

    assert 'class="delivery delivery-sent" title="part 1: sent">✓<' in page
    assert 'class="delivery delivery-delivered" title="part 2: delivered">✓✓<' in page
    assert 'class="delivery delivery-read text-primary" title="part 3: read">✓✓ read<' in page
    assert "✗ failed (30008)" in page
    assert 'id="delivery-problem"' not in page  # 30008 is not a permanent failure


@pytest.mark.postgres
def test_the_dashboard_counts_answers_twilio_reported_undelivered(operator, services):
    stored_reply([("delivered", None), ("read", None), ("sent", None)])
    stored_reply([("undelivered", 63016)], phone="whatsapp:+15550002222")
    stored_reply([("failed", 30008), ("delivered", None)], phone="whatsapp:+15550003333")

    page = operator.get("/admin/").get_data(as_text=True)

    assert re.search(r'id="answered"[^>]*>1<', page)
    assert re.search(r'id="undelivered"[^>]*>2<', page)
    errors = page.split('id="error-links"')[1].split("</ul>")[0]
    assert "Twilio 63016: 1" in errors and "Twilio 30008: 1" in errors


def test_no_status_callback_is_asked_for_without_a_public_base_url(config, services, fake_twilio):
    built = build_services(config.replace(public_base_url=""), whatsapp_options=FAST_RETRIES)

    built.whatsapp.send(ADA, "Hello")

    assert "StatusCallback" not in fake_twilio.sent[0]
