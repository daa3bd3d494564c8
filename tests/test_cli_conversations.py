"""flask chat, flask conversations and flask cleanup, on SQLite and Postgres."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from chatbot.jobs import tasks
from chatbot.models import Conversation, Message, Role, Status, WebhookLog, utcnow
from tests.conftest import PROJECT_DIR, free_port, run_flask
from tests.fakes import FakeOpenRouter
from tests.support import conversation_for

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"
CONSOLE = "console:local"


@pytest.fixture
def answer(services):
    """Answer every waiting message as the worker would (without RQ's start-up time)."""

    def run():
        waiting = Message.select().where(Message.role == Role.USER.value, Message.status == Status.PENDING.value)
        for message in list(waiting.order_by(Message.id)):
            services.processor.process(message.id)

    return run


# --- chat -----------------------------------------------------------------------------------------

def test_piped_chat_answers_each_line_with_the_previous_in_context(env, config, services, fake_openrouter,
                                                                   fake_twilio):
    result = run_flask({**env, "DATABASE_URL": config.database_url}, "chat",
                       stdin="What is the capital of France?\n\nAnd of Italy?\n")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Answer to: What is the capital of France?", "Answer to: And of Italy?"]
    assert fake_openrouter.completions[-1].body["messages"] == [
        {"role": "system", "content": "You are a test assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Answer to: What is the capital of France?"},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert fake_twilio.requests == []
    conversation = Conversation.get(Conversation.user_phone == CONSOLE)
    stored = [(m.role, m.status) for m in conversation.messages.order_by(Message.id)]
    assert stored == [("user", "answered"), ("assistant", "sent")] * 2


def test_interactive_chat_prompts_and_ends_on_ctrl_d(env, config, services, fake_openrouter):
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "chat"], cwd=PROJECT_DIR,
                               env={**os.environ, **env, "DATABASE_URL": config.database_url},
                               stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    try:
        seen = read_until(controller, b"you> ")
        assert b"Chatting as console:local with openai/gpt-4o-mini" in seen
        os.write(controller, b"Hello there\n")
        assert b"bot> Answer to: Hello there" in read_until(controller, b"you> ")
        os.write(controller, b"\x04")
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)


def read_until(fd: int, marker: bytes, timeout: float = 15.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, seen
        if select.select([fd], [], [], 0.1)[0]:
            seen += os.read(fd, 4096)
    return seen


@pytest.mark.postgres
def test_chat_continues_a_whatsapp_users_conversation_without_sending(cli, post_webhook, answer, fake_openrouter,
                                                                     fake_twilio):
    post_webhook.message("My name is Ada", sender=ADA)
    answer()

    result = cli("chat", "--phone", "+15550001111", input="What is my name?\n")

    assert result.exit_code == 0, result.output
    assert "Answer to: What is my name?" in result.stdout
    assert [m["content"] for m in fake_openrouter.completions[-1].body["messages"][1:]] == [
        "My name is Ada", "Answer to: My name is Ada", "What is my name?"]
    assert len(fake_twilio.sent) == 1


def test_chat_prints_a_long_reply_in_whatsapp_sized_parts(cli, services, fake_openrouter):
    fake_openrouter.reply_for = lambda messages: "\n\n".join(["word " * 300] * 3)
    result = cli("chat", input="Tell me a lot\n")
    assert result.exit_code == 0
    assert "(1/3)" in result.stdout and "(3/3)" in result.stdout


def test_chat_trims_a_long_line_as_the_webhook_does(app_with, fake_openrouter):
    app = app_with(max_inbound_chars=10)
    result = app.test_cli_runner().invoke(args=["chat"], input="x" * 25 + "\n")
    assert result.exit_code == 0, result.output
    assert fake_openrouter.completions[0].body["messages"][-1]["content"] == "x" * 10
    assert "only read the first 10 characters" in result.stdout


def test_chat_shows_the_fallback_and_why_when_the_ai_fails(cli, services, fake_openrouter):
    fake_openrouter.then(FakeOpenRouter.error(401, "No auth credentials found"))

    result = cli("chat", input="Hello\n")

    assert result.exit_code == 1
    assert "Sorry, I can't answer right now" in result.stdout
    assert "✗ The AI did not answer: openrouter: No auth credentials found" in result.stderr


def test_chat_with_redis_down_fails_and_leaves_nothing_for_the_sweeper(app_with, services):
    app = app_with(redis_url=f"redis://127.0.0.1:{free_port()}/0")

    result = app.test_cli_runner().invoke(args=["chat"], input="Hello\n")

    assert result.exit_code == 1
    assert "Redis:" in result.output and "fix: start Redis, or correct REDIS_URL" in result.output
    assert Message.get(Message.content == "Hello").status == Status.FAILED.value


def test_chat_refuses_a_conversation_with_messages_waiting_for_the_worker(cli, post_webhook, fake_openrouter):
    post_webhook.message("Still waiting", sender=ADA)
    result = cli("chat", "--phone", ADA, input="Hello\n")
    assert result.exit_code == 1
    assert "has 1 message(s) waiting for the worker" in result.output
    assert fake_openrouter.requests == []


def test_background_jobs_never_send_a_console_line_through_twilio(cli, services, fake_openrouter, fake_twilio):
    fake_openrouter.then(FakeOpenRouter.error(401, "No auth credentials found"))
    cli("chat", "--phone", ADA, input="Typed by the operator\n")
    question = Message.get(Message.content == "Typed by the operator")
    assert question.status == Status.FAILED.value
    stale = utcnow() - timedelta(minutes=5)
    Message.update(created_at=stale).execute()
    Message.update(status=Status.UNSENT.value).where(Message.reply_to == question).execute()

    assert cli("retry-failed").output.startswith("Queued 0 failed message(s)")
    assert tasks.sweep_pending_messages() == 0
    assert Message.get_by_id(question.id).status == Status.FAILED.value
    assert fake_twilio.requests == []


@pytest.mark.parametrize("phone", ["15550001111", "whatsapp:15550001111", "console:", "telegram:+15550001111"])
def test_chat_with_a_malformed_phone_is_bad_usage(cli, services, phone):
    assert cli("chat", "--phone", phone, input="Hello\n").exit_code == 2


# --- conversations --------------------------------------------------------------------------------

@pytest.fixture
def two_senders(post_webhook, answer):
    post_webhook.message("Ada's first", sender=ADA)
    post_webhook.message("Bob's first", sender=BOB)
    answer()
    post_webhook.message("Ada's second", sender=ADA)
    answer()


@pytest.mark.postgres
def test_list_masks_numbers_and_counts_messages(cli, two_senders):
    result = cli("conversations", "list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("whatsapp:+1555•••1111  active  4 message(s)")
    assert lines[1].startswith("whatsapp:+1555•••2222  active  2 message(s)")
    assert ADA not in result.output
    assert ADA in cli("conversations", "list", "--show-numbers").output


@pytest.mark.postgres
def test_list_shows_ended_conversations_only_with_all(cli, two_senders):
    cli("conversations", "reset", BOB)
    assert "2222" not in cli("conversations", "list").output
    assert "whatsapp:+1555•••2222  ended" in cli("conversations", "list", "--all").output


def test_list_without_conversations(cli, services):
    result = cli("conversations", "list")
    assert result.exit_code == 0
    assert "No active conversations" in result.output


@pytest.mark.postgres
def test_show_prints_the_transcript(cli, two_senders):
    result = cli("conversations", "show", ADA)

    assert result.exit_code == 0
    assert "Conversation with whatsapp:+1555•••1111 (Ada): active" in result.output
    transcript = [line.split("] ", 1)[1] for line in result.output.splitlines() if line.startswith("[")]
    assert transcript == [
        "user (answered): Ada's first",
        "assistant (sent, openai/gpt-4o-mini, 19 tokens, " + transcript[1].split(", 19 tokens, ")[1],
        "user (answered): Ada's second",
        "assistant (sent, openai/gpt-4o-mini, 19 tokens, " + transcript[3].split(", 19 tokens, ")[1],
    ]
    assert transcript[1].endswith("Answer to: Ada's first")
    assert "Bob" not in result.output


@pytest.mark.postgres
def test_show_limits_to_the_last_messages(cli, two_senders):
    result = cli("conversations", "show", ADA, "--limit", "1")
    assert "3 earlier message(s) not shown" in result.output
    assert result.output.splitlines()[-1].endswith("Answer to: Ada's second")


def test_show_prints_a_failed_messages_error(cli, post_webhook, answer, fake_openrouter):
    fake_openrouter.then(FakeOpenRouter.error(402, "Insufficient credits"))
    post_webhook.message("Hello", sender=ADA)
    answer()
    assert "    error: openrouter: Insufficient credits" in cli("conversations", "show", ADA).output


@pytest.mark.parametrize("command", ["show", "reset", "delete"])
def test_unknown_phone_fails_and_malformed_phone_is_bad_usage(cli, services, command):
    unknown = cli("conversations", command, ADA, *(["--yes"] if command == "delete" else []))
    assert unknown.exit_code == 1
    assert "no conversation with whatsapp:+1555•••1111" in unknown.output
    assert cli("conversations", command, "ada").exit_code == 2


@pytest.mark.postgres
def test_reset_starts_a_fresh_conversation_without_the_old_context(cli, services, two_senders, post_webhook,
                                                                    answer, fake_openrouter):
    old = Conversation.get(Conversation.user_phone == ADA)

    result = cli("conversations", "reset", ADA)

    assert result.exit_code == 0
    assert "(4 message(s) kept)" in result.output
    assert not services.redis.exists(services.context.key(old.id))
    assert Conversation.get_by_id(old.id).is_active is False
    post_webhook.message("Who am I?", sender=ADA)
    answer()
    assert fake_openrouter.completions[-1].body["messages"][1:] == [{"role": "user", "content": "Who am I?"}]
    assert Message.select().where(Message.conversation == old).count() == 4


def test_reset_without_an_active_conversation_changes_nothing(cli, two_senders):
    cli("conversations", "reset", ADA)
    result = cli("conversations", "reset", ADA)
    assert result.exit_code == 0
    assert "nothing to reset" in result.output


@pytest.mark.postgres
def test_delete_removes_everything_of_that_phone_only(cli, services, two_senders):
    ada_conversation = Conversation.get(Conversation.user_phone == ADA)
    bob_messages = Message.select().join(Conversation).where(Conversation.user_phone == BOB).count()

    result = cli("conversations", "delete", ADA, "--yes")

    assert result.exit_code == 0, result.output
    assert "Deleted 1 conversation(s), 4 message(s) and 2 webhook log entries" in result.output
    assert Conversation.select().where(Conversation.user_phone == ADA).count() == 0
    assert Message.select().count() == bob_messages
    assert WebhookLog.select().count() == 1
    assert "15550001111" not in "".join(log.body for log in WebhookLog.select())
    assert not services.redis.exists(services.context.key(ada_conversation.id))


def test_delete_asks_first(cli, two_senders):
    result = cli("conversations", "delete", ADA, input="n\n")
    assert result.exit_code == 1
    assert Conversation.select().where(Conversation.user_phone == ADA).count() == 1


@pytest.mark.postgres
def test_delete_with_redis_down_deletes_nothing(app_with, two_senders):
    app = app_with(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    result = app.test_cli_runner().invoke(args=["conversations", "delete", ADA, "--yes"])
    assert result.exit_code == 1
    assert "fix: start Redis" in result.output
    assert Message.select().join(Conversation).where(Conversation.user_phone == ADA).count() == 4


# --- cleanup and init-db --------------------------------------------------------------------------

def test_cleanup_with_redis_down_fails_with_the_fix(app_with, services):
    idle = conversation_for(ADA)
    Conversation.update(updated_at=utcnow() - timedelta(days=30)).where(Conversation.id == idle.id).execute()
    app = app_with(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    result = app.test_cli_runner().invoke(args=["cleanup"])
    assert result.exit_code == 1
    assert "fix: start Redis, or correct REDIS_URL" in result.output


def test_init_db_with_the_database_down_fails_with_the_fix(app_with):
    app = app_with(database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 1
    assert "database:" in result.output and "flask init-db" in result.output
