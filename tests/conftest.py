"""Real Redis, real SQLite files and Postgres, loopback fakes for OpenRouter and Twilio."""
from __future__ import annotations

import atexit
import functools
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import psycopg2
import pytest
from cryptography.fernet import Fernet
from flask import Flask
from jinja2 import BytecodeCache
from redis import Redis
from rq import Retry
from rq.job import Job
from werkzeug.security import generate_password_hash

from chatbot import create_app
from chatbot.jobs import queueing, tasks
from chatbot.models import AdminUser, db, migrations
from chatbot.services import build_services
from config import Config
from tests import support
from tests.fakes import FakeOpenRouter, FakeTwilio
from tests.stages.conftest import make_turn
from tests.support import ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, BurstWorker, RedisServer, inbound_form, sign
from tests.support import free_port as free_port

PROJECT_DIR = Path(__file__).resolve().parent.parent
PUBLIC_BASE_URL = "https://bot.example.com"
WEBHOOK_URL = PUBLIC_BASE_URL + "/whatsapp/webhook"
FAST_RETRIES = {"backoff": 0.01}


class SharedTemplateCode(BytecodeCache):
    """Compiled templates kept for every app of the run. Each create_app() has a Jinja environment of
    its own, which would compile the panel's and Flask-Admin's templates again for each test (a third
    of an admin test's CPU); every app is built alike, so the compiled code is the same."""

    def __init__(self):
        self.code = {}

    def load_bytecode(self, bucket):
        checksum, code = self.code.get(bucket.key, (None, None))
        if checksum == bucket.checksum:
            bucket.code = code

    def dump_bytecode(self, bucket):
        self.code[bucket.key] = (bucket.checksum, bucket.code)


Flask.jinja_options = {**Flask.jinja_options, "bytecode_cache": SharedTemplateCode()}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    """Install, or name, the programs the suite needs before any test runs (scripts/test_prerequisites.py).

    Once: in the process that runs the session, and under pytest-xdist in the controller before it
    starts its workers (tryfirst puts this ahead of xdist's own start), so two workers never run
    apt-get at once."""
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):  # an xdist worker
        return
    # Uncaptured, so an apt-get install shows its progress and a refusal its reasons.
    with session.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        check = subprocess.run([sys.executable, str(PROJECT_DIR / "scripts" / "test_prerequisites.py")])
    if check.returncode != 0:
        pytest.exit("the test suite's prerequisites are missing (see above)", returncode=check.returncode)


@pytest.fixture(scope="session")
def redis_url(request, tmp_path_factory):
    """A Redis server of this test process's own (or TEST_REDIS_URL), so parallel runs never collide.

    Under pytest-xdist each worker starts its own; on TEST_REDIS_URL's server, worker gwN uses
    database N + 1, since every test empties its database."""
    if os.environ.get("TEST_REDIS_URL"):
        url = os.environ["TEST_REDIS_URL"]
        worker = getattr(request.config, "workerinput", {}).get("workerid", "")
        yield urlparse(url)._replace(path=f"/{int(worker[2:]) + 1}").geturl() if worker.startswith("gw") else url
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


# The fixtures that name the test's database: SQLite unless the test is marked `postgres`.
DATABASE_FIXTURES = ("database_url", "empty_database_url")


def pytest_generate_tests(metafunc):
    """Run each test marked `postgres` (itself, or its module) twice: on SQLite and on Postgres."""
    if metafunc.definition.get_closest_marker("postgres") is None:
        return
    for name in DATABASE_FIXTURES:
        if name in metafunc.fixturenames and not parametrized_by_the_test(metafunc, name):
            metafunc.parametrize(name, ["sqlite", "postgres"], indirect=True)


def parametrized_by_the_test(metafunc, name: str) -> bool:
    """Whether the test names the database itself (`@pytest.mark.parametrize(name, [...], indirect=True)`)."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if name in ([part.strip() for part in names.split(",")] if isinstance(names, str) else names):
            return True
    return False


@pytest.fixture
def database_url(request, tmp_path):
    """An SQLite file; for a test marked `postgres`, an SQLite file in one run and Postgres in the other."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield f"sqlite:///{tmp_path / 'chatbot.sqlite3'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    connection = psycopg2.connect(url)
    connection.autocommit = True
    # Every table but the schema's version: a table a later migration adds is emptied too.
    connection.cursor().execute(
        "DO $$ DECLARE tables text; BEGIN "
        "SELECT string_agg(quote_ident(tablename), ', ') INTO tables FROM pg_tables "
        "WHERE schemaname = 'public' AND tablename <> 'schema_version'; "
        "IF tables IS NOT NULL THEN EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY CASCADE'; END IF; "
        "END $$"
    )
    connection.close()


@pytest.fixture
def empty_database_url(request, tmp_path):
    """A database with nothing in it yet (no schema), for migrations: SQLite, and Postgres too when marked."""
    if getattr(request, "param", "sqlite") == "sqlite":
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


@pytest.fixture(scope="session")
def openrouter_server():
    server = FakeOpenRouter().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def twilio_server():
    server = FakeTwilio().start()
    yield server
    server.stop()


@pytest.fixture
def fake_openrouter(openrouter_server):
    """The run's OpenRouter fake as new: nothing asked, default answers, earlier tests' requests refused."""
    openrouter_server.reset()
    return openrouter_server


@pytest.fixture
def fake_twilio(twilio_server):
    """The run's Twilio fake as new: nothing sent, default answers, earlier tests' requests refused."""
    twilio_server.reset()
    return twilio_server


@pytest.fixture
def env(fake_openrouter, fake_twilio, redis_url, tmp_path):
    """The environment variables of a fully configured deployment, aimed at the fakes."""
    return {
        # The processes a test starts count here, not in a folder of the project's instance/.
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
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
        # The fakes listen on 127.0.0.1; tests/test_attacks_media.py turns this off to see it refused.
        "ALLOW_PRIVATE_HOSTS": "1",
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
def stored_turn(services):
    """A user message for a gate to judge (make_turn), stored on the test deployment."""
    return lambda *args, **kwargs: make_turn(*args, stored=True, **kwargs)


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


# --- the admin panel -------------------------------------------------------------------------------

PASSWORD = "correct horse battery"


def csrf_token(client, path: str) -> str:
    """The CSRF token of the form on the page at `path`."""
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
        r'name="csrf_token" value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def log_in(client, username: str = "ops", password: str = PASSWORD):
    """Post the login form as a browser does; return the answer (302 when let in)."""
    token = csrf_token(client, "/admin/login/")
    return client.post("/admin/login/", data={"username": username, "password": password, "csrf_token": token})


@functools.cache
def password_hash() -> str:
    """PASSWORD hashed once for the run, with a cheap PBKDF2: every login of a test checks it, and
    scrypt's tenth of a second a check (by design) adds up over the suite. The login reads either
    kind; what `flask create-admin` stores is tested where that command is."""
    return generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")


@pytest.fixture
def admin_user(services):
    """The admin `ops`, whose password is PASSWORD."""
    return AdminUser.create(username="ops", password_hash=password_hash())


@pytest.fixture
def operator(client, admin_user):
    """The test client, logged in as the admin `ops`."""
    assert log_in(client).status_code == 302
    return client


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


ACTIVE_JOB_STATES = {state.value.encode() for state in queueing.ACTIVE_STATES}


def jobs_done(redis) -> bool:
    """Whether every job RQ holds in `redis` has ended (finished, or failed for good): from then on no
    worker sends anything more, so a doubled reply would have arrived already."""
    return not any(redis.type(key) == b"hash" and redis.hget(key, "status") in ACTIVE_JOB_STATES
                   for key in redis.scan_iter(f"{Job.redis_job_namespace_prefix}*"))


@pytest.fixture
def quick_recovery(monkeypatch) -> dict:
    """Worker settings under which a killed worker's jobs run again within seconds rather than the
    production ~30 s, for `workers.start(**quick_recovery)`: its heartbeats lapse after 4 s, any
    worker looks for abandoned jobs every second, its conversation locks lapse after 3 s, and a job
    queued by the test retries after a second instead of ten."""
    monkeypatch.setattr(queueing, "JOB_RETRY", Retry(max=queueing.JOB_RETRY.max, interval=[1]))
    return {"WORKER_HEARTBEAT_INTERVAL": "1", "WORKER_HEARTBEAT_GRACE": "3", "WORKER_MAINTENANCE_INTERVAL": "1",
            "CONVERSATION_LOCK_TTL": "3"}


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
