"""The second attack round's findings on the gates, replayed through the signed webhook with real workers:
a budget promise kept under a crowd (5), /reset and a confirmed /forget inside a burst (6), a stray
"yes" after /forget (7)."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from rq import Worker

from chatbot.models import Conversation, Message, utcnow
from chatbot.stages.budget import MONTHLY_NOTICE
from tests.conftest import jobs_done, wait_for

ADA = "whatsapp:+15550001111"
# Well inside the one-second window the burst tests use: each message extends the wait for the next.
TYPING_GAP = 0.3


def bodies(fake_twilio) -> list[str]:
    return [sent["Body"] for sent in fake_twilio.sent]


def asked(completion) -> list[str]:
    """What one AI call read after its system prompt: the history, then the user's turn."""
    return [message["content"] for message in completion.body["messages"][1:]]


def type_burst(post_webhook, texts: list[str]) -> None:
    for number, text in enumerate(texts):
        if number:
            time.sleep(TYPING_GAP)
        post_webhook.message(text, sender=ADA)


def start_coalescing_worker(workers, services) -> None:
    workers.start(COALESCE_SECONDS="1")
    assert wait_for(lambda: Worker.all(connection=services.redis), timeout=30), "the worker did not start"


# --- 5: a budget is a promise about money ------------------------------------------------------------

ANSWER_COST = 0.001


@pytest.mark.postgres
def test_with_room_for_five_answers_forty_senders_at_once_get_at_most_seven(post_webhook, workers, fake_openrouter,
                                                                          fake_twilio):
    # Priced so the price list expects what an answer then costs: 100 answer tokens at $0.00001.
    fake_openrouter.pricing["openai/gpt-4o-mini"] = {"prompt": "0", "completion": "0.00001"}
    fake_openrouter.cost = ANSWER_COST
    fake_openrouter.delay_for = lambda messages: 1.0  # every slot busy at once
    cap, senders = 5.5 * ANSWER_COST, 40
    for number in range(senders):
        post_webhook.message("what does it cost?", sender=f"whatsapp:+1555400{number:04d}")
    workers.start(WORKER_CONCURRENCY="10", BUDGET_MONTHLY=repr(cap), AI_MAX_TOKENS="100")
    assert wait_for(lambda: len(fake_twilio.sent) == senders, timeout=60), len(fake_twilio.sent)
    calls = len(fake_openrouter.completions)
    assert 5 <= calls <= 7, calls
    assert bodies(fake_twilio).count(MONTHLY_NOTICE) == senders - calls
    assert Message.spend(utcnow() - timedelta(hours=1)) == (pytest.approx(calls * ANSWER_COST), 0)
    assert Message.spend(utcnow() - timedelta(hours=1))[0] <= cap


# --- 6: /reset or a confirmed /forget inside a burst ------------------------------------------------

def test_a_reset_inside_a_burst_leaves_the_messages_after_it_nothing_of_before(
        post_webhook, workers, services, fake_openrouter, fake_twilio):
    start_coalescing_worker(workers, services)
    type_burst(post_webhook, ["hi there", "/reset", "how are you"])
    assert wait_for(lambda: len(fake_twilio.sent) == 3, timeout=30), bodies(fake_twilio)
    assert wait_for(lambda: jobs_done(services.redis))
    first, reset, last = bodies(fake_twilio)
    assert (first, last) == ("Answer to: hi there", "Answer to: how are you") and reset.startswith("Starting over")
    assert asked(fake_openrouter.completions[-1]) == ["how are you"]
    later = Message.get(Message.content == "how are you").conversation
    assert later.is_active and later.id != Message.get(Message.content == "/reset").conversation_id
    # What the next message remembers: the conversation the reset began, nothing of before it.
    post_webhook.message("and you?", sender=ADA)
    assert wait_for(lambda: len(fake_twilio.sent) == 4, timeout=30)
    assert asked(fake_openrouter.completions[-1]) == ["how are you", "Answer to: how are you", "and you?"]


def test_a_confirmed_forget_inside_a_burst_erases_what_came_before_and_answers_what_came_after(
        post_webhook, workers, services, fake_openrouter, fake_twilio):
    start_coalescing_worker(workers, services)
    type_burst(post_webhook, ["my order is 42", "/forget", "YES", "how are you"])
    assert wait_for(lambda: len(fake_twilio.sent) == 4, timeout=30), bodies(fake_twilio)
    assert wait_for(lambda: jobs_done(services.redis))
    assert bodies(fake_twilio)[2:] == ["Done: everything I stored about you is erased.", "Answer to: how are you"]
    assert asked(fake_openrouter.completions[-1]) == ["how are you"]
    assert [message.content for message in Message.select().order_by(Message.id)] == [
        "how are you", "Answer to: how are you"]
    assert Conversation.select().count() == 1


# --- 7: only YES confirms a /forget -----------------------------------------------------------------

def test_a_yes_after_another_message_is_plain_agreement_and_erases_nothing(post_webhook, run_jobs, fake_openrouter,
                                                                          fake_twilio):
    for text in ["my order is 42", "/forget", "is it shipped?", "yes"]:
        post_webhook.message(text, sender=ADA)
        run_jobs()
    assert bodies(fake_twilio)[2:] == ["Answer to: is it shipped?", "Answer to: yes"]
    assert asked(fake_openrouter.completions[-1])[-3:] == ["is it shipped?", "Answer to: is it shipped?", "yes"]
    assert Message.select().where(Message.content == "my order is 42").exists()
