"""Every flask command behind one boundary: an unreachable database or Redis is one clear line and exit 1."""
from __future__ import annotations

import pytest

from chatbot.models import Message, Role, Status
from tests.conftest import free_port, run_flask
from tests.support import conversation_for

ADA = "whatsapp:+15550001111"
COMMANDS = {
    "create-admin": ["create-admin", "--username", "ops", "--password-stdin"],
    "rotate-key": ["rotate-key"],
    "retry-failed": ["retry-failed"],
    "tools list": ["tools", "list"],
}
# What each command reads from standard input.
STDIN = {"create-admin": "correct horse battery\n"}


def nowhere(scheme: str) -> str:
    """A URL on a local port nothing listens on."""
    return f"{scheme}://127.0.0.1:{free_port()}/0" if scheme == "redis" else \
        f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"


@pytest.mark.parametrize("command", COMMANDS)
def test_database_down_is_named_with_its_fix_and_no_traceback(env, command):
    result = run_flask({**env, "DATABASE_URL": nowhere("postgresql")}, *COMMANDS[command],
                        stdin=STDIN.get(command, ""))

    assert result.returncode == 1, result.stderr
    assert "Error: database:" in result.stderr
    assert "fix: check that the database is up and DATABASE_URL is right" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_retry_failed_with_redis_down_is_named_and_leaves_the_message_for_the_sweeper(env, config, services):
    conversation = conversation_for(ADA)
    failed = Message.create(conversation=conversation, role=Role.USER.value, content="Hello",
                            status=Status.FAILED.value, error="openrouter: timed out")

    result = run_flask({**env, "DATABASE_URL": config.database_url, "REDIS_URL": nowhere("redis")},
                       *COMMANDS["retry-failed"])

    assert result.returncode == 1, result.stderr
    assert "Error: Redis:" in result.stderr and "fix: start Redis, or correct REDIS_URL" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    # Back in line: the scheduler's sweep queues it once Redis is back.
    assert Message.get_by_id(failed.id).status == Status.PENDING.value


@pytest.mark.parametrize("command", ["create-admin", "rotate-key"])
def test_commands_that_need_no_redis_work_with_redis_down(app_with, command):
    app = app_with(redis_url=nowhere("redis"))
    result = app.test_cli_runner().invoke(args=COMMANDS[command], input=STDIN.get(command))
    assert result.exit_code == 0, result.output
