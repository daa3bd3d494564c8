"""The admin's playground: chat with the bot as a test user, with any configuration, sending nothing."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest

from chatbot.jobs import tasks
from chatbot.models import AIConfiguration, Conversation, Message, Origin
from chatbot.reports import compute_stats
from tests.conftest import csrf_token


def say(client, text: str, configuration: str = ""):
    token = csrf_token(client, "/admin/playground/")
    return client.post("/admin/playground/send/",
                       data={"csrf_token": token, "text": text, "configuration": configuration})


def reset(client):
    token = csrf_token(client, "/admin/playground/")
    return client.post("/admin/playground/reset/", data={"csrf_token": token})


@pytest.fixture
def draft(services):
    """An inactive configuration beside an active one: the playground tries it before it goes live."""
    AIConfiguration.create(name="live", model_name="openai/gpt-4o-mini", system_prompt="You are live.",
                           is_active=True)
    return AIConfiguration.create(name="draft", model_name="anthropic/claude-3.5-sonnet",
                                  system_prompt="You are the draft prompt.")


@pytest.mark.postgres
def test_chosen_inactive_configuration_answers_and_nothing_is_sent_or_counted_but_its_cost(
        operator, draft, run_jobs, fake_openrouter, fake_twilio):
    before = compute_stats()
    assert say(operator, "Hello there", configuration=str(draft.id)).status_code == 302
    run_jobs()
    sent = fake_openrouter.completions[-1].body
    assert sent["model"] == "anthropic/claude-3.5-sonnet"
    assert sent["messages"] == [{"role": "system", "content": "You are the draft prompt."},
                                {"role": "user", "content": "Hello there"}]
    assert "Answer to: Hello there" in operator.get("/admin/playground/").get_data(as_text=True)
    assert fake_twilio.requests == []
    after = compute_stats()
    # Billed all the same: the spend counts it, as playground (tests/test_playground_spend.py).
    assert after.spend_today.playground == after.spend_today.usd > 0
    assert replace(after, spend_today=before.spend_today, spend_week=before.spend_week,
                   spend_month=before.spend_month) == before
    assert {message.origin for message in Message.select()} == {Origin.PLAYGROUND.value}
    assert Conversation.get().user_phone == "playground:ops"
    assert tasks.sweep_pending_messages() == 0


def test_environment_settings_answer_when_no_configuration_is_chosen(operator, draft, fake_openrouter):
    say(operator, "Hi")
    assert fake_openrouter.completions[-1].body["model"] == "openai/gpt-4o-mini"
    assert fake_openrouter.completions[-1].body["messages"][0]["content"] == "You are a test assistant."


def test_active_configuration_is_chosen_by_default(operator, draft):
    page = operator.get("/admin/playground/").get_data(as_text=True)
    live = AIConfiguration.get(AIConfiguration.name == "live")
    assert re.search(rf'<option value="{live.id}" selected', page)


def test_second_message_carries_the_first_and_reset_forgets_it(operator, fake_openrouter):
    say(operator, "My name is Ada")
    say(operator, "What is my name?")
    roles = [message["role"] for message in fake_openrouter.completions[-1].body["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert reset(operator).status_code == 302
    say(operator, "What is my name?")
    roles = [message["role"] for message in fake_openrouter.completions[-1].body["messages"]]
    assert roles == ["system", "user"]


def test_playground_post_without_csrf_token_stores_nothing(operator, fake_openrouter):
    operator.post("/admin/playground/send/", data={"text": "Forged"})
    assert Message.select().count() == 0
    assert fake_openrouter.completions == []


def test_playground_needs_a_login(client, services):
    assert client.get("/admin/playground/").status_code == 302
    assert client.post("/admin/playground/send/", data={"text": "x"}).status_code == 302
    assert Message.select().count() == 0


# --- the playground's conversation is never reached through Twilio --------------------------------

def conversation_page_token(client, conversation) -> str:
    return csrf_token(client, f"/admin/conversation/details/?id={conversation.id}")


@pytest.mark.postgres
def test_the_playground_conversation_cannot_be_taken_over_or_replied_to(operator, run_jobs, fake_twilio):
    say(operator, "Hello there")
    conversation = Conversation.get()
    page = operator.get(f"/admin/conversation/details/?id={conversation.id}").get_data(as_text=True)
    assert 'id="not-on-whatsapp"' in page and 'id="take-over"' not in page
    token = conversation_page_token(operator, conversation)

    taken = operator.post(f"/admin/conversation/takeover/{conversation.id}/", data={"csrf_token": token},
                          follow_redirects=True).get_data(as_text=True)
    replied = operator.post(f"/admin/conversation/reply/{conversation.id}/",
                            data={"csrf_token": token, "reply": "From a person"}, follow_redirects=True)

    assert "Not taken over: this is a playground or console conversation" in taken
    assert "Not sent: this is a playground or console conversation" in replied.get_data(as_text=True)
    assert Conversation.get().paused_at is None
    assert not Message.select().where(Message.operator.is_null(False)).exists()
    run_jobs()
    assert fake_twilio.requests == []


@pytest.mark.postgres
def test_a_playground_reply_that_sneaked_in_is_neither_retried_nor_sent(operator, services, fake_twilio):
    say(operator, "Hello there")
    conversation = Conversation.get()
    # As an earlier release let an operator store it: a reply by hand, in the playground, never delivered.
    sneaked = Message.create(conversation=conversation, role="assistant", content="By hand", status="send_failed",
                             operator="ops")
    token = csrf_token(operator, "/admin/problems/")
    assert f'id="problem-{sneaked.id}"' not in operator.get("/admin/problems/").get_data(as_text=True)

    retried = operator.post(f"/admin/problems/retry/{sneaked.id}/", data={"csrf_token": token},
                            follow_redirects=True).get_data(as_text=True)
    assert "Not retried: this is a playground or console conversation" in retried
    assert tasks.send_operator_reply(sneaked.id) == {"not_whatsapp": True}
    question = Message.get(Message.role == "user")
    Message.update(status="pending").where(Message.id == question.id).execute()
    assert tasks.process_message(question.id) == {"not_whatsapp": True}
    assert Message.get_by_id(sneaked.id).status == "send_failed"
    assert fake_twilio.requests == []


def test_an_operator_tries_the_tools_in_the_playground_without_follow_ups_or_handoffs(operator, services,
                                                                                     fake_openrouter, fake_twilio):
    from chatbot.outbound import OutboundGuard
    from chatbot.tools.definitions import ToolDefinition, save
    from tests.test_tools import ORDER_PARAMETERS, FakeBusinessAPI, calls

    api = FakeBusinessAPI().start()
    try:
        save(ToolDefinition(name="order_status", description="Where an order is.",
                            url_template=api.url + "/orders/{order_id}", parameters=ORDER_PARAMETERS),
             services.cipher, OutboundGuard(allow_private=True))
        fake_openrouter.tool_models = {"openai/gpt-4o-mini"}
        fake_openrouter.then(calls(("order_status", {"order_id": "A-7"})))
        say(operator, "Where is A-7?")
        assert [request.path for request in api.requests] == ["/orders/A-7"]
    finally:
        api.stop()
    offered = [tool["function"]["name"] for tool in fake_openrouter.completions[0].body["tools"]]
    assert offered == ["order_status"]
    assert "shipped" in operator.get("/admin/playground/").get_data(as_text=True)
    assert fake_twilio.requests == []
