"""A person is called, end to end: signed webhook → RQ worker → OpenRouter fake → Twilio fake, and the
team's chat webhook on loopback."""
from __future__ import annotations

import json
from datetime import datetime

import pytest

from chatbot.handoff import REQUEST_HUMAN, holding_message, resolve
from chatbot.models import Conversation, Handoff, Message, Role, Status
from config import DEFAULT_HANDOFF_MESSAGE
from tests.fakes import FakeOpenRouter, Scripted
from tests.test_notify import ChatWebhook

ADA = "whatsapp:+15550001111"
ADA_DIGITS = "15550001111"


@pytest.fixture
def chat(services):
    """The team's chat webhook, set as NOTIFY_WEBHOOK_URL."""
    server = ChatWebhook().start()
    services.notifier.config = services.config.replace(notify_webhook_url=server.url + "/hooks/T000/B000")
    yield server
    server.stop()


def bodies(fake_twilio, to: str = ADA) -> list[str]:
    return [sent["Body"] for sent in fake_twilio.sent if sent["To"] == to]


def tool_call(reason: str = "missing_knowledge", summary: str = "Wants to change the delivery address") -> Scripted:
    completion = FakeOpenRouter.completion("", model="openai/gpt-4o-mini")
    message = completion["choices"][0]["message"]
    message["content"] = None
    message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {
        "name": "request_human", "arguments": json.dumps({"reason": reason, "summary": summary})}}]
    completion["choices"][0]["finish_reason"] = "tool_calls"
    return Scripted(200, completion)


@pytest.mark.postgres
def test_asking_for_a_human_calls_one_once_with_no_ai_call_and_one_notification(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio, chat):
    post_webhook.message("Hi, I want to talk to a human please", sender=ADA)
    run_jobs()
    assert fake_openrouter.completions == []
    assert bodies(fake_twilio) == [DEFAULT_HANDOFF_MESSAGE]
    [handoff] = Handoff.select()
    assert (handoff.reason, handoff.trigger, handoff.resolved_at) == ("customer_request", "phrase", None)
    assert Conversation.get_by_id(handoff.conversation_id).paused_at is not None
    [notice] = chat.requests
    text = notice.body["text"]
    assert f"https://bot.example.com/admin/conversation/details/?id={handoff.conversation_id}" in text
    assert ADA_DIGITS not in json.dumps(notice.body) and "talk to a human" in text
    assert Handoff.get_by_id(handoff.id).notified_at is not None

    # More messages while waiting: stored and shown, no AI call, no second notice, no second holding message.
    post_webhook.message("Hello? Anyone there?", sender=ADA)
    post_webhook.message("/human", sender=ADA)
    run_jobs()
    assert fake_openrouter.completions == [] and len(chat.requests) == 1
    assert bodies(fake_twilio) == [DEFAULT_HANDOFF_MESSAGE]
    assert Handoff.select().count() == 1
    waiting = [message.content for message in Message.select().where(Message.role == Role.USER.value,
                                                                      Message.status == Status.WAITING.value)]
    assert waiting == ["Hi, I want to talk to a human please", "Hello? Anyone there?", "/human"]

    # Resolved: the bot answers again, and nothing old calls a person again.
    assert resolve(handoff.conversation_id, "ops")
    post_webhook.message("What are your opening hours?", sender=ADA)
    run_jobs()
    assert bodies(fake_twilio)[-1] == "Answer to: What are your opening hours?"
    assert Handoff.select().count() == 1 and len(chat.requests) == 1


def test_the_human_command_calls_a_person(services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    post_webhook.message("/HUMAN", sender=ADA)
    run_jobs()
    assert fake_openrouter.completions == [] and bodies(fake_twilio) == [DEFAULT_HANDOFF_MESSAGE]
    assert Handoff.get().trigger == "command"


def test_a_phrase_inside_a_longer_word_does_not_call_a_person(services, post_webhook, run_jobs, fake_twilio):
    post_webhook.message("Is this a surreal personality test?", sender=ADA)
    run_jobs()
    assert Handoff.select().count() == 0
    assert bodies(fake_twilio) == ["Answer to: Is this a surreal personality test?"]


@pytest.mark.postgres
def test_a_model_that_calls_request_human_hands_over_the_same_way(services, post_webhook, run_jobs, fake_openrouter,
                                                                 fake_twilio, chat):
    fake_openrouter.tool_models = {"openai/gpt-4o-mini"}
    fake_openrouter.then(tool_call())
    post_webhook.message("Can you change the address of order 42?", sender=ADA)
    run_jobs()
    [request] = fake_openrouter.completions
    # Offered with the other built-in tool; no operator tool is defined.
    assert request.body["tools"][0] == REQUEST_HUMAN
    assert [tool["function"]["name"] for tool in request.body["tools"]] == ["request_human", "schedule_follow_up"]
    assert bodies(fake_twilio) == [DEFAULT_HANDOFF_MESSAGE]
    [handoff] = Handoff.select()
    assert (handoff.reason, handoff.trigger, handoff.summary) == (
        "missing_knowledge", "model", "Wants to change the delivery address")
    answer = Message.get(Message.role == Role.ASSISTANT.value)
    assert answer.model == "openai/gpt-4o-mini" and answer.cost is not None  # the call was paid for
    assert Message.get(Message.role == Role.USER.value).status == Status.WAITING.value
    assert len(chat.requests) == 1 and "Wants to change the delivery address" in chat.requests[0].body["text"]

    post_webhook.message("Thanks", sender=ADA)
    run_jobs()
    assert len(fake_openrouter.completions) == 1 and len(chat.requests) == 1


def test_a_model_without_tools_is_offered_none(services, post_webhook, run_jobs, fake_openrouter):
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert "tools" not in fake_openrouter.completions[0].body


def test_an_unknown_reason_from_the_model_counts_as_the_customers_request(services, post_webhook, run_jobs,
                                                                         fake_openrouter):
    fake_openrouter.tool_models = {"openai/gpt-4o-mini"}
    fake_openrouter.then(tool_call(reason="boredom"))
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert Handoff.get().reason == "customer_request"


def test_repeated_failures_call_a_person_and_a_resolution_starts_the_count_again(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio, chat):
    for number in range(3):
        fake_openrouter.then(FakeOpenRouter.error(401, "No auth credentials found"))
        post_webhook.message(f"question {number}", sender=ADA)
        run_jobs()
    [handoff] = Handoff.select()
    assert (handoff.reason, handoff.trigger) == ("repeated_failure", "failures")
    last = bodies(fake_twilio)[-1]
    assert last.endswith("\n\n" + DEFAULT_HANDOFF_MESSAGE) and last.startswith("Sorry")
    assert len(bodies(fake_twilio)) == 3 and len(chat.requests) == 1

    resolve(handoff.conversation_id, "ops")
    fake_openrouter.then(FakeOpenRouter.error(401, "No auth credentials found"))
    post_webhook.message("question 4", sender=ADA)
    run_jobs()
    assert Handoff.select().count() == 1  # the failures before the resolution do not count again


def test_out_of_hours_the_customer_is_told_when_the_team_is_back(config):
    hours = config.replace(business_hours="Mon-Fri 09:00-17:30", business_hours_spans=((0, 540, 1050),),
                           admin_timezone="Europe/Lisbon")
    monday_morning, monday_night = datetime(2026, 1, 5, 10, 0), datetime(2026, 1, 5, 20, 0)
    assert holding_message(hours, monday_morning) == DEFAULT_HANDOFF_MESSAGE
    assert "(Mon-Fri 09:00-17:30)" in holding_message(hours, monday_night)
    assert holding_message(config, monday_night) == DEFAULT_HANDOFF_MESSAGE  # no hours set: always in


def test_the_dashboard_counts_handoffs_by_reason_and_the_wait_for_a_person(services, post_webhook, run_jobs,
                                                                           operator):
    from chatbot.takeover import store_operator_reply

    post_webhook.message("I need a real person", sender=ADA)
    post_webhook.message("/human", sender="whatsapp:+15550002222")
    run_jobs()
    first = Handoff.select().order_by(Handoff.id).first()
    store_operator_reply(Conversation.get_by_id(first.conversation_id), "Sam here, how can I help?", "ops")
    page = operator.get("/admin/?period=today").get_data(as_text=True)
    section = page[page.index('id="handoffs"'):page.index('id="fallback-use"')]
    assert "the customer asked for a person</td><td class=\"text-right\">2</td>" in section
    assert "(1 of 2 answered)" in section


def test_a_handoff_nobody_claimed_is_reminded_of_once_per_interval(services, post_webhook, run_jobs, chat):
    from datetime import timedelta

    from chatbot.handoff import claim
    from chatbot.jobs import tasks
    from chatbot.models import utcnow

    post_webhook.message("/human", sender=ADA)
    run_jobs()
    assert len(chat.requests) == 1
    assert tasks.remind_of_unclaimed_handoffs() == 0  # not yet: HANDOFF_REMIND_MINUTES is 30
    Handoff.update(opened_at=utcnow() - timedelta(minutes=31)).execute()
    assert tasks.remind_of_unclaimed_handoffs() == 1
    run_jobs()
    assert len(chat.requests) == 2 and "nobody has claimed it" in chat.requests[-1].body["text"]
    assert tasks.remind_of_unclaimed_handoffs() == 0  # reminded just now

    Handoff.update(reminded_at=utcnow() - timedelta(minutes=31)).execute()
    assert claim(Handoff.get().id, "ops")
    assert tasks.remind_of_unclaimed_handoffs() == 0  # claimed: nobody needs reminding


def test_answers_that_say_the_knowledge_does_not_cover_them_call_a_person_and_small_talk_does_not(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    from chatbot.knowledge import sources

    sources.add_text(services.queue, "# Returns\n\nReturns are accepted within 30 days.", "Returns policy")
    run_jobs()
    for text in ("hello", "thanks", "ok great"):  # nothing in the knowledge matches: no person needed
        post_webhook.message(text, sender=ADA)
        run_jobs()
    assert Handoff.select().count() == 0
    fake_openrouter.reply_for = lambda messages: "Sorry, I don't have that information."
    for text in ("Can I return shoes after 40 days?", "What about returns of a gift?", "Returns for sale items?"):
        post_webhook.message(text, sender=ADA)
        run_jobs()
    assert Handoff.get().reason == "repeated_failure"
    assert bodies(fake_twilio)[-1] == f"Sorry, I don't have that information.\n\n{DEFAULT_HANDOFF_MESSAGE}"


def test_a_call_to_a_tool_the_model_was_not_offered_is_no_answer(services, post_webhook, run_jobs, fake_openrouter,
                                                                  fake_twilio):
    made_up = tool_call()
    made_up.body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] = "launch_rockets"
    fake_openrouter.tool_models = {"openai/gpt-4o-mini"}
    fake_openrouter.then(made_up)
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    # Retried as an empty answer: the next attempt answers.
    assert bodies(fake_twilio) == ["Answer to: Hello"] and Handoff.select().count() == 0
    assert len(fake_openrouter.completions) == 2
