"""One worker process answering many conversations at once, with every guarantee of one at a time."""
from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta

import pytest
from rq import Retry

from chatbot.errors import USER_MESSAGES, Category
from chatbot.jobs import queueing, tasks
from chatbot.models import Message, Status
from tests.conftest import WebhookPoster, jobs_done, wait_for
from tests.fakes import FakeOpenRouter, Scripted
from tests.support import BurstWorker
from worker import build_worker

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"


def sender(number: int) -> str:
    return f"whatsapp:+1555100{number:04d}"


def bodies_to(fake_twilio, to: str) -> list[str]:
    return [sent["Body"] for sent in fake_twilio.sent if sent["To"] == to]


def test_one_worker_process_waits_on_many_model_calls_at_once(post_webhook, workers, fake_openrouter,
                                                              fake_twilio):
    fake_openrouter.delay_for = lambda messages: 2.0
    workers.start(WORKER_CONCURRENCY="8")
    for number in range(8):
        post_webhook.message(f"question {number}", sender=sender(number))
    assert wait_for(lambda: len(fake_twilio.sent) == 8, timeout=30), fake_twilio.sent
    assert fake_openrouter.max_in_flight == 8
    assert sorted(s["Body"] for s in fake_twilio.sent) == sorted(f"Answer to: question {n}" for n in range(8))


def test_concurrency_setting_caps_the_jobs_in_flight(post_webhook, workers, fake_openrouter, fake_twilio):
    fake_openrouter.delay_for = lambda messages: 1.0
    workers.start(WORKER_CONCURRENCY="3")
    for number in range(7):
        post_webhook.message(f"question {number}", sender=sender(number))
    assert wait_for(lambda: len(fake_twilio.sent) == 7, timeout=30), fake_twilio.sent
    assert fake_openrouter.max_in_flight == 3


@pytest.mark.postgres
def test_one_senders_messages_are_answered_in_order_while_others_run(post_webhook, workers, fake_openrouter,
                                                                     fake_twilio):
    # Ada's first question is slow: her later ones wait for it in the same process, Bob's does not.
    fake_openrouter.delay_for = lambda messages: 1.5 if messages[-1]["content"] == "one" else 0.0
    workers.start(WORKER_CONCURRENCY="8")
    for text in ("one", "two", "three"):
        post_webhook.message(text, sender=ADA)
    post_webhook.message("bob here", sender=BOB)
    assert wait_for(lambda: len(fake_twilio.sent) == 4, timeout=30), fake_twilio.sent
    assert fake_twilio.sent[0]["To"] == BOB
    assert bodies_to(fake_twilio, ADA) == ["Answer to: one", "Answer to: two", "Answer to: three"]
    last_prompt = [m["content"] for m in fake_openrouter.completions[-1].body["messages"][1:]]
    assert last_prompt == ["one", "Answer to: one", "two", "Answer to: two", "three"]


@pytest.mark.postgres
def test_burst_with_redeliveries_gets_one_reply_per_message_in_order(post_webhook, services, workers, fake_openrouter,
                                                                    fake_twilio):
    fake_openrouter.delay_for = lambda messages: 0.2
    workers.start(WORKER_CONCURRENCY="16")
    workers.start(WORKER_CONCURRENCY="16")
    senders = [sender(number) for number in range(10)]
    for turn in range(3):
        for who in senders:
            form = post_webhook.message(f"{who} turn {turn}", sender=who)
            assert post_webhook(form).status_code == 200  # Twilio delivers it again
    assert wait_for(lambda: len(fake_twilio.sent) >= 30, timeout=60), len(fake_twilio.sent)
    assert wait_for(lambda: jobs_done(services.redis))
    assert len(fake_twilio.sent) == 30
    for who in senders:
        assert bodies_to(fake_twilio, who) == [f"Answer to: {who} turn {turn}" for turn in range(3)]
    assert len(fake_openrouter.completions) == 30
    assert Message.select().where(Message.status != Status.SENT.value,
                                  Message.role == "assistant").count() == 0


def test_a_held_conversation_lock_holds_the_job_back(post_webhook, workers, services, fake_openrouter,
                                                     fake_twilio):
    workers.start(WORKER_CONCURRENCY="8")
    post_webhook.message("first", sender=BOB)  # the worker is up and answering
    assert wait_for(lambda: len(fake_twilio.sent) == 1, timeout=30)
    post_webhook.message("Hello", sender=ADA)
    conversation_id = Message.get(Message.content == "Hello").conversation_id
    lock = services.redis.lock(f"chatbot:lock:conversation:{conversation_id}", timeout=30)
    # The webhook stored and queued the message before this lock was taken, so take it at once
    # and check that the job, which cannot have finished yet, waits for it.
    if lock.acquire(blocking=False):
        assert not wait_for(lambda: len(fake_twilio.sent) == 2, timeout=2.0)
        assert [c.body["messages"][-1]["content"] for c in fake_openrouter.completions] == ["first"]
        lock.release()
    assert wait_for(lambda: len(fake_twilio.sent) == 2, timeout=30)
    assert bodies_to(fake_twilio, ADA) == ["Answer to: Hello"]


def test_a_jobs_conversation_lock_lives_conversation_lock_ttl(post_webhook, services, run_jobs, fake_openrouter):
    services.config = services.config.replace(conversation_lock_ttl=3)
    locks = services.redis.scan_iter
    lives = []
    fake_openrouter.delay_for = lambda messages: lives.extend(
        services.redis.pttl(key) for key in locks("chatbot:lock:conversation:*")) or 0.0
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert len(lives) == 1 and 0 < lives[0] <= 3000


def test_the_worker_takes_its_heartbeat_and_maintenance_timings_from_the_settings(services):
    services.config = services.config.replace(worker_heartbeat_interval=2, worker_heartbeat_grace=3,
                                              worker_maintenance_interval=4)
    worker = build_worker(services)
    assert (worker.job_monitoring_interval, worker.get_heartbeat_ttl(None), worker.maintenance_interval) == (2, 5, 4)


@pytest.mark.postgres
def test_sweeper_requeues_stored_messages_for_a_concurrent_worker(post_webhook, workers, services, fake_twilio,
                                                                  monkeypatch):
    for number in range(6):
        post_webhook.message(f"question {number}", sender=sender(number))
    services.redis.flushdb()  # every queued job lost; the messages are stored
    monkeypatch.setattr(tasks, "PENDING_GRACE", timedelta(0))
    assert tasks.sweep_pending_messages() == 6
    workers.start(WORKER_CONCURRENCY="8")
    # Sent as the database has it: Twilio's fake counts a part as it arrives, before the job records it.
    assert wait_for(lambda: Message.select().where(Message.status == Status.SENT.value).count() == 6, timeout=30)
    assert tasks.sweep_pending_messages() == 0
    assert sorted(s["Body"] for s in fake_twilio.sent) == sorted(f"Answer to: question {n}" for n in range(6))


def test_rq_sees_a_busy_worker_with_every_running_job(post_webhook, workers, services, fake_openrouter,
                                                      fake_twilio):
    from rq import Worker

    fake_openrouter.delay_for = lambda messages: 3.0
    workers.start(WORKER_CONCURRENCY="8")
    for number in range(4):
        post_webhook.message(f"question {number}", sender=sender(number))
    assert wait_for(lambda: len(fake_openrouter.completions) == 4, timeout=30)
    [worker] = Worker.all(connection=services.redis)
    assert worker.get_state() == "busy"
    assert services.queue.started_job_registry.count == 4
    assert len(worker.get_current_executions(refresh=True)) == 4
    assert wait_for(lambda: len(fake_twilio.sent) == 4, timeout=30)
    assert wait_for(lambda: Worker.all(connection=services.redis)[0].get_state() == "idle", timeout=5)


def test_sigterm_lets_the_jobs_in_flight_finish(post_webhook, workers, fake_openrouter, fake_twilio):
    fake_openrouter.delay_for = lambda messages: 2.0
    worker = workers.start(WORKER_CONCURRENCY="16")
    for number in range(10):
        post_webhook.message(f"question {number}", sender=sender(number))
    assert wait_for(lambda: fake_openrouter.in_flight == 10, timeout=30)
    os.killpg(worker.pid, signal.SIGTERM)  # a deploy
    assert worker.wait(30) == 0
    assert sorted(s["Body"] for s in fake_twilio.sent) == sorted(f"Answer to: question {n}" for n in range(10))


def test_jobs_outlasting_the_shutdown_grace_are_handed_back_and_answered_once(
    post_webhook, services, fake_openrouter, fake_twilio, monkeypatch
):
    monkeypatch.setattr(queueing, "JOB_RETRY", Retry(max=2, interval=[1]))
    fake_openrouter.delay_for = lambda messages: 3.0 if len(fake_openrouter.completions) <= 2 else 0.0
    post_webhook.message("Hello", sender=ADA)
    post_webhook.message("Hi", sender=BOB)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        build_worker(services, shutdown_grace=0.5).work(with_scheduler=True)
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    ids = [message.id for message in Message.select().where(Message.role == "user")]
    # Handed back: RQ booked a retry for each, at once rather than when their heartbeats expire.
    assert [services.queue.fetch_job(queueing.job_id_for(i)).get_status() for i in ids] == ["scheduled"] * 2
    # The abandoned threads still finish their answers; the retries then find nothing left to do.
    assert wait_for(lambda: len(fake_twilio.sent) == 2, timeout=10)
    assert wait_for(lambda: (build_worker(services, worker_class=BurstWorker)
                             .work(burst=True, with_scheduler=True),
                             services.queue.finished_job_registry.count == 2)[1], timeout=20, interval=0.5)
    assert sorted(s["Body"] for s in fake_twilio.sent) == ["Answer to: Hello", "Answer to: Hi"]
    assert len(fake_openrouter.completions) == 2


def test_job_that_fails_for_good_apologises_instead_of_silence(post_webhook, services, run_jobs, fake_twilio,
                                                               monkeypatch):
    monkeypatch.setattr(queueing, "JOB_RETRY", None)  # the first failure is the last
    monkeypatch.setattr(tasks, "JOB_DEADLINE", -10)  # the job's time is up before it starts
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert [s["Body"] for s in fake_twilio.sent] == [USER_MESSAGES[Category.SYSTEM]]
    question = Message.get(Message.role == "user")
    assert question.status == Status.FAILED.value
    assert "JobDeadlineReached" in question.error
    assert services.queue.failed_job_registry.count == 1


def test_job_with_retries_left_stays_silent_until_its_last_attempt(post_webhook, services, run_jobs, fake_twilio,
                                                                   monkeypatch):
    monkeypatch.setattr(tasks, "JOB_DEADLINE", -10)
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert fake_twilio.sent == []
    assert Message.get(Message.role == "user").status == Status.PENDING.value


def test_hung_model_gets_the_apology_within_the_ai_deadline(app_with, fake_openrouter, fake_twilio):
    # The provider sends its headers, then trickles the body a byte every half second (a read
    # timeout never fires): the whole answer would take minutes.
    app = app_with(ai_deadline=5)
    WebhookPoster(app.test_client()).message("Hello", sender=ADA)
    fake_openrouter.then(Scripted(200, FakeOpenRouter.completion("late"), drip=0.5))
    started = time.monotonic()
    app.extensions["chatbot"].processor.process(Message.get(Message.role == "user").id, final_attempt=False)
    waited = time.monotonic() - started
    assert [s["Body"] for s in fake_twilio.sent] == [USER_MESSAGES[Category.AI]]
    question = Message.get(Message.role == "user")
    assert question.status == Status.FAILED.value and "no answer within 5s" in question.error
    assert waited < 20  # without the deadline: ~150 s


def test_sigkill_with_thirty_jobs_in_flight_answers_each_exactly_once(post_webhook, services, workers, quick_recovery,
                                                                       fake_openrouter, fake_twilio):
    first_asked = set()

    def stall_first_ask(messages):
        question = messages[-1]["content"]
        stalled = question not in first_asked
        first_asked.add(question)
        return 30.0 if stalled else 0.0

    fake_openrouter.delay_for = stall_first_ask
    doomed = workers.start(WORKER_CONCURRENCY="32", **quick_recovery)
    texts = [f"question {number}" for number in range(30)]
    for number, text in enumerate(texts):
        post_webhook.message(text, sender=sender(number))
    assert wait_for(lambda: fake_openrouter.in_flight == 30, timeout=30)
    workers.kill(doomed)
    killed_at = time.monotonic()
    workers.start(WORKER_CONCURRENCY="32", **quick_recovery)
    assert wait_for(lambda: len(fake_twilio.sent) >= 30, timeout=60), f"{len(fake_twilio.sent)} of 30 within 60 s"
    recovered_in = time.monotonic() - killed_at
    assert wait_for(lambda: jobs_done(services.redis))
    assert sorted(s["Body"] for s in fake_twilio.sent) == sorted(f"Answer to: {text}" for text in texts)
    print(f"30 jobs recovered in {recovered_in:.1f}s")


def test_redis_lost_with_ten_jobs_in_flight_answers_each_exactly_once(config, post_webhook, private_redis, workers,
                                                                       fake_openrouter, fake_twilio, monkeypatch):
    from chatbot import create_app
    from chatbot.services import build_services

    private_redis.start()
    on_private = build_services(config.replace(redis_url=private_redis.url))
    poster = WebhookPoster(create_app(services=on_private).test_client())
    fake_openrouter.delay_for = lambda messages: 2.0
    workers.start(REDIS_URL=private_redis.url, WORKER_CONCURRENCY="16")
    texts = [f"question {number}" for number in range(10)]
    for number, text in enumerate(texts):
        poster.message(text, sender=sender(number))
    assert wait_for(lambda: fake_openrouter.in_flight == 10, timeout=30)
    private_redis.stop()  # every queued job, registry and lock is gone while the AI is thinking
    # Each answer is stored; its send waits behind the context's Redis write, which fails.
    assert wait_for(lambda: Message.select().where(Message.role == "assistant").count() == 10, timeout=30)
    private_redis.start()  # back, empty
    workers.start(REDIS_URL=private_redis.url, WORKER_CONCURRENCY="16")
    tasks.install(on_private)
    monkeypatch.setattr(tasks, "PENDING_GRACE", timedelta(0))
    tasks.sweep_pending_messages()  # queues whatever the first worker could not finish
    assert wait_for(lambda: len(fake_twilio.sent) >= 10, timeout=60), fake_twilio.sent
    assert wait_for(lambda: jobs_done(on_private.redis))
    assert sorted(s["Body"] for s in fake_twilio.sent) == sorted(f"Answer to: {text}" for text in texts)
    assert Message.select().where(Message.status.in_([Status.PENDING.value, Status.UNSENT.value])).count() == 0


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_database_lost_with_ten_jobs_in_flight_answers_each_exactly_once(config, services, post_webhook, workers,
                                                                          quick_recovery, fake_openrouter, fake_twilio):
    import psycopg2

    database = config.database_url.rsplit("/", 1)[1]
    cut = threading.Event()

    def cut_connections_once_all_are_asked(messages):
        if fake_openrouter.in_flight >= 10 and not cut.is_set():
            cut.set()
            admin = psycopg2.connect(config.database_url)
            admin.autocommit = True
            admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
            admin.close()
        return 1.0

    fake_openrouter.delay_for = cut_connections_once_all_are_asked
    workers.start(WORKER_CONCURRENCY="16", **quick_recovery)
    texts = [f"question {number}" for number in range(10)]
    for number, text in enumerate(texts):
        post_webhook.message(text, sender=sender(number))
    # Jobs that meet a dead pooled connection fail cleanly and come back on RQ's first retry.
    assert wait_for(lambda: len(fake_twilio.sent) >= 10, timeout=60), fake_twilio.sent
    assert cut.is_set()
    assert wait_for(lambda: jobs_done(services.redis))
    assert sorted(s["Body"] for s in fake_twilio.sent) == sorted(f"Answer to: {text}" for text in texts)
    assert Message.select().where(Message.status.in_([Status.PENDING.value, Status.UNSENT.value])).count() == 0
