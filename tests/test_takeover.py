"""Human takeover: an operator pauses the bot for a conversation, replies by hand, and hands back."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from chatbot import auth, takeover
from chatbot.jobs import tasks
from chatbot.models import Conversation, Message, Role, Status, utcnow
from chatbot.whatsapp import split_message
from tests.conftest import PASSWORD, csrf_token, log_in, wait_for
from tests.support import conversation_for

USER = "whatsapp:+15550001111"


def logged_in(app, username: str):
    """A test client of `app` logged in as a new admin named `username`."""
    auth.create_or_reset_admin(username, PASSWORD)
    client = app.test_client()
    assert log_in(client, username).status_code == 302
    return client


def details(conversation) -> str:
    return f"/admin/conversation/details/?id={conversation.id}"


def take_over(client, conversation):
    token = csrf_token(client, details(conversation))
    return client.post(f"/admin/conversation/takeover/{conversation.id}/", data={"csrf_token": token})


def hand_back(client, conversation):
    token = csrf_token(client, details(conversation))
    return client.post(f"/admin/conversation/handback/{conversation.id}/", data={"csrf_token": token})


def reply(client, conversation, text: str):
    token = csrf_token(client, details(conversation))
    return client.post(f"/admin/conversation/reply/{conversation.id}/", data={"csrf_token": token, "reply": text})


def refreshed(conversation) -> Conversation:
    return Conversation.get_by_id(conversation.id)


def test_taken_over_conversation_waits_for_the_operator_and_resumes_with_their_reply_in_context(
        operator, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    post_webhook.message("Hello", sender=USER)
    run_jobs()
    conversation = Conversation.get(Conversation.user_phone == USER)
    assert take_over(operator, conversation).status_code == 302
    assert refreshed(conversation).paused_by == "ops"

    post_webhook.message("I want to talk to a person", sender=USER)
    run_jobs()
    waiting = Message.get(Message.content == "I want to talk to a person")
    assert waiting.status == Status.WAITING.value
    assert len(fake_openrouter.completions) == 1
    assert len(fake_twilio.sent) == 1
    assert "waiting for a person" in operator.get(details(conversation)).get_data(as_text=True)

    assert reply(operator, conversation, "Hi, this is Ada from support.").status_code == 302
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent[1:]] == ["Hi, this is Ada from support."]
    by_hand = Message.get(Message.operator.is_null(False))
    assert (by_hand.operator, by_hand.role, by_hand.status) == ("ops", Role.ASSISTANT.value, Status.SENT.value)
    assert Message.get_by_id(waiting.id).status == Status.ANSWERED.value
    run_jobs()
    assert len(fake_twilio.sent) == 2

    assert hand_back(operator, conversation).status_code == 302
    assert refreshed(conversation).paused_at is None
    post_webhook.message("Thanks! One more question", sender=USER)
    run_jobs()
    assert len(fake_openrouter.completions) == 2
    prompt = fake_openrouter.completions[-1].body["messages"]
    assert prompt[-3:] == [
        {"role": "user", "content": "I want to talk to a person"},
        {"role": "assistant", "content": "Hi, this is Ada from support."},
        {"role": "user", "content": "Thanks! One more question"},
    ]


def test_messages_left_waiting_at_hand_back_stay_unanswered(operator, post_webhook, run_jobs, fake_openrouter):
    conversation = conversation_for(USER)
    take_over(operator, conversation)
    post_webhook.message("Anyone there?", sender=USER)
    run_jobs()
    hand_back(operator, conversation)
    run_jobs()
    assert Message.get(Message.content == "Anyone there?").status == Status.WAITING.value
    assert fake_openrouter.completions == []


def test_replying_needs_a_takeover_and_a_csrf_token(operator, run_jobs, fake_twilio):
    conversation = conversation_for(USER)
    reply(operator, conversation, "Unasked")
    take_over(operator, conversation)
    operator.post(f"/admin/conversation/reply/{conversation.id}/", data={"reply": "Forged"})
    run_jobs()
    assert Message.select().where(Message.operator.is_null(False)).count() == 0
    assert fake_twilio.sent == []


@pytest.mark.postgres
def test_a_second_operator_cannot_take_over_a_taken_over_conversation(app, operator):
    conversation = conversation_for(USER)
    take_over(operator, conversation)
    take_over(logged_in(app, "bo"), conversation)
    assert refreshed(conversation).paused_by == "ops"


@pytest.mark.postgres
def test_two_operators_replying_at_once_send_both_replies_whole_in_order_once(
        app, operator, workers, fake_twilio):
    conversation = conversation_for(USER)
    take_over(operator, conversation)
    other = logged_in(app, "bo")
    replies = {"ops": "A" * 2000, "bo": "B" * 2000}  # two WhatsApp messages each
    clients = {"ops": operator, "bo": other}
    tokens = {name: csrf_token(client, details(conversation)) for name, client in clients.items()}
    start = threading.Barrier(2)

    def send(name):
        start.wait()
        clients[name].post(f"/admin/conversation/reply/{conversation.id}/",
                           data={"csrf_token": tokens[name], "reply": replies[name]})

    threads = [threading.Thread(target=send, args=(name,)) for name in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    workers.start()
    workers.start()
    by_hand = Message.select().where(Message.operator.is_null(False)).order_by(Message.id)
    assert wait_for(lambda: [message.status for message in by_hand.clone()] == [Status.SENT.value] * 2)
    stored = list(by_hand.clone())
    expected = [part for message in stored for part in split_message(message.content)]
    assert [sent["Body"] for sent in fake_twilio.sent] == expected
    assert len(expected) == 4


def test_user_message_arriving_while_the_operator_reply_is_sent_waits_and_nothing_repeats(
        operator, post_webhook, workers, fake_twilio, fake_openrouter):
    conversation = conversation_for(USER)
    take_over(operator, conversation)
    fake_twilio.hold_answers = 1.0
    workers.start()
    reply(operator, conversation, "Let me check that for you.")
    assert wait_for(lambda: len(fake_twilio.sent) == 1)
    post_webhook.message("Ok, waiting", sender=USER)
    assert wait_for(lambda: Message.get(Message.content == "Ok, waiting").status == Status.WAITING.value)
    assert wait_for(lambda: Message.get(Message.operator == "ops").status == Status.SENT.value)
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Let me check that for you."]
    assert fake_openrouter.completions == []


def backdate(conversation, minutes: int) -> None:
    past = utcnow() - timedelta(minutes=minutes)
    Conversation.update(paused_at=past, updated_at=past).where(Conversation.id == conversation.id).execute()


@pytest.mark.postgres
def test_takeover_timeout_hands_back_after_silence_only(services):
    services.config = services.config.replace(takeover_timeout=30)
    silent, recent = conversation_for(USER), conversation_for("whatsapp:+15550002222")
    takeover.take_over(silent.id, "ops")
    takeover.take_over(recent.id, "ops")
    backdate(silent, 31)
    backdate(recent, 31)
    recent.touch()  # a user message or an operator reply just now
    tasks.sweep_pending_messages()
    assert refreshed(silent).paused_at is None
    assert refreshed(recent).paused_by == "ops"


def test_no_takeover_timeout_keeps_a_takeover_however_silent(services):
    conversation = conversation_for(USER)
    takeover.take_over(conversation.id, "ops")
    backdate(conversation, 60 * 24 * 30)
    tasks.sweep_pending_messages()
    assert refreshed(conversation).paused_by == "ops"


@pytest.mark.postgres
def test_list_shows_taken_over_then_waiting_conversations_first(operator):
    conversation_for("whatsapp:+15550003333", "Person-quiet")
    waiting = conversation_for("whatsapp:+15550004444", "Person-waiting")
    paused = conversation_for("whatsapp:+15550005555", "Person-paused")
    Message.create(conversation=waiting, role=Role.USER.value, content="hello?", status=Status.WAITING.value)
    takeover.take_over(paused.id, "ops")
    # The most recently active last: the order is not by activity alone.
    for conversation, minutes in ((paused, 10), (waiting, 5)):
        Conversation.update(updated_at=utcnow() - timedelta(minutes=minutes)).where(
            Conversation.id == conversation.id).execute()
    page = operator.get("/admin/conversation/").get_data(as_text=True)
    positions = [page.index(name) for name in ("Person-paused", "Person-waiting", "Person-quiet")]
    assert positions == sorted(positions)
