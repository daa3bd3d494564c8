"""The RQ adapter: every job the assistant queues, its id, retries and rate limit, and every RQ key it touches."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rq import Callback, Queue, RateLimit, Retry, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimitRegistry

from chatbot.models import Message
from chatbot.redact import sender_key

log = logging.getLogger(__name__)

# The job functions by dotted path, the name RQ stores with each job: the worker imports them, and
# naming them here keeps this module below the jobs it queues.
PROCESS_MESSAGE = "chatbot.jobs.tasks.process_message"
APOLOGISE_WHEN_FAILED = "chatbot.jobs.tasks.apologise_when_failed_for_good"
SEND_OPERATOR_REPLY = "chatbot.jobs.tasks.send_operator_reply"
INDEX_KNOWLEDGE_SOURCE = "chatbot.jobs.tasks.index_knowledge_source"
NOTIFY_HANDOFF = "chatbot.jobs.tasks.notify_handoff"
SEND_UNPROMPTED = "chatbot.jobs.tasks.send_unprompted"
SEND_CAMPAIGN = "chatbot.jobs.tasks.send_campaign"
# A campaign's job runs until every recipient is sent (at CAMPAIGN_RATE, hours for a large one): the
# thread-pool worker enforces no timeout, and a forking one must not cut it off.
CAMPAIGN_JOB_TIMEOUT = 24 * 3600
# A campaign's run that Twilio cut short goes on after a minute, then less often; the minute sweep
# queues a campaign still sending without a job in any case.
CAMPAIGN_RETRY = Retry(max=5, interval=[60, 120, 300, 600, 1800])
# A notification channel that is down is tried again over about an hour before it is given up.
NOTIFY_RETRY = Retry(max=5, interval=[30, 60, 300, 900, 1800])
EMBED_APPROVED_ANSWERS = "chatbot.jobs.tasks.embed_approved_answers"
# Indexing a large sitemap takes many embeddings requests: longer than an answer may.
KNOWLEDGE_JOB_TIMEOUT = 1800
KNOWLEDGE_RETRY = Retry(max=3, interval=[30, 120, 600])
JOB_TIMEOUT = 180
# Transient upstream trouble is retried over about four minutes before the user gets the fallback.
JOB_RETRY = Retry(max=4, interval=[10, 30, 60, 120])
# The periodic jobs' ids, registered by scheduler.py.
CLEANUP_JOB = "cleanup-expired-conversations"
SWEEP_JOB = "sweep-pending-messages"


def job_id_for(message_id: int) -> str:
    # Zero-padded: RQ's rate limiter breaks timestamp ties by id, so ids must sort like numbers.
    return f"message-{message_id:012d}"


def enqueue_processing(queue: Queue, message_id: int, sender: str) -> Job:
    """Queue the answer to a stored message; one sender's jobs run one at a time, oldest first.

    RQ keeps a sender's rate-limit settings while they have a job waiting or running; its workers'
    maintenance (clean_registries) deletes them afterwards, and /forget deletes them at once.
    """
    return queue.enqueue_call(
        PROCESS_MESSAGE,
        args=(message_id,),
        job_id=job_id_for(message_id),
        timeout=JOB_TIMEOUT,
        retry=JOB_RETRY,
        rate_limit=RateLimit(key=sender_key(sender), concurrency=1),
        on_failure=Callback(APOLOGISE_WHEN_FAILED),
        result_ttl=86400,
        failure_ttl=7 * 86400,
        description=f"process message {message_id}",
    )


ACTIVE_STATES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED,
                 JobStatus.RATE_LIMITED}


def job_is_active(redis, job_id: str) -> bool:
    """True when RQ still has the job waiting or running (not finished, failed or gone)."""
    try:
        return Job.fetch(job_id, connection=redis).get_status() in ACTIVE_STATES
    except NoSuchJobError:
        return False


def queue_unless_active(queue: Queue, message_id: int, sender: str) -> bool:
    """Queue the answer to a stored message unless RQ has its job waiting or running already;
    return whether it was queued."""
    if job_is_active(queue.connection, job_id_for(message_id)):
        return False
    enqueue_processing(queue, message_id, sender)
    return True


def answer_again(queue: Queue, questions: list[Message]) -> None:
    """Put failed user messages back in line (their apologies superseded) and queue their answers."""
    Message.put_back_in_line([question.id for question in questions])
    for question in questions:
        enqueue_processing(queue, question.id, question.conversation.user_phone)


def send_again(queue: Queue, reply: Message) -> None:
    """Make an undelivered reply unsent again and queue the job that sends it: the operator's own,
    or the answering job of the message it replies to."""
    Message.put_back_unsent(reply)
    if reply.operator is not None:
        enqueue_operator_reply(queue, reply.id)
    else:
        enqueue_processing(queue, reply.reply_to_id, reply.conversation.user_phone)


def forget_sender_limit(redis, sender: str) -> None:
    """Delete RQ's per-sender rate-limit settings now, unless a later message's job still waits on
    them (then RQ's maintenance deletes them once it has run)."""
    registry = RateLimitRegistry(sender_key(sender), redis)
    if not redis.zcard(registry.rate_limited_key):
        redis.delete(registry.config_key)


def enqueue_operator_reply(queue: Queue, reply_id: int) -> Job:
    """Queue the sending of a reply an operator wrote (the conversation lock keeps it in order)."""
    return queue.enqueue_call(
        SEND_OPERATOR_REPLY,
        args=(reply_id,),
        job_id=f"operator-reply-{reply_id:012d}",
        timeout=JOB_TIMEOUT,
        retry=JOB_RETRY,
        result_ttl=86400,
        failure_ttl=7 * 86400,
        description=f"send operator reply {reply_id}",
    )


def enqueue_unprompted(queue: Queue, message_id: int) -> bool:
    """Queue the sending of a message the assistant wrote on its own (a due follow-up, the rating
    question), unless it is queued or running already."""
    return _enqueue_once(queue, SEND_UNPROMPTED, message_id, f"unprompted-{message_id:012d}", JOB_TIMEOUT, JOB_RETRY,
                         f"send unprompted message {message_id}")


def enqueue_campaign(queue: Queue, campaign_id: int) -> bool:
    """Queue the sending of a campaign, unless its job is queued or running already; say whether it was."""
    return _enqueue_once(queue, SEND_CAMPAIGN, campaign_id, f"campaign-{campaign_id:012d}", CAMPAIGN_JOB_TIMEOUT,
                         CAMPAIGN_RETRY, f"send campaign {campaign_id}")


def enqueue_knowledge_index(queue: Queue, source_id: int) -> bool:
    """Queue the indexing of a knowledge source, unless it is queued or running already; say whether it was."""
    return _enqueue_once(queue, INDEX_KNOWLEDGE_SOURCE, source_id, f"knowledge-source-{source_id:012d}",
                         KNOWLEDGE_JOB_TIMEOUT, KNOWLEDGE_RETRY, f"index knowledge source {source_id}")


def _enqueue_once(queue: Queue, function: str, row_id: int, job_id: str, timeout: int, retry: Retry,
                  description: str) -> bool:
    """Queue `function(row_id)` as `job_id` unless that job is queued or running already; say whether it was."""
    if job_is_active(queue.connection, job_id):
        return False
    queue.enqueue_call(function, args=(row_id,), job_id=job_id, timeout=timeout, retry=retry, result_ttl=86400,
                       failure_ttl=7 * 86400, description=description)
    return True


def enqueue_handoff_notice(queue: Queue, handoff_id: int, reminder: bool = False) -> Job:
    """Queue telling the team of a handoff (or reminding them of one nobody claimed)."""
    return queue.enqueue_call(NOTIFY_HANDOFF, args=(handoff_id, reminder), timeout=120, retry=NOTIFY_RETRY,
                              result_ttl=86400, failure_ttl=7 * 86400,
                              description=f"{'remind of' if reminder else 'announce'} handoff {handoff_id}")


def enqueue_approved_embedding(queue: Queue) -> bool:
    """Queue the embedding of approved answers' questions, unless it is queued already."""
    job_id = "embed-approved-answers"
    if job_is_active(queue.connection, job_id):
        return False
    queue.enqueue_call(EMBED_APPROVED_ANSWERS, job_id=job_id, timeout=KNOWLEDGE_JOB_TIMEOUT, retry=KNOWLEDGE_RETRY,
                       result_ttl=3600, failure_ttl=7 * 86400, description="embed approved answers")
    return True


@dataclass(frozen=True)
class QueueHealth:
    """The job queue as RQ sees it now."""

    workers: int
    # Jobs on the queue for a worker to take, and jobs held back behind the same sender's running one.
    queued: int
    held: int
    oldest_wait_seconds: float | None = field(default=None)

    @property
    def waiting(self) -> int:
        return self.queued + self.held


def queue_health(queue: Queue) -> QueueHealth:
    """Return the workers alive, the jobs waiting and how long the oldest has waited, read from Redis now."""
    redis = queue.connection
    oldest = []
    head = queue.get_jobs(0, 1)
    if head and head[0].enqueued_at is not None:
        oldest.append(head[0].enqueued_at.timestamp())
    registries = RateLimitRegistry.all(redis)
    with redis.pipeline(transaction=False) as pipe:
        for registry in registries:
            pipe.zcard(registry.rate_limited_key)
            pipe.zrange(registry.rate_limited_key, 0, 0, withscores=True)
        replies = pipe.execute()
    held = sum(replies[0::2])
    # Each held job is scored with the time RQ held it back, in seconds.
    oldest += [first[0][1] for first in replies[1::2] if first]
    waited = datetime.now(UTC).timestamp() - min(oldest) if oldest else None
    return QueueHealth(workers=Worker.count(queue=queue), queued=queue.count, held=held,
                       oldest_wait_seconds=None if waited is None else max(waited, 0.0))
