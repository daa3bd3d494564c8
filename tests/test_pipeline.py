"""The whole journey: signed webhook → RQ worker → OpenRouter fake → Twilio fake."""
from __future__ import annotations

import time

import pytest
from rq import Retry

from chatbot.errors import USER_MESSAGES, Category, WhatsAppError
from chatbot.jobs import queueing, tasks
from chatbot.models import Message, Role, Status
from tests.conftest import BOT_NUMBER
from tests.fakes import FakeOpenRouter, FakeTwilio, Scripted
from tests.support import BurstWorker
from worker import build_worker

ADA = "whatsapp:+15550001111"
FALLBACK_REPLY = USER_MESSAGES[Category.AI]
BOB = "whatsapp:+15550002222"


@pytest.mark.postgres
def test_message_is_answered_in_the_same_chat(post_webhook, run_jobs, fake_twilio):
    post_webhook.message("What is the capital of France?", sender=ADA)
    run_jobs()
    assert fake_twilio.sent == [
        {"To": ADA, "From": BOT_NUMBER, "Body": "Answer to: What is the capital of France?",
         "StatusCallback": "https://bot.example.com/whatsapp/status"}
    ]


def test_second_turn_carries_first_exchange(post_webhook, run_jobs, fake_openrouter):
    post_webhook.message("What is the capital of France?", sender=ADA)
    run_jobs()
    post_webhook.message("And of Italy?", sender=ADA)
    run_jobs()
    sent = fake_openrouter.completions[-1].body["messages"]
    assert sent == [
        {"role": "system", "content": "You are a test assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Answer to: What is the capital of France?"},
        {"role": "user", "content": "And of Italy?"},
    ]


def test_two_senders_never_share_context(post_webhook, run_jobs, fake_openrouter, fake_twilio):
    post_webhook.message("Ada's secret is 42", sender=ADA)
    post_webhook.message("Bob asks something", sender=BOB)
    post_webhook.message("Ada again", sender=ADA)
    post_webhook.message("Bob again", sender=BOB)
    run_jobs()
    prompts = {r.body["messages"][-1]["content"]: r.body["messages"] for r in fake_openrouter.completions}
    bob_context = " ".join(m["content"] for m in prompts["Bob again"])
    assert "Ada" not in bob_context
    assert [m["content"] for m in prompts["Ada again"][1:]] == [
        "Ada's secret is 42", "Answer to: Ada's secret is 42", "Ada again"
    ]
    assert {s["To"] for s in fake_twilio.sent} == {ADA, BOB}


@pytest.mark.postgres
def test_redelivered_message_is_answered_once(post_webhook, run_jobs, fake_twilio, fake_openrouter):
    form = post_webhook.message("Hello", sender=ADA)
    assert post_webhook(form).status_code == 200
    run_jobs()
    assert post_webhook(form).status_code == 200
    run_jobs()
    assert len(fake_openrouter.completions) == 1
    assert len(fake_twilio.sent) == 1


@pytest.mark.postgres
def test_job_run_twice_sends_one_reply(post_webhook, run_jobs, services, fake_twilio, fake_openrouter):
    post_webhook.message("Hello", sender=ADA)
    message_id = Message.get(Message.content == "Hello").id
    tasks.process_message(message_id)
    tasks.process_message(message_id)
    assert len(fake_openrouter.completions) == 1
    assert len(fake_twilio.sent) == 1


def test_long_reply_arrives_as_ordered_parts(post_webhook, run_jobs, fake_openrouter, fake_twilio):
    paragraphs = [f"Paragraph {n}. " + ("word " * 150).strip() + "." for n in range(1, 6)]
    fake_openrouter.reply_for = lambda messages: "\n\n".join(paragraphs)
    post_webhook.message("Tell me a lot", sender=ADA)
    run_jobs()
    bodies = [s["Body"] for s in fake_twilio.sent]
    assert len(bodies) > 1
    assert all(len(body) <= 1600 for body in bodies)
    assert " ".join(bodies).split() == "\n\n".join(paragraphs).split()
    assert all(body.startswith("Paragraph") for body in bodies)
    answer = Message.get(Message.role == "assistant")
    assert (answer.status, answer.parts_sent) == (Status.SENT.value, len(bodies))


def test_emoji_heavy_reply_keeps_every_emoji_whole(post_webhook, run_jobs, fake_openrouter, fake_twilio):
    family = "👨‍👩‍👧‍👦"
    reply = (family + "🇫🇷" + "👍🏽") * 300
    fake_openrouter.reply_for = lambda messages: reply
    post_webhook.message("Emoji please", sender=ADA)
    run_jobs()
    bodies = [s["Body"] for s in fake_twilio.sent]
    assert len(bodies) > 1
    assert "".join(bodies) == reply
    assert all(body.startswith(family) and body.endswith("👍🏽") for body in bodies)


def test_ai_misconfigured_user_gets_friendly_message(post_webhook, run_jobs, fake_openrouter, fake_twilio, caplog):
    fake_openrouter.then(FakeOpenRouter.error(401, "No auth credentials found"))
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert [s["Body"] for s in fake_twilio.sent] == [FALLBACK_REPLY]
    assert len(fake_openrouter.completions) == 1  # a 401 is not retried
    question = Message.get(Message.role == "user")
    assert question.status == Status.FAILED.value
    assert "No auth credentials found" in question.error and "status=401" in question.error
    assert "No auth credentials found" in caplog.text


def test_ai_out_of_credits_is_not_retried(post_webhook, run_jobs, fake_openrouter, fake_twilio):
    fake_openrouter.then(FakeOpenRouter.error(402, "Insufficient credits"))
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert len(fake_openrouter.completions) == 1
    assert [s["Body"] for s in fake_twilio.sent] == [FALLBACK_REPLY]


def test_ai_outage_is_retried_by_rq_then_answered(post_webhook, services, fake_openrouter, fake_twilio, monkeypatch):
    monkeypatch.setattr(queueing, "JOB_RETRY", Retry(max=2, interval=[1]))
    # Three 503s exhaust the adapter's own retries on the first job run.
    fake_openrouter.then(*[FakeOpenRouter.error(503, "Provider overloaded")] * 3)
    post_webhook.message("Hello", sender=ADA)
    worker = build_worker(services, worker_class=BurstWorker)
    worker.work(burst=True, with_scheduler=False)
    assert fake_twilio.sent == []
    job = services.queue.fetch_job(queueing.job_id_for(Message.get().id))
    assert job.get_status() == "scheduled"
    # A worker with the scheduler running picks the retry up when its interval has passed.
    deadline = time.monotonic() + 15
    while not fake_twilio.sent and time.monotonic() < deadline:
        build_worker(services, worker_class=BurstWorker).work(burst=True, with_scheduler=True)
        time.sleep(0.3)
    assert [s["Body"] for s in fake_twilio.sent] == ["Answer to: Hello"]


def test_ai_down_on_final_attempt_sends_fallback(post_webhook, services, fake_openrouter, fake_twilio):
    fake_openrouter.then(*[FakeOpenRouter.error(500, "Internal error")] * 3)
    post_webhook.message("Hello", sender=ADA)
    message_id = Message.get().id
    services.processor.process(message_id, final_attempt=True)
    assert [s["Body"] for s in fake_twilio.sent] == [FALLBACK_REPLY]


def test_empty_ai_answer_is_never_sent(post_webhook, services, fake_openrouter, fake_twilio):
    fake_openrouter.then(*[Scripted(200, FakeOpenRouter.completion(""))] * 3)
    post_webhook.message("Hello", sender=ADA)
    services.processor.process(Message.get().id, final_attempt=True)
    assert [s["Body"] for s in fake_twilio.sent] == [FALLBACK_REPLY]


@pytest.mark.postgres
def test_stored_answer_is_sent_after_twilio_recovers_without_asking_ai_again(
    post_webhook, services, fake_openrouter, fake_twilio
):
    fake_twilio.then(*[FakeTwilio.error(503, 20500, "Service unavailable")] * 4)
    post_webhook.message("Hello", sender=ADA)
    message_id = Message.get().id
    with pytest.raises(WhatsAppError):
        services.processor.process(message_id, final_attempt=False)
    services.processor.process(message_id, final_attempt=False)
    assert len(fake_openrouter.completions) == 1
    assert fake_twilio.sent[-1]["Body"] == "Answer to: Hello"
    assert Message.get(Message.role == "assistant").status == Status.SENT.value


def test_twilio_rate_limit_is_retried(post_webhook, run_jobs, fake_twilio):
    fake_twilio.then(FakeTwilio.error(429, 20429, "Too Many Requests"))
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert [s["Body"] for s in fake_twilio.sent] == ["Answer to: Hello", "Answer to: Hello"]
    assert Message.get(Message.role == "assistant").status == Status.SENT.value


def test_twilio_permanent_error_is_recorded_not_retried(post_webhook, run_jobs, fake_twilio, caplog):
    # (63016, the closed 24-hour window, has a handling of its own: tests/test_service_window.py.)
    fake_twilio.then(FakeTwilio.error(400, 21614, "'To' number is not a valid mobile number"))
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert len(fake_twilio.sent) == 1
    answer = Message.get(Message.role == "assistant")
    assert answer.status == Status.SEND_FAILED.value
    assert "code=21614" in answer.error
    assert "21614" in caplog.text


@pytest.mark.postgres
def test_older_unanswered_message_is_answered_first(post_webhook, services, fake_twilio):
    post_webhook.message("first", sender=ADA)
    post_webhook.message("second", sender=ADA)
    second = Message.get(Message.content == "second")
    services.processor.process(second.id)
    assert [s["Body"] for s in fake_twilio.sent] == ["Answer to: first", "Answer to: second"]


def test_a_job_queued_by_an_earlier_release_under_the_old_name_is_still_answered(post_webhook, services, run_jobs,
                                                                                fake_twilio):
    post_webhook.message("Queued before the upgrade")
    message = Message.get(Message.role == Role.USER.value)
    services.queue.empty()
    services.queue.enqueue_call("chatbot.tasks.process_message", args=(message.id,))
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Answer to: Queued before the upgrade"]
