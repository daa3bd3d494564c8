"""docker-entrypoint.sh and the image's health checks, run on this host against real Postgres and Redis."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg2
import pytest
from cryptography.fernet import Fernet

from chatbot.models.migrations import MIGRATIONS
from tests.conftest import PROJECT_DIR, free_port, throwaway_postgres_database
from tests.test_deploy import compose, dockerfile_instructions

ENTRYPOINT = str(PROJECT_DIR / "docker-entrypoint.sh")
COMMAND_RAN = "the command ran"


@pytest.fixture
def empty_postgres_url():
    """A throwaway Postgres database with no tables, dropped afterwards."""
    with throwaway_postgres_database("chatbot_entrypoint") as url:
        yield url


@pytest.fixture
def container_env(redis_url, tmp_path):
    """The environment a container gets: the settings, and this virtualenv's tools first on PATH."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "SECRET_KEY": "entrypoint-test-secret",
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'chatbot.sqlite3'}",
        "REDIS_URL": redis_url,
        # The web process refuses to start without it.
        "PUBLIC_BASE_URL": "https://bot.example.com",
    }


def run_entrypoint(env: dict, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([ENTRYPOINT, *command], env=env, cwd="/", capture_output=True, text=True,
                          timeout=timeout)


def tables(url: str) -> set[str]:
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in cursor.fetchall()}


def test_entrypoint_migrates_then_becomes_the_command(container_env, empty_postgres_url):
    env = {**container_env, "DATABASE_URL": empty_postgres_url}
    process = subprocess.Popen(
        [ENTRYPOINT, "python", "-c", f"import os; print('{COMMAND_RAN} as pid', os.getpid())"],
        env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    migrated = output.index(f"Database schema upgraded from version 0 to {len(MIGRATIONS)}.")
    # exec: the command runs as the entrypoint's own process, so it receives the container's signals.
    assert output.index(f"{COMMAND_RAN} as pid {process.pid}") > migrated
    assert {"schema_version", "conversation", "message", "webhook_log"} <= tables(empty_postgres_url)


def test_skip_migrations_runs_the_command_on_an_unmigrated_database(container_env, empty_postgres_url):
    env = {**container_env, "DATABASE_URL": empty_postgres_url, "SKIP_MIGRATIONS": "1"}
    result = run_entrypoint(env, "python", "-c", f"print('{COMMAND_RAN}')")
    assert result.returncode == 0, result.stdout + result.stderr
    assert COMMAND_RAN in result.stdout and "Database schema" not in result.stdout
    assert tables(empty_postgres_url) == set()


def test_unreachable_database_fails_within_the_bound_with_a_clear_error(container_env):
    url = f"postgresql://chatbot:s3cret-password@127.0.0.1:{free_port()}/chatbot"
    env = {**container_env, "DATABASE_URL": url, "WAIT_TIMEOUT": "1"}
    started = time.monotonic()
    result = run_entrypoint(env, "python", "-c", f"print('{COMMAND_RAN}')", timeout=30)
    assert time.monotonic() - started < 1 + 5
    assert result.returncode == 1
    assert "the database at postgresql://chatbot:***@127.0.0.1" in result.stderr
    assert "did not answer within 1s" in result.stderr and "Check DATABASE_URL" in result.stderr
    assert "s3cret-password" not in result.stdout + result.stderr
    assert COMMAND_RAN not in result.stdout


def test_unreachable_redis_fails_within_the_bound_with_a_clear_error(container_env):
    env = {**container_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "WAIT_TIMEOUT": "1"}
    started = time.monotonic()
    result = run_entrypoint(env, "python", "-c", f"print('{COMMAND_RAN}')", timeout=30)
    assert time.monotonic() - started < 1 + 5
    assert result.returncode == 1
    assert "Redis at redis://127.0.0.1" in result.stderr and "Check REDIS_URL" in result.stderr
    assert COMMAND_RAN not in result.stdout


def test_invalid_settings_stop_the_entrypoint_before_it_waits(container_env):
    env = {**container_env, "FIELD_ENCRYPTION_KEY": "not-a-key"}
    result = run_entrypoint(env, "python", "-c", f"print('{COMMAND_RAN}')", timeout=30)
    assert result.returncode == 2
    assert "FIELD_ENCRYPTION_KEY key #1 is not a valid Fernet key" in result.stderr
    assert COMMAND_RAN not in result.stdout


def healthcheck_command(test: list[str]) -> list[str]:
    assert test[0] == "CMD"
    return test[1:]


def run_check(command: list[str], env: dict) -> int:
    # Containers run their checks in the image's WORKDIR, where the code lives.
    return subprocess.run(command, env=env, cwd=PROJECT_DIR, capture_output=True, timeout=30).returncode


def wait_until(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"did not stop on SIGTERM:\n{output}")
    return output


def test_default_command_serves_health_and_logs_no_query_strings(container_env):
    port = free_port()
    env = {**container_env, "PORT": str(port), "WEB_CONCURRENCY": "1"}
    dockerfile = dict(dockerfile_instructions())
    image_check = json.loads(dockerfile["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert run_check(image_check, env) != 0  # nothing listens yet
    web = subprocess.Popen([ENTRYPOINT], env=env, cwd="/", stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: run_check(image_check, env) == 0), "web never became healthy"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health?token=s3cret-query", timeout=5) as answer:
            assert json.load(answer) == {"status": "ok", "database": True, "redis": True, "sqlite_writer_turn": True}
    finally:
        output = stop(web)
    assert web.returncode == 0, output
    assert '"GET /health HTTP/1.1" 200' in output
    assert "s3cret-query" not in output


def test_worker_and_scheduler_roles_start_and_pass_their_compose_healthchecks(container_env, redis):
    services = compose()["services"]
    env = {**container_env, "SKIP_MIGRATIONS": "1"}
    checks = {name: healthcheck_command(services[name]["healthcheck"]["test"]) for name in ("worker", "scheduler")}
    assert [name for name, check in checks.items() if run_check(check, env) == 0] == []
    processes = {
        name: subprocess.Popen([ENTRYPOINT, *services[name]["command"]], env=env, cwd="/",
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name in checks
    }
    try:
        for name, check in checks.items():
            assert wait_until(lambda check=check: run_check(check, env) == 0), f"{name} never became healthy"
    finally:
        outputs = {name: stop(process) for name, process in processes.items()}
    assert {name: process.returncode for name, process in processes.items()} == {"worker": 0, "scheduler": 0}, outputs
    assert [name for name, check in checks.items() if run_check(check, env) == 0] == []
