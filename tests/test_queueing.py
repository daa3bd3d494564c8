"""The RQ adapter on RQ's public API: one sender's jobs in line, retries due, per-sender keys cleaned up."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rq import Queue, RateLimit
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimitRegistry
from rq.registry import clean_registries

from chatbot.jobs import queueing
from chatbot.jobs.worker import ThreadPoolWorker
from chatbot.redact import sender_key
from chatbot.services import QUEUE_NAME

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"


def rate_limit_keys(redis) -> list[bytes]:
    return sorted(redis.keys("rq:rl*"))


def test_one_senders_jobs_wait_in_line_and_others_do_not(redis):
    queue = Queue(QUEUE_NAME, connection=redis)
    for message_id, sender in ((1, ADA), (2, ADA), (3, BOB)):
        queueing.enqueue_processing(queue, message_id, sender)
    assert queue.job_ids == [queueing.job_id_for(1), queueing.job_id_for(3)]
    assert Job.fetch(queueing.job_id_for(2), connection=redis).get_status() == JobStatus.RATE_LIMITED
    assert RateLimitRegistry(sender_key(ADA), redis).get_rate_limited_job_ids() == [queueing.job_id_for(2)]


def test_rqs_maintenance_deletes_a_senders_rate_limit_keys_once_nothing_waits(post_webhook, run_jobs, services):
    post_webhook.message("first", sender=ADA)
    post_webhook.message("second", sender=ADA)
    clean_registries(services.queue)
    assert rate_limit_keys(services.redis), "a waiting job's sender keeps its settings"
    run_jobs()
    clean_registries(services.queue)
    assert rate_limit_keys(services.redis) == []


def test_forgetting_a_sender_deletes_their_settings_unless_a_job_still_waits(redis):
    queue = Queue(QUEUE_NAME, connection=redis)
    queueing.enqueue_processing(queue, 1, ADA)
    queueing.enqueue_processing(queue, 2, ADA)
    config_key = RateLimitRegistry(sender_key(ADA), redis).config_key
    queueing.forget_sender_limit(redis, ADA)
    assert redis.exists(config_key), "job 2 still needs the sender's concurrency"
    RateLimitRegistry(sender_key(ADA), redis).cancel(queueing.job_id_for(2))
    queueing.forget_sender_limit(redis, ADA)
    assert not redis.exists(config_key)


@pytest.mark.parametrize("rate_limit", [RateLimit(key=sender_key(ADA), concurrency=1), None],
                         ids=["rate limited", "not rate limited"])
def test_a_retry_whose_time_has_come_is_queued_once_by_the_first_worker_to_look(redis, rate_limit):
    queue = Queue(QUEUE_NAME, connection=redis)
    job = queue.create_job(queueing.PROCESS_MESSAGE, args=(1,), job_id=queueing.job_id_for(1), rate_limit=rate_limit)
    queue.schedule_job(job, datetime.now(UTC) - timedelta(seconds=1))
    workers = [ThreadPoolWorker([queue], connection=redis) for _ in range(2)]
    assert [worker.enqueue_due_jobs() for worker in workers] == [1, 0]
    assert queue.job_ids == [job.id]
    assert Job.fetch(job.id, connection=redis).get_status() == JobStatus.QUEUED
