"""The playground and `flask chat` answer the customers' commands as WhatsApp does, through the same
gates, and never act on a real customer's number for them."""
from __future__ import annotations

import html

from chatbot.models import Conversation, Handoff, Message, OptOut, Status
from tests.test_playground import reset, say

ADA = "whatsapp:+15550001111"


def playground_page(client) -> str:
    return html.unescape(client.get("/admin/playground/").get_data(as_text=True))


def test_help_in_the_playground_is_answered_by_the_command_without_an_ai_call(operator, fake_openrouter,
                                                                             fake_twilio):
    assert say(operator, "/help").status_code == 302

    assert fake_openrouter.completions == []
    page = playground_page(operator)
    assert "I'm WhatsApp AI Assistant, an AI assistant" in page and "Commands: /reset starts over" in page
    assert "no AI call (command help)" in page
    answer = Message.get(Message.role == "assistant")
    assert answer.metadata == {"canned": "command:help"}
    assert fake_twilio.requests == []


def test_stop_in_the_playground_silences_its_test_user_only_until_start(operator, fake_openrouter, post_webhook,
                                                                       run_jobs):
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    asked = len(fake_openrouter.completions)

    say(operator, "STOP")
    say(operator, "Are you there?")
    assert len(fake_openrouter.completions) == asked
    assert "Not answered: this test user\n          wrote STOP" in playground_page(operator)
    assert [(row.user_phone, row.number) for row in OptOut.select()] == [("playground:ops", "")]

    say(operator, "START")
    say(operator, "Back again")
    assert len(fake_openrouter.completions) == asked + 1
    assert OptOut.select().count() == 0


def test_resetting_the_playground_lifts_its_test_users_stop(operator, fake_openrouter):
    say(operator, "STOP")
    reset(operator)
    say(operator, "Hello again")
    assert fake_openrouter.completions[-1].body["messages"][-1]["content"] == "Hello again"


def test_human_in_the_playground_shows_the_holding_message_and_calls_nobody(operator, services, fake_openrouter):
    say(operator, "/human")

    assert fake_openrouter.completions == []
    assert services.config.handoff_message in playground_page(operator)
    assert Handoff.select().count() == 0
    assert Conversation.get().paused_at is None


def test_flask_chat_answers_help_and_stop_as_whatsapp_does(cli, services, fake_openrouter):
    result = cli("chat", input="/help\nSTOP\nStill there?\nSTART\nHello\n")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("I'm WhatsApp AI Assistant") and lines[1].startswith("You won't get any more answers")
    assert "(no answer: console:local wrote STOP to this number; START resumes)" in result.output
    assert lines[2].startswith("Welcome back!") and lines[3] == "Answer to: Hello"
    assert len(fake_openrouter.completions) == 1
    assert fake_openrouter.completions[0].body["messages"][-1] == {"role": "user", "content": "Hello"}


def test_flask_chat_as_a_real_customer_never_opts_them_out_or_erases_them(cli, services, post_webhook, run_jobs,
                                                                          fake_openrouter):
    post_webhook.message("My order is late", sender=ADA)
    run_jobs()

    result = cli("chat", "--phone", ADA, input="STOP\n/forget\nWhat was my question?\n")

    assert result.exit_code == 0, result.output
    assert result.stdout.count("is not carried out here: this chat speaks as whatsapp:+1555•••1111") == 2
    assert "Answer to: What was my question?" in result.stdout
    assert OptOut.select().count() == 0
    assert Message.select().where(Message.content == "My order is late").count() == 1
    question = Message.get(Message.content == "STOP")
    assert question.status == Status.ANSWERED.value and question.metadata["rehearsal"]


def test_flask_chat_as_a_real_customer_does_not_confirm_the_forget_they_asked_for(cli, services, post_webhook,
                                                                                  run_jobs, fake_openrouter):
    post_webhook.message("/forget", sender=ADA)
    run_jobs()

    result = cli("chat", "--phone", ADA, input="YES\n")

    assert "YES is not carried out here" in result.stdout
    assert Message.select().where(Message.content == "/forget").count() == 1


def test_flask_chat_forgets_its_test_user_on_forget_and_yes(cli, services, fake_openrouter):
    result = cli("chat", input="Remember me\n/forget\nYES\n")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "Done: everything I stored about you is erased."
    assert Conversation.select().where(Conversation.user_phone == "console:local").count() == 0
