"""ConversationManager: the Redis window, its limits, and its rebuild from the database."""
from __future__ import annotations

import pytest

from chatbot.context import ConversationManager
from chatbot.models import Message, Role, Status
from tests.support import conversation_for


def exchange(conversation, number):
    question = Message.create(conversation=conversation, role=Role.USER.value, content=f"q{number}",
                              status=Status.ANSWERED.value)
    answer = Message.create(conversation=conversation, role=Role.ASSISTANT.value, content=f"a{number}",
                            status=Status.SENT.value, reply_to=question)
    return question, answer


def test_window_keeps_the_last_messages_in_order(services, redis):
    manager = ConversationManager(redis, max_messages=4, ttl=600)
    conversation = conversation_for("whatsapp:+15550001111")
    for number in range(1, 3):
        manager.add_exchange(conversation.id, *exchange(conversation, number))
    assert [m["content"] for m in manager.get_history(conversation)] == ["q1", "a1", "q2", "a2"]
    assert 590 < redis.ttl(manager.key(conversation.id)) <= 600


def test_a_full_window_drops_its_older_half_and_then_keeps_its_start(services, redis):
    manager = ConversationManager(redis, max_messages=4, ttl=600)
    conversation = conversation_for("whatsapp:+15550001111")
    seen = []
    for number in range(1, 7):
        manager.add_exchange(conversation.id, *exchange(conversation, number))
        seen.append([m["content"] for m in manager.get_history(conversation)])
    assert seen == [
        ["q1", "a1"],
        ["q1", "a1", "q2", "a2"],
        ["q3", "a3"],  # full: the older half went at once
        ["q3", "a3", "q4", "a4"],  # the start stayed: the prompt's prefix is the same as the turn before
        ["q5", "a5"],
        ["q5", "a5", "q6", "a6"],
    ]
    manager.clear_history(conversation.id)
    assert not redis.exists(manager.start_key(conversation.id))


def test_the_knowledge_an_answer_was_given_sits_before_its_question_and_does_not_fill_the_window(services, redis):
    manager = ConversationManager(redis, max_messages=4, ttl=600)
    conversation = conversation_for("whatsapp:+15550001111")
    seen = []
    for number in range(1, 5):
        question, answer = exchange(conversation, number)
        if number % 2:
            answer.metadata = {"knowledge": {"best_score": 0.7, "passages": [], "message": f"sources {number}"}}
            answer.save()
        manager.add_exchange(conversation.id, question, answer)
        seen.append([m["content"] for m in manager.get_history(conversation)])
    assert seen == [
        ["sources 1", "q1", "a1"],
        ["sources 1", "q1", "a1", "q2", "a2"],  # four messages: the sources ride with their question
        ["sources 3", "q3", "a3"],  # the older half went, its sources with it
        ["sources 3", "q3", "a3", "q4", "a4"],
    ]
    assert manager.get_history(conversation)[0] == {"role": "system", "content": "sources 3"}
    redis.flushdb()
    assert [m["content"] for m in manager.get_history(conversation)] == ["sources 3", "q3", "a3", "q4", "a4"]


def test_answer_sits_after_its_question_even_when_a_later_question_was_stored_first(services, redis):
    manager = ConversationManager(redis, max_messages=10, ttl=600)
    conversation = conversation_for("whatsapp:+15550001111")
    q1 = Message.create(conversation=conversation, role="user", content="q1", status="answered")
    q2 = Message.create(conversation=conversation, role="user", content="q2", status="answered")
    a1 = Message.create(conversation=conversation, role="assistant", content="a1", status="sent", reply_to=q1)
    a2 = Message.create(conversation=conversation, role="assistant", content="a2", status="sent", reply_to=q2)
    manager.add_exchange(conversation.id, q1, a1)
    manager.add_exchange(conversation.id, q2, a2)
    assert [m["content"] for m in manager.get_history(conversation)] == ["q1", "a1", "q2", "a2"]
    assert [m["content"] for m in manager.get_history(conversation, before_message_id=q2.id)] == ["q1", "a1"]


def test_adding_the_same_exchange_twice_changes_nothing(services, redis):
    manager = ConversationManager(redis, max_messages=10, ttl=600)
    conversation = conversation_for("whatsapp:+15550001111")
    pair = exchange(conversation, 1)
    manager.add_exchange(conversation.id, *pair)
    manager.add_exchange(conversation.id, *pair)
    assert len(manager.get_history(conversation)) == 2


@pytest.mark.postgres
def test_lost_window_of_an_active_conversation_is_rebuilt_from_the_database(services, redis):
    manager = ConversationManager(redis, max_messages=4, ttl=600)
    conversation = conversation_for("whatsapp:+15550001111")
    for number in range(1, 4):
        exchange(conversation, number)
    failed = Message.create(conversation=conversation, role="user", content="failed one", status="failed")
    Message.create(conversation=conversation, role="assistant", content="sorry", status="sent",
                   reply_to=failed, metadata={"canned": "ai_failure"})
    redis.flushdb()
    assert [m["content"] for m in manager.get_history(conversation)] == ["q2", "a2", "q3", "a3"]
    assert redis.exists(manager.key(conversation.id))


@pytest.mark.postgres
def test_inactive_conversation_is_not_rebuilt(services, redis):
    manager = ConversationManager(redis, max_messages=4, ttl=600)
    conversation = conversation_for("whatsapp:+15550001111")
    exchange(conversation, 1)
    conversation.is_active = False
    conversation.save()
    assert manager.get_history(conversation) == []


def test_clear_history_forgets_only_that_conversation(services, redis):
    manager = ConversationManager(redis, max_messages=4, ttl=600)
    ada = conversation_for("whatsapp:+15550001111")
    bob = conversation_for("whatsapp:+15550002222")
    manager.add_exchange(ada.id, *exchange(ada, 1))
    manager.add_exchange(bob.id, *exchange(bob, 2))
    manager.clear_history(ada.id)
    assert not redis.exists(manager.key(ada.id))
    assert [m["content"] for m in manager.get_history(bob)] == ["q2", "a2"]


def test_add_message_places_a_single_message(services, redis):
    manager = ConversationManager(redis, max_messages=4, ttl=600)
    conversation = conversation_for("whatsapp:+15550001111")
    manager.add_message(conversation.id, "user", "hello", position=1.0, message_id=1)
    assert manager.get_history(conversation) == [{"role": "user", "content": "hello"}]
