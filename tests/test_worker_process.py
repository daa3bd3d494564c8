"""worker.py and scheduler.py as real processes and registrations."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from redis import Redis
from rq import Queue, Retry
from rq_scheduler import Scheduler

import scheduler as scheduler_module
from chatbot.jobs import queueing, tasks
from chatbot.models import Conversation, utcnow
from chatbot.services import QUEUE_NAME
from tests.conftest import PROJECT_DIR, wait_for
from tests.fakes import FakeOpenRouter
from tests.support import conversation_for

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"


@pytest.fixture
def start_workers(env, config, tmp_path):
    processes = []

    def start(count: int):
        worker_env = {**os.environ, **env, "DATABASE_URL": config.database_url, "PYTHONUNBUFFERED": "1"}
        for _ in range(count):
            processes.append(subprocess.Popen([sys.executable, "worker.py"], cwd=PROJECT_DIR, env=worker_env,
                                              stdout=(tmp_path / f"worker{len(processes)}.log").open("w"),
                                              stderr=subprocess.STDOUT))
        return processes

    yield start
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_one_sender_is_answered_in_order_while_others_run_in_parallel(
    post_webhook, start_workers, fake_openrouter, fake_twilio
):
    # The first question is slow: with two workers, Ada's later questions must still wait for it,
    # while Bob's question goes through on the other worker.
    fake_openrouter.delay_for = lambda messages: 1.5 if messages[-1]["content"] == "one" else 0.0
    start_workers(2)
    for text in ("one", "two", "three"):
        post_webhook.message(text, sender=ADA)
    post_webhook.message("bob here", sender=BOB)
    assert wait_for(lambda: len(fake_twilio.sent) == 4), fake_twilio.sent
    ada = [s["Body"] for s in fake_twilio.sent if s["To"] == ADA]
    assert ada == ["Answer to: one", "Answer to: two", "Answer to: three"]
    assert fake_twilio.sent[0]["To"] == BOB
    # Each of Ada's prompts carries the exchanges before it.
    last_prompt = [m["content"] for m in fake_openrouter.completions[-1].body["messages"][1:]]
    assert last_prompt == ["one", "Answer to: one", "two", "Answer to: two", "three"]


def test_scheduled_retry_fires_in_a_real_worker(post_webhook, start_workers, fake_openrouter, fake_twilio,
                                               monkeypatch):
    monkeypatch.setattr(queueing, "JOB_RETRY", Retry(max=2, interval=[1]))
    fake_openrouter.then(*[FakeOpenRouter.error(503, "Provider overloaded")] * 3)
    start_workers(1)
    post_webhook.message("Hello", sender=ADA)
    assert wait_for(lambda: fake_twilio.sent, timeout=30)
    assert [s["Body"] for s in fake_twilio.sent] == ["Answer to: Hello"]
    assert len(fake_openrouter.completions) == 4


def test_scheduler_registers_each_periodic_job_once(redis, services):
    scheduler = Scheduler(queue_name=QUEUE_NAME, connection=services.redis)
    scheduler_module.register_jobs(scheduler)
    scheduler_module.register_jobs(scheduler)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"cleanup-expired-conversations", "sweep-pending-messages"}
    assert jobs["cleanup-expired-conversations"].meta["cron_string"] == "0 */6 * * *"
    assert jobs["sweep-pending-messages"].meta["interval"] == 60


def test_scheduler_registers_its_jobs_again_after_redis_loses_them(redis, services):
    scheduler = scheduler_module.SelfHealingScheduler(queue_name=QUEUE_NAME, connection=services.redis)
    scheduler_module.register_jobs(scheduler)
    services.redis.flushdb()  # Redis restarted with nothing on disk
    scheduler.enqueue_jobs()
    assert {job.id for job in scheduler.get_jobs()} == {"cleanup-expired-conversations", "sweep-pending-messages"}


def test_scheduler_process_outlives_a_redis_outage(env, config, private_redis, tmp_path):
    import os

    private_redis.start()
    log = tmp_path / "scheduler.log"
    process = subprocess.Popen([sys.executable, "scheduler.py"], cwd=PROJECT_DIR,
                               env={**os.environ, **env, "DATABASE_URL": config.database_url,
                                    "REDIS_URL": private_redis.url, "SCHEDULER_POLL_INTERVAL": "1"},
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        probe = Redis.from_url(private_redis.url)
        assert wait_for(lambda: probe.zcard("rq:scheduler:scheduled_jobs") == 2, timeout=20)
        private_redis.stop()
        # The scheduler meets the outage at its next poll, says so, and keeps running.
        assert wait_for(lambda: "Redis unavailable" in log.read_text(), timeout=30), log.read_text()
        assert process.poll() is None, log.read_text()
        private_redis.start()
        probe = Redis.from_url(private_redis.url)
        assert wait_for(lambda: probe.zcard("rq:scheduler:scheduled_jobs") == 2, timeout=30), log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


@pytest.mark.postgres
def test_cleanup_deactivates_idle_conversations_and_drops_their_context(services):
    idle = conversation_for(ADA)
    recent = conversation_for(BOB)
    Conversation.update(updated_at=utcnow() - timedelta(seconds=services.config.conversation_ttl + 5)).where(
        Conversation.id == idle.id
    ).execute()
    services.context.add_message(idle.id, "user", "old", position=1.0, message_id=1)
    assert tasks.cleanup_expired_conversations()["conversations_ended"] == 1
    assert Conversation.get_by_id(idle.id).is_active is False
    assert Conversation.get_by_id(recent.id).is_active is True
    assert not services.redis.exists(services.context.key(idle.id))


@pytest.mark.postgres
def test_cleanup_command_reports_the_count(app, services):
    idle = conversation_for(ADA)
    Conversation.update(updated_at=utcnow() - timedelta(days=30)).where(Conversation.id == idle.id).execute()
    result = app.test_cli_runner().invoke(args=["cleanup"])
    assert result.exit_code == 0
    assert "Deactivated 1 idle conversation(s)." in result.output


def test_an_idle_scheduler_and_worker_stay_quiet(env, config, services, private_redis, tmp_path):
    from rq.job import Job

    private_redis.start()
    process_env = {**os.environ, **env, "DATABASE_URL": config.database_url, "REDIS_URL": private_redis.url,
                   "PYTHONUNBUFFERED": "1", "WORKER_MAINTENANCE_INTERVAL": "1",
                   "SCHEDULER_POLL_INTERVAL": "1"}
    logs = {name: tmp_path / f"{name}.log" for name in ("scheduler", "worker")}
    processes = [subprocess.Popen([sys.executable, f"{name}.py"], cwd=PROJECT_DIR, env=process_env,
                                  stdout=logs[name].open("w"), stderr=subprocess.STDOUT) for name in logs]
    probe = Redis.from_url(private_redis.url)
    finished = Queue(QUEUE_NAME, connection=probe).finished_job_registry.key
    try:
        # The sweep runs at once and then every minute; the worker's maintenance every second here.
        assert wait_for(lambda: probe.exists(f"rq:job:{queueing.SWEEP_JOB}")
                        and Job.fetch(queueing.SWEEP_JOB, connection=probe).get_status() == "finished", timeout=20), \
            logs["scheduler"].read_text() + logs["worker"].read_text()
        # A long-expired entry, which only a maintenance pass removes: once it is gone, one has run.
        probe.zadd(finished, {"expired-long-ago": 1})
        assert wait_for(lambda: probe.zscore(finished, "expired-long-ago") is None, timeout=20), \
            logs["worker"].read_text()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)
    scheduler_log, worker_log = logs["scheduler"].read_text(), logs["worker"].read_text()
    assert "Warning" not in scheduler_log, scheduler_log
    for noise in ("cleaning registries", "sweep", "never expire", "Job OK"):
        assert noise not in worker_log, worker_log
    assert "Listening on chatbot" in worker_log  # the worker does log; the routine lines are what is gone
    assert 0 < probe.ttl(f"rq:job:{queueing.SWEEP_JOB}") <= scheduler_module.PERIODIC_RESULT_TTL
