"""COALESCE_SECONDS: a sender's quick messages answered as one, through the web app and real workers."""
from __future__ import annotations

import time

import pytest
from rq import Worker

from chatbot.models import Conversation, Message, Role, Status, WhatsAppNumber
from tests.conftest import jobs_done, wait_for
from tests.fakes import FakeTwilio

ADA = "whatsapp:+15550001111"
SALES = "whatsapp:+15557770001"
BURST = ["hi", "I have a question", "about my order"]
BURST_ANSWER = "Answer to: " + "\n".join(BURST)
# Well inside a one-second window, so each message extends the wait for the next.
TYPING_GAP = 0.3


def start_worker(workers, services, coalesce_seconds: int = 1, **settings):
    """Start a `python worker.py` with COALESCE_SECONDS and wait until it listens for jobs."""
    process = workers.start(COALESCE_SECONDS=str(coalesce_seconds), **settings)
    assert wait_for(lambda: Worker.all(connection=services.redis), timeout=30), "the worker did not start"
    return process


def type_burst(post_webhook, texts: list[str], **extra) -> None:
    for number, text in enumerate(texts):
        if number:
            time.sleep(TYPING_GAP)
        post_webhook.message(text, sender=ADA, **extra)


def user_turns(completion) -> list[str]:
    """What one AI call read after its system prompt: the history, then the user's turn."""
    return [message["content"] for message in completion.body["messages"][1:]]


def bodies(fake_twilio) -> list[str]:
    return [sent["Body"] for sent in fake_twilio.sent]


@pytest.mark.postgres
def test_a_burst_within_the_window_gets_one_ai_call_and_one_reply(post_webhook, workers, services,
                                                                 fake_openrouter, fake_twilio):
    start_worker(workers, services)
    type_burst(post_webhook, BURST)
    assert wait_for(lambda: fake_twilio.sent, timeout=30)
    assert wait_for(lambda: jobs_done(services.redis))
    assert bodies(fake_twilio) == [BURST_ANSWER]
    assert [user_turns(completion) for completion in fake_openrouter.completions] == [["\n".join(BURST)]]
    questions = list(Message.select().where(Message.role == Role.USER.value).order_by(Message.id))
    assert [question.status for question in questions] == [Status.ANSWERED.value] * 3
    answer = Message.get(Message.role == Role.ASSISTANT.value)
    assert answer.reply_to_id == questions[-1].id
    assert answer.metadata["answers"] == [question.id for question in questions]


def test_a_message_sent_during_the_ai_call_is_answered_next_with_the_burst_in_its_history(
        post_webhook, workers, services, fake_openrouter, fake_twilio):
    fake_openrouter.delay_for = lambda messages: 2.0 if len(fake_openrouter.completions) == 1 else 0.0
    start_worker(workers, services)
    type_burst(post_webhook, BURST)
    assert wait_for(lambda: fake_openrouter.in_flight == 1, timeout=30)
    post_webhook.message("is it shipped?", sender=ADA)
    assert wait_for(lambda: len(fake_twilio.sent) == 2, timeout=30), bodies(fake_twilio)
    assert bodies(fake_twilio) == [BURST_ANSWER, "Answer to: is it shipped?"]
    assert [user_turns(completion) for completion in fake_openrouter.completions] == [
        ["\n".join(BURST)],
        [*BURST, BURST_ANSWER, "is it shipped?"],
    ]
    assert Message.select().where(Message.role == Role.USER.value,
                                  Message.status != Status.ANSWERED.value).count() == 0


def test_without_coalescing_each_message_is_answered_on_its_own(post_webhook, workers, services,
                                                               fake_openrouter, fake_twilio):
    start_worker(workers, services, coalesce_seconds=0)
    type_burst(post_webhook, BURST)
    assert wait_for(lambda: len(fake_twilio.sent) == 3, timeout=30), bodies(fake_twilio)
    assert bodies(fake_twilio) == [f"Answer to: {text}" for text in BURST]
    assert len(fake_openrouter.completions) == 3
    assert "answers" not in Message.get(Message.role == Role.ASSISTANT.value).metadata


def test_a_command_inside_a_burst_is_handled_on_its_own_in_order(post_webhook, workers, services,
                                                                 fake_openrouter, fake_twilio):
    start_worker(workers, services)
    type_burst(post_webhook, ["hi", "there", "/help", "one", "more"])
    assert wait_for(lambda: len(fake_twilio.sent) == 3, timeout=30), bodies(fake_twilio)
    assert wait_for(lambda: jobs_done(services.redis))
    first, help_text, last = bodies(fake_twilio)
    assert (first, last) == ("Answer to: hi\nthere", "Answer to: one\nmore")
    assert help_text.startswith("I'm ") and "/reset" in help_text
    assert [user_turns(completion) for completion in fake_openrouter.completions] == [
        ["hi\nthere"],
        ["hi", "there", "Answer to: hi\nthere", "one\nmore"],
    ]


def test_the_greeting_comes_before_the_answer_to_a_first_burst(post_webhook, workers, services,
                                                              fake_openrouter, fake_twilio):
    WhatsAppNumber.create(address=SALES, label="Sales", greeting="Hi, this is Acme Sales!")
    start_worker(workers, services)
    type_burst(post_webhook, BURST, To=SALES)
    assert wait_for(lambda: fake_twilio.sent, timeout=30)
    assert wait_for(lambda: jobs_done(services.redis))
    assert bodies(fake_twilio) == ["Hi, this is Acme Sales!\n\n" + BURST_ANSWER]


@pytest.mark.postgres
def test_the_context_rebuilt_from_the_database_keeps_every_message_of_a_burst(post_webhook, workers, services,
                                                                             fake_twilio):
    start_worker(workers, services)
    type_burst(post_webhook, BURST)
    assert wait_for(lambda: fake_twilio.sent, timeout=30)
    conversation = Conversation.get()
    live = services.context.get_history(conversation)
    services.context.clear_history(conversation.id)  # Redis lost it
    rebuilt = services.context.get_history(conversation)
    expected = [*({"role": "user", "content": text} for text in BURST), {"role": "assistant", "content": BURST_ANSWER}]
    assert live == rebuilt == expected


def test_a_sender_who_never_pauses_is_answered_all_the_same(post_webhook, workers, services, fake_twilio):
    start_worker(workers, services)
    texts = [f"part {number}" for number in range(16)]
    type_burst(post_webhook, texts)  # 4.5 s without a one-second pause
    assert fake_twilio.sent, "no answer within three windows"
    # Every part answered, in order, once the last answer reached Twilio (it is stored a moment before).
    assert wait_for(lambda: "\n".join(texts) in "\n".join(body.removeprefix("Answer to: ")
                                                          for body in bodies(fake_twilio)), timeout=30)
    assert Message.select().where(Message.role == Role.USER.value, Message.status == Status.PENDING.value).count() == 0


def test_a_burst_answer_stored_before_the_worker_died_is_sent_once(post_webhook, workers, services, quick_recovery,
                                                                  fake_openrouter, fake_twilio):
    # Twilio refuses the first sends, so the worker sits between storing the answer and sending it.
    fake_twilio.then(*[FakeTwilio.error(503, 20500, "Service unavailable")] * 2)
    first = start_worker(workers, services, **quick_recovery)
    type_burst(post_webhook, BURST)
    assert wait_for(lambda: fake_twilio.sent, timeout=30)
    assert Message.get(Message.role == Role.ASSISTANT.value).status == Status.UNSENT.value
    workers.kill(first)
    workers.start(COALESCE_SECONDS="1", **quick_recovery)
    assert wait_for(lambda: Message.get(Message.role == Role.ASSISTANT.value).status == Status.SENT.value,
                    timeout=60)
    assert wait_for(lambda: jobs_done(services.redis))
    assert len(fake_openrouter.completions) == 1  # the stored answer was reused
    assert bodies(fake_twilio)[-1] == BURST_ANSWER
    assert len(fake_twilio.sent) == 3  # two refused attempts, one delivery
    assert Message.select().where(Message.role == Role.ASSISTANT.value).count() == 1
