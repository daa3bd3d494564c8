"""Every webhook request leaves a trace; operator alerts never hold up a request, even with Redis down."""
from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time

import psycopg2
import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatbot import create_app
from chatbot.alerts import ALERT_FLUSH_ON_EXIT, ErrorHandler
from chatbot.models import Message, WebhookLog, migrations
from chatbot.services import build_services
from tests.conftest import PROJECT_DIR, WebhookPoster, postgres_admin_url, throwaway_postgres_database, wait_for
from tests.fakes import FakeServer, Scripted
from tests.support import free_port, inbound_form

ADA = "whatsapp:+15550001111"
SLOW_ALERT_SECONDS = 3.0


class SlowAlertReceiver(FakeServer):
    """A Slack-compatible incoming webhook that takes its time over every post."""

    def __init__(self, delay: float = SLOW_ALERT_SECONDS):
        super().__init__()
        self.delay = delay

    @property
    def texts(self) -> list[str]:
        return [request.body["text"] for request in self.requests]

    def default_answer(self, request) -> Scripted:
        return Scripted(200, "ok", delay=self.delay)


@pytest.fixture
def alert_receiver():
    server = SlowAlertReceiver().start()
    yield server
    server.stop()


def unlogged_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno == logging.WARNING and record.getMessage().startswith("webhook not logged")]


# --- the webhook log ------------------------------------------------------------------------------

def test_oversized_webhook_leaves_a_too_large_row_without_its_body(post_webhook):
    response = post_webhook(inbound_form("x" * 70_000, sender=ADA))
    assert response.status_code == 413
    row = WebhookLog.get()
    assert (row.verdict, row.response_status, row.body, row.message_sid) == ("too_large", 413, "", None)
    assert row.method == "POST" and row.path == "/whatsapp/webhook"
    assert row.headers["X-Twilio-Signature"] == "[redacted]"
    assert Message.select().count() == 0


def test_plain_http_webhook_redirected_to_https_leaves_a_row(services):
    forced = dataclasses.replace(services, config=services.config.replace(force_https=True))
    client = create_app(services=forced).test_client()
    response = client.post("/whatsapp/webhook", data=inbound_form("over http", sender=ADA))
    assert response.status_code == 308
    assert client.get("/health").status_code == 200  # exempt, and not the webhook: no row
    row = WebhookLog.get()
    assert (row.verdict, row.response_status, row.body) == ("redirected_to_https", 308, "")
    assert row.path == "/whatsapp/webhook" and row.signature_valid is None


@pytest.fixture
def database_gone(config, redis):
    """An app whose Postgres database worked at start and then was dropped, connections and all."""
    with throwaway_postgres_database("chatbot_gone") as url:
        services = build_services(config.replace(database_url=url))
        migrations.upgrade()
        app = create_app(services=services)
        assert app.test_client().get("/health").status_code == 200
        yield app, url


def drop_database(url: str) -> None:
    """Drop the database under the running app: its pooled connections are terminated too."""
    admin = psycopg2.connect(postgres_admin_url())
    admin.autocommit = True
    admin.cursor().execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
    admin.close()


def test_database_down_answers_503_and_the_app_log_has_the_audit_fields(database_gone, caplog):
    app, url = database_gone
    drop_database(url)
    form = inbound_form("a private question", sender=ADA)
    with caplog.at_level(logging.WARNING):
        response = WebhookPoster(app.test_client())(form)
    assert response.status_code == 503
    [line] = unlogged_lines(caplog)
    assert (f"method=POST path=/whatsapp/webhook remote_addr=127.0.0.1 status=503 verdict=database_unavailable "
            f"message_sid={form['MessageSid']} processing_ms=") in line
    assert "reason=database unavailable" in line
    assert ADA.split(":")[1] not in caplog.text and "a private question" not in caplog.text


def test_refusals_with_the_database_down_are_in_the_app_log(database_gone, caplog):
    app, url = database_gone
    drop_database(url)
    post = WebhookPoster(app.test_client())
    with caplog.at_level(logging.WARNING):
        assert post(inbound_form("x" * 70_000, sender=ADA)).status_code == 413
        assert post(inbound_form(sender=ADA), signature="forged").status_code == 403
    lines = unlogged_lines(caplog)
    assert [line.split(" verdict=")[1].split()[0] for line in lines] == ["too_large", "bad_signature"]
    assert all("path=/whatsapp/webhook" in line and "status=" in line for line in lines)
    assert ADA.split(":")[1] not in caplog.text


# --- operator alerts ------------------------------------------------------------------------------

def test_redis_down_alerts_once_and_never_holds_up_the_webhook(app_with, alert_receiver):
    app = app_with(redis_url=f"redis://127.0.0.1:{free_port()}/0", alert_webhook_url=alert_receiver.url)
    post = WebhookPoster(app.test_client())
    for _ in range(5):
        started = time.perf_counter()
        response = post(inbound_form("while redis is down", sender=ADA))
        assert response.status_code == 200
        assert time.perf_counter() - started < 1.0
    assert Message.select().count() == 5  # stored; the sweeper queues them once Redis is back
    errors = app.extensions["chatbot"].errors
    assert errors.flush(SLOW_ALERT_SECONDS + 5)
    assert len(alert_receiver.texts) == 1 and alert_receiver.texts[0].startswith("[WhatsApp assistant] webhook")


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_without_redis_alerts_are_limited_in_memory_per_type_per_interval(caplog):
    clock = Clock()
    # Refused at once: redis-py's default retries would spend seconds on each call to a dead port.
    handler = ErrorHandler(Redis(port=free_port(), retry=Retry(NoBackoff(), 0)), clock=clock)
    assert handler.send_admin_alert("system:X", "first") is True
    assert handler.send_admin_alert("system:X", "again") is False
    assert handler.send_admin_alert("system:Y", "other type") is True
    clock.now += 3601
    assert handler.send_admin_alert("system:X", "an hour later") is True
    assert caplog.text.count("ALERT system:X") == 2


def test_a_full_alert_queue_drops_and_counts_without_blocking(redis, alert_receiver, caplog):
    handler = ErrorHandler(redis, alert_receiver.url, queue_size=1)
    handler.send_admin_alert("system:A", "in flight")
    assert wait_for(lambda: len(alert_receiver.requests) == 1, timeout=5)
    started = time.perf_counter()
    handler.send_admin_alert("system:B", "queued")
    handler.send_admin_alert("system:C", "dropped")
    assert time.perf_counter() - started < 0.5
    assert handler.dropped == 1
    assert "ALERT system:C" in caplog.text and "alert dropped" in caplog.text
    assert handler.flush(2 * SLOW_ALERT_SECONDS + 5)
    assert [text.split()[-1] for text in alert_receiver.texts] == ["flight", "queued"]


def test_a_process_exits_promptly_with_an_alert_still_being_posted(redis_url, redis):
    receiver = SlowAlertReceiver(delay=30).start()
    script = ("import sys\nfrom redis import Redis\nfrom chatbot.alerts import ErrorHandler\n"
              "ErrorHandler(Redis.from_url(sys.argv[1]), sys.argv[2]).send_admin_alert('system:Exit', 'bye')\n")
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", script, redis_url, receiver.url], cwd=PROJECT_DIR, check=True,
                       timeout=30)
        # It waits ALERT_FLUSH_ON_EXIT for the post, not the receiver's 30 s (the margin is for a busy machine).
        assert time.perf_counter() - started < ALERT_FLUSH_ON_EXIT + 13
        assert len(receiver.requests) == 1  # it was on its way
    finally:
        receiver.stop()
