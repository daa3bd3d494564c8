"""The admin's playground: chat with the bot as a test user, with any configuration, sending nothing."""
from __future__ import annotations

import re

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
def test_chosen_inactive_configuration_answers_and_nothing_is_sent_or_counted(
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
    assert compute_stats() == before
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
