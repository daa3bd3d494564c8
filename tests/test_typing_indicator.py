"""The user sees "typing…" while the bot works, and the answer never waits on it."""
from __future__ import annotations

import time
from urllib.parse import urlparse

from chatbot.jobs import tasks
from chatbot.models import Message
from chatbot.whatsapp import TYPING_TIMEOUT
from tests.fakes import TYPING_PATH, FakeTwilio, Scripted

ADA = "whatsapp:+15550001111"


def request_paths(fake_twilio) -> list[str]:
    return [urlparse(r.path).path for r in fake_twilio.requests if r.method == "POST"]


def test_typing_indicator_for_the_inbound_message_comes_before_the_reply(post_webhook, run_jobs, fake_twilio):
    form = post_webhook.message("What is the capital of France?", sender=ADA)
    run_jobs()
    assert fake_twilio.typing_indicators == [{"channel": "whatsapp", "messageId": form["MessageSid"]}]
    paths = request_paths(fake_twilio)
    assert paths.index(TYPING_PATH) < next(i for i, path in enumerate(paths) if path.endswith("/Messages.json"))
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Answer to: What is the capital of France?"]


def test_failing_typing_indicator_still_gets_the_reply_out(post_webhook, run_jobs, fake_twilio, caplog):
    fake_twilio.typing_answers.append(FakeTwilio.error(500, 20500, "Internal Server Error"))
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert len(fake_twilio.typing_indicators) == 1
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Answer to: Hello"]
    assert "typing indicator not shown" in caplog.text and "status=500" in caplog.text


def test_hanging_typing_indicator_delays_the_reply_by_its_short_timeout_at_most(post_webhook, run_jobs,
                                                                             fake_twilio):
    fake_twilio.typing_answers.append(Scripted(200, {"success": True}, delay=TYPING_TIMEOUT + 8))
    post_webhook.message("Hello", sender=ADA)
    started = time.monotonic()
    run_jobs()
    assert time.monotonic() - started < TYPING_TIMEOUT + 4
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Answer to: Hello"]


def test_message_without_a_twilio_sid_gets_no_typing_indicator(post_webhook, run_jobs, fake_twilio):
    post_webhook.message("Hello", sender=ADA)
    # As a line typed in `flask chat` is stored: no MessageSid to show the indicator under.
    Message.update(twilio_sid=None).execute()
    run_jobs()
    assert fake_twilio.typing_indicators == []
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Answer to: Hello"]


def test_redelivered_job_for_an_answered_message_shows_no_typing(post_webhook, run_jobs, services, fake_twilio):
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    tasks.process_message(Message.get(Message.content == "Hello").id)
    assert len(fake_twilio.typing_indicators) == 1
    assert len(fake_twilio.sent) == 1
