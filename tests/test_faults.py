"""Faults made real: killed workers, Redis and database lost mid-job, upstream outages, shutdowns."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import pytest

from chatbot.alerts import ErrorHandler
from chatbot.errors import USER_MESSAGES, Category, WhatsAppError
from chatbot.jobs import queueing, tasks
from chatbot.models import Message, Status
from tests.conftest import PROJECT_DIR, jobs_done, wait_for
from tests.fakes import FakeOpenRouter, FakeTwilio
from tests.support import BurstWorker

ADA = "whatsapp:+15550001111"
FALLBACK = USER_MESSAGES[Category.AI]


def sends_of(fake_twilio: FakeTwilio, body: str) -> int:
    return sum(1 for sent in fake_twilio.sent if sent["Body"] == body)


# --- worker death -------------------------------------------------------------

def test_worker_killed_during_the_ai_call_leads_to_one_reply(post_webhook, services, workers, quick_recovery,
                                                            fake_openrouter, fake_twilio):
    calls = []
    fake_openrouter.delay_for = lambda messages: (calls.append(1), 30.0 if len(calls) == 1 else 0.0)[1]
    first = workers.start(**quick_recovery)
    post_webhook.message("Hello", sender=ADA)
    assert wait_for(lambda: fake_openrouter.completions, timeout=20)
    workers.kill(first)
    killed_at = time.monotonic()
    workers.start(**quick_recovery)
    assert wait_for(lambda: fake_twilio.sent, timeout=60), "no reply within 60 s of the kill"
    recovered_in = time.monotonic() - killed_at
    assert wait_for(lambda: jobs_done(services.redis))
    assert [s["Body"] for s in fake_twilio.sent] == ["Answer to: Hello"]
    print(f"recovered in {recovered_in:.1f}s")
    assert recovered_in < 60
    question = Message.get(Message.role == "user")
    assert question.status == Status.ANSWERED.value


def test_worker_killed_between_the_answer_and_the_send_sends_it_once(post_webhook, services, workers, quick_recovery,
                                                                     fake_openrouter, fake_twilio):
    # Twilio fails the first sends, so the worker sits between storing the answer and sending it.
    fake_twilio.then(*[FakeTwilio.error(503, 20500, "Service unavailable")] * 2)
    first = workers.start(**quick_recovery)
    post_webhook.message("Hello", sender=ADA)
    assert wait_for(lambda: fake_twilio.sent, timeout=20)
    assert Message.get(Message.role == "assistant").status == Status.UNSENT.value
    workers.kill(first)
    workers.start(**quick_recovery)
    assert wait_for(lambda: Message.get(Message.role == "assistant").status == Status.SENT.value, timeout=60)
    assert wait_for(lambda: jobs_done(services.redis))
    assert len(fake_openrouter.completions) == 1  # the stored answer was reused
    assert len(fake_twilio.sent) == 3  # two refused attempts, one delivery


def test_restarting_the_worker_mid_burst_loses_nothing(post_webhook, services, workers, fake_openrouter, fake_twilio):
    fake_openrouter.delay_for = lambda messages: 0.2
    first = workers.start()
    texts = [f"burst {n}" for n in range(12)]
    for number, text in enumerate(texts):
        post_webhook.message(text, sender=f"whatsapp:+1555000{number % 4:04d}")
    assert wait_for(lambda: len(fake_twilio.sent) >= 3, timeout=30)
    os.killpg(first.pid, signal.SIGTERM)  # a deploy: warm shutdown finishes the current job
    assert first.wait(30) == 0
    workers.start()
    assert wait_for(lambda: len(fake_twilio.sent) >= len(texts), timeout=60)
    assert wait_for(lambda: jobs_done(services.redis))
    assert sorted(s["Body"] for s in fake_twilio.sent) == sorted(f"Answer to: {t}" for t in texts)


# --- stores lost mid-job ------------------------------------------------------

def test_redis_lost_mid_job_is_recovered_by_the_sweeper(config, env, post_webhook, private_redis, workers,
                                                         fake_openrouter, fake_twilio, monkeypatch, services):
    from chatbot import create_app
    from chatbot.services import build_services
    from tests.conftest import WebhookPoster

    private_redis.start()
    on_private = build_services(config.replace(redis_url=private_redis.url))
    poster = WebhookPoster(create_app(services=on_private).test_client())
    fake_openrouter.delay_for = lambda messages: 2.0
    workers.start(REDIS_URL=private_redis.url)
    poster.message("Hello", sender=ADA)
    assert wait_for(lambda: fake_openrouter.completions, timeout=20)
    private_redis.stop()  # Redis dies (and with it every queued job) while the AI is thinking
    # The answer is stored; its send waits behind the context's Redis write, which fails.
    assert wait_for(lambda: Message.select().where(Message.role == "assistant").exists(), timeout=20)
    assert fake_twilio.sent == []
    private_redis.start()  # back, empty
    workers.start(REDIS_URL=private_redis.url)
    tasks.install(on_private)
    monkeypatch.setattr(tasks, "PENDING_GRACE", timedelta(0))
    assert tasks.sweep_pending_messages() == 1
    assert wait_for(lambda: fake_twilio.sent, timeout=60)
    assert wait_for(lambda: jobs_done(on_private.redis))
    assert [s["Body"] for s in fake_twilio.sent] == ["Answer to: Hello"]
    assert Message.select().where(Message.status.in_([Status.PENDING.value, Status.UNSENT.value])).count() == 0


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_database_connections_cut_mid_job_still_answer_once(post_webhook, services, fake_openrouter,
                                                            fake_twilio, config, monkeypatch):
    from rq import Retry

    from worker import build_worker

    monkeypatch.setattr(queueing, "JOB_RETRY", Retry(max=2, interval=[1]))
    database = config.database_url.rsplit("/", 1)[1]

    def cut_connections(messages):
        admin = psycopg2.connect(config.database_url)
        admin.autocommit = True
        admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
        admin.close()
        return 0.0

    fake_openrouter.delay_for = cut_connections
    post_webhook.message("Hello", sender=ADA)
    build_worker(services, worker_class=BurstWorker).work(burst=True, with_scheduler=False)
    job = services.queue.fetch_job(queueing.job_id_for(Message.get().id))
    # The pool hands the job a fresh connection after the model call, or the job fails cleanly and
    # its retry is booked: never failed for good, never a second answer.
    assert job.get_status() in ("finished", "scheduled")
    fake_openrouter.delay_for = lambda messages: 0.0
    assert wait_for(lambda: (build_worker(services, worker_class=BurstWorker)
                             .work(burst=True, with_scheduler=True), bool(fake_twilio.sent))[1], timeout=20,
                    interval=0.3)
    assert [s["Body"] for s in fake_twilio.sent] == ["Answer to: Hello"]
    assert Message.get(Message.role == "user").status == Status.ANSWERED.value


# --- upstream outages ---------------------------------------------------------

@pytest.mark.postgres
def test_ai_outage_gets_one_apology_then_retry_failed_answers(post_webhook, services, app, fake_openrouter,
                                                             fake_twilio, run_jobs):
    fake_openrouter.then(*[FakeOpenRouter.error(503, "Provider overloaded")] * 3)
    post_webhook.message("Hello", sender=ADA)
    services.processor.process(Message.get().id, final_attempt=True)
    assert [s["Body"] for s in fake_twilio.sent] == [FALLBACK]
    assert Message.get(Message.role == "user").status == Status.FAILED.value
    result = app.test_cli_runner().invoke(args=["retry-failed"])
    assert result.exit_code == 0 and "Queued 1 failed message(s)" in result.output
    run_jobs()
    assert [s["Body"] for s in fake_twilio.sent] == [FALLBACK, "Answer to: Hello"]
    statuses = [m.status for m in Message.select().order_by(Message.id)]
    assert statuses == [Status.ANSWERED.value, Status.SUPERSEDED.value, Status.SENT.value]


@pytest.mark.postgres
def test_twilio_outage_keeps_answers_and_sends_them_in_order_when_it_recovers(post_webhook, services, run_jobs,
                                                                             fake_twilio, monkeypatch):
    monkeypatch.setattr(queueing, "JOB_RETRY", None)  # every run is the last attempt
    fake_twilio.then(*[FakeTwilio.error(500, 20500, "Internal error")] * 8)  # both jobs' attempts
    post_webhook.message("first", sender=ADA)
    post_webhook.message("second", sender=ADA)
    run_jobs()
    answers = list(Message.select().where(Message.role == "assistant"))
    assert [a.status for a in answers] == [Status.UNSENT.value]  # kept; the second waits behind it
    assert "code=20500" in answers[0].error
    monkeypatch.setattr(tasks, "PENDING_GRACE", timedelta(0))
    assert tasks.sweep_pending_messages() == 2
    assert tasks.sweep_pending_messages() == 0  # their jobs are queued now
    run_jobs()
    delivered = [s["Body"] for s in fake_twilio.sent][8:]
    assert delivered == ["Answer to: first", "Answer to: second"]


# --- operator alerts ----------------------------------------------------------

class FakeSlack:
    def __init__(self):
        self.posts = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                import json
                fake.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/XXX"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slack():
    server = FakeSlack()
    yield server
    server.stop()


def test_alerts_go_to_the_webhook_once_per_error_type_per_hour(redis, slack, caplog):
    handler = ErrorHandler(redis, slack.url)
    overloaded = WhatsAppError("Too Many Requests", retryable=True, status=429, code=20429)
    handler.handle(Category.WHATSAPP, overloaded)
    handler.handle(Category.WHATSAPP, overloaded)
    handler.handle(Category.AI, RuntimeError("boom"))
    assert handler.flush(5)  # posted in the background
    assert [post["text"] for post in slack.posts] == [
        "[WhatsApp assistant] whatsapp failure: twilio: Too Many Requests (status=429, code=20429, retryable)",
        "[WhatsApp assistant] ai failure: boom",
    ]
    assert 3590 < redis.ttl("chatbot:alert:whatsapp:WhatsAppError:20429") <= 3600
    assert caplog.text.count("ALERT whatsapp:WhatsAppError:20429") == 1


def test_each_category_has_its_user_message_and_severity(redis, caplog):
    handler = ErrorHandler(redis)
    assert handler.user_message(Category.AI) == FALLBACK
    assert handler.user_message(Category.SYSTEM).startswith("Sorry")
    assert handler.user_message(Category.WHATSAPP) == ""
    handler.handle(Category.SYSTEM, RuntimeError("database down"))
    handler.handle(Category.WEBHOOK, RuntimeError("bad form"))
    levels = {record.getMessage().split(" failure")[0]: record.levelname for record in caplog.records
              if " failure " in record.getMessage()}
    assert levels == {"system": "CRITICAL", "webhook": "WARNING"}


def test_unreachable_alert_webhook_is_logged_not_raised(redis, caplog):
    handler = ErrorHandler(redis, "http://127.0.0.1:9/hook", timeout=0.5)
    assert handler.send_admin_alert("system:X", "down") is True
    assert handler.flush(5)
    assert "alert webhook unreachable" in caplog.text


def test_ai_failure_in_the_pipeline_alerts_the_operator(post_webhook, services, fake_openrouter, slack):
    services.errors.alert_webhook_url = slack.url
    fake_openrouter.then(FakeOpenRouter.error(402, "Insufficient credits"))
    post_webhook.message("Hello", sender=ADA)
    services.processor.process(Message.get().id)
    assert services.errors.flush(5)
    assert len(slack.posts) == 1 and "Insufficient credits" in slack.posts[0]["text"]


def test_web_sigterm_finishes_requests_in_flight(env, config, services, tmp_path):
    import http.client
    import urllib.parse

    from tests.conftest import WEBHOOK_URL, free_port, inbound_form, sign

    port = free_port()
    log = (tmp_path / "gunicorn.log").open("w")
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
        cwd=PROJECT_DIR, env={**os.environ, **env, "DATABASE_URL": config.database_url, "WEB_CONCURRENCY": "2"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def post(sids=None) -> int:
        form = inbound_form("during shutdown", sender=ADA)
        if sids is not None:
            sids.append(form["MessageSid"])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/whatsapp/webhook", urllib.parse.urlencode(form), {
            "Content-Type": "application/x-www-form-urlencoded", "Connection": "close",
            "X-Twilio-Signature": sign(WEBHOOK_URL, form)})
        status = connection.getresponse().status
        connection.close()
        return status

    try:
        assert wait_for(lambda: _healthy(port), timeout=20)
        results, stop = [], threading.Event()

        def hammer():
            while not stop.is_set():
                sids = []
                try:
                    results.append((post(sids), sids[0]))
                except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
                    # Refused or reset before a worker took it (the closed listener's backlog):
                    # Twilio sees a failed delivery and retries it.
                    results.append(("not taken", sids[0]))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        assert wait_for(lambda: len(results) > 10, timeout=20)  # requests flow, then the deploy stops it
        web.send_signal(signal.SIGTERM)
        assert web.wait(30) == 0
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        if web.poll() is None:
            os.killpg(web.pid, signal.SIGKILL)
    answered = {sid for result, sid in results if result == 200}
    stored = {m.twilio_sid for m in Message.select().where(Message.role == "user")}
    assert len(answered) > 10
    assert {result for result, _sid in results} <= {200, "not taken"}
    # Every request a worker took was finished: answered 200 and stored; none was stored and then cut.
    assert stored == answered


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
