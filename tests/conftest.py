"""Real Redis, real SQLite files and Postgres, loopback fakes for OpenRouter and Twilio."""
from __future__ import annotations

import atexit
import functools
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest
from cryptography.fernet import Fernet
from redis import Redis

from chatbot import create_app
from chatbot.jobs import tasks
from chatbot.models import db, migrations
from chatbot.services import build_services
from config import Config
from tests import support
from tests.fakes import FakeOpenRouter, FakeTwilio
from tests.support import ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, BurstWorker, RedisServer, inbound_form, sign
from tests.support import free_port as free_port

PROJECT_DIR = Path(__file__).resolve().parent.parent
PUBLIC_BASE_URL = "https://bot.example.com"
WEBHOOK_URL = PUBLIC_BASE_URL + "/whatsapp/webhook"
FAST_RETRIES = {"backoff": 0.01}


def pytest_sessionstart(session):
    """Install, or name, the programs the suite needs before any test runs (scripts/test_prerequisites.py)."""
    if session.config.option.collectonly:
        return
    # Uncaptured, so an apt-get install shows its progress and a refusal its reasons.
    with session.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        check = subprocess.run([sys.executable, str(PROJECT_DIR / "scripts" / "test_prerequisites.py")])
    if check.returncode != 0:
        pytest.exit("the test suite's prerequisites are missing (see above)", returncode=check.returncode)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A Redis server of this test run's own (or TEST_REDIS_URL), so parallel runs never collide."""
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@functools.cache
def postgres_admin_url() -> str:
    """TEST_POSTGRES_URL, else the local server when it answers, else a private cluster for this run."""
    running = support.running_postgres_url()
    if running:
        return running
    cluster = support.PrivatePostgres().start()
    # At exit rather than in a fixture: tests open throwaway databases outside fixtures too.
    atexit.register(cluster.stop)
    return cluster.admin_url


@contextmanager
def throwaway_postgres_database(prefix: str):
    """Create an empty Postgres database; yield its URL; drop it (closing our connections first)."""
    with support.throwaway_postgres_database(postgres_admin_url(), prefix) as url:
        try:
            yield url
        finally:
            if db.database.obj is not None and not db.database.is_closed():
                db.database.close()


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh Postgres database for this test run."""
    with throwaway_postgres_database("chatbot_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """Each test that takes this runs once on an SQLite file and once on Postgres."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'chatbot.sqlite3'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    connection = psycopg2.connect(url)
    connection.autocommit = True
    connection.cursor().execute(
        "DO $$ BEGIN IF to_regclass('message') IS NOT NULL THEN "
        "TRUNCATE message, conversation, webhook_log, ai_configuration, admin_user, reply_part, opt_out, "
        "access_entry, setting, whatsapp_number RESTART IDENTITY CASCADE; "
        "END IF; END $$"
    )
    connection.close()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request, tmp_path):
    """A database with nothing in it yet (no schema), once SQLite and once Postgres: for migrations."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    with throwaway_postgres_database("chatbot_empty") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'chatbot.sqlite3'}"


@pytest.fixture
def redis(redis_url):
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def fake_openrouter():
    server = FakeOpenRouter().start()
    yield server
    server.stop()


@pytest.fixture
def fake_twilio():
    server = FakeTwilio().start()
    yield server
    server.stop()


@pytest.fixture
def env(fake_openrouter, fake_twilio, redis_url):
    """The environment variables of a fully configured deployment, aimed at the fakes."""
    return {
        "SECRET_KEY": "test-secret",
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "REDIS_URL": redis_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_WHATSAPP_NUMBER": BOT_NUMBER,
        "TWILIO_API_BASE_URL": fake_twilio.url,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "OPENROUTER_API_KEY": "sk-or-v1-test-key",
        "OPENROUTER_BASE_URL": fake_openrouter.url + "/api/v1",
        "AI_MODEL": "openai/gpt-4o-mini",
        "AI_SYSTEM_PROMPT": "You are a test assistant.",
        "MAX_CONTEXT_MESSAGES": "10",
    }


@pytest.fixture
def config(env, database_url, redis):
    return Config.from_mapping({**env, "DATABASE_URL": database_url})


@pytest.fixture
def services(config):
    built = build_services(config, ai_options=FAST_RETRIES, whatsapp_options=FAST_RETRIES)
    migrations.upgrade()
    tasks.install(built)
    yield built
    tasks.install(None)
    if not db.database.is_closed():
        db.database.close()


@pytest.fixture
def app(config, services):
    return create_app(services=services)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def app_with(config, services):
    """Build an app whose settings differ from the test deployment's, e.g. aimed at a service that is down."""

    def build(**changes):
        changed = build_services(config.replace(**changes), ai_options=FAST_RETRIES, whatsapp_options=FAST_RETRIES)
        return create_app(services=changed)

    return build


@pytest.fixture
def cli(app):
    """Invoke a flask command of the test app: cli("check-config", "--offline", input=...)."""
    runner = app.test_cli_runner()
    return lambda *args, **kwargs: runner.invoke(args=list(args), **kwargs)


class WebhookPoster:
    """Posts signed webhooks to the test client."""

    def __init__(self, client):
        self.client = client

    def __call__(self, form: dict, signature: str | None = "sign", url: str = WEBHOOK_URL, **kwargs):
        headers = kwargs.pop("headers", {})
        if signature == "sign":
            signature = sign(url, form)
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        return self.client.post("/whatsapp/webhook", data=form, headers=headers, **kwargs)

    def message(self, body: str, sender: str = "whatsapp:+15550001111", **extra):
        form = inbound_form(body, sender, **extra)
        response = self(form)
        assert response.status_code == 200, response.get_data(as_text=True)
        return form


@pytest.fixture
def post_webhook(client):
    return WebhookPoster(client)


@pytest.fixture
def run_jobs(services):
    """Run every queued job to the end with a real (non-forking) RQ worker."""
    from worker import build_worker

    def run():
        worker = build_worker(services, worker_class=BurstWorker)
        worker.work(burst=True, with_scheduler=False)

    return run


def run_flask(env: dict, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run `python -m flask --app wsgi ...` in the project with `env`, as an operator would."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=PROJECT_DIR,
                          env={**os.environ, **env}, input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture
def private_redis(tmp_path):
    """A Redis server of this test's own, which the test may stop and start."""
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


class Workers:
    """`python worker.py` processes, each in its own process group so a kill takes the work horse too."""

    def __init__(self, env: dict, log_dir):
        self.env = env
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []

    def start(self, **extra_env) -> subprocess.Popen:
        log = (self.log_dir / f"worker{len(self.processes)}.log").open("w")
        process = subprocess.Popen([sys.executable, "worker.py"], cwd=PROJECT_DIR,
                                   env={**self.env, **extra_env}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def workers(env, config, tmp_path):
    """Start `python worker.py` processes on the test deployment; all are stopped afterwards."""
    pool = Workers({**os.environ, **env, "DATABASE_URL": config.database_url, "PYTHONUNBUFFERED": "1"}, tmp_path)
    yield pool
    pool.stop_all()
