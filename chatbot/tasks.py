"""RQ jobs: thin, idempotent, and safe to run twice."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import timedelta

from redis.exceptions import LockError, RedisError
from rq import Callback, Queue, RateLimit, Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.rate_limit import ACQUIRE_AND_ENQUEUE_SCRIPT, RateLimitRegistry
from rq.utils import current_timestamp, utcformat
from rq.utils import now as rq_now

from chatbot import metrics
from chatbot.db import connection_scope, database
from chatbot.errors import SenderBusy, WhatsAppError
from chatbot.models import Conversation, Message, Role, Status, WebhookLog, utcnow
from chatbot.redact import sender_key

log = logging.getLogger(__name__)

JOB_TIMEOUT = 180
# The job's own deadline, below JOB_TIMEOUT: it ends itself (with an apology where one is due)
# rather than being cut off, and a worker that cannot kill a thread never has to.
JOB_DEADLINE = 150
# How long the failure callback waits for a conversation another job is still working on.
GIVE_UP_LOCK_WAIT = 5
# Transient upstream trouble is retried over about four minutes before the user gets the fallback.
JOB_RETRY = Retry(max=4, interval=[10, 30, 60, 120])
# The conversation lock lives LOCK_TTL seconds unless its holder renews it, so a killed worker's
# lock is gone by the time RQ hands its job to another worker.
LOCK_TTL = 20
LOCK_WAIT = 30
PENDING_GRACE = timedelta(seconds=60)
# The periodic jobs' ids, registered by scheduler.py.
CLEANUP_JOB = "cleanup-expired-conversations"
SWEEP_JOB = "sweep-pending-messages"
# Far longer than any job of a sender waits or runs; renewed by each of their messages.
RATE_LIMIT_CONFIG_TTL = 7 * 86400
# How long the sweeper keeps trying to send an answer. Past WhatsApp's 24-hour window the processor
# sends it as the number's approved template (or marks it outside_window); only an answer still
# unsent after this long, with Twilio failing all the while, is given up.
RESEND_HORIZON = timedelta(days=7)

_services = None


def install(services) -> None:
    """Use these built services for the jobs of this process (worker.py and tests)."""
    global _services
    _services = services


def current_services():
    """Return the services this process installed; a job run without them is a wiring mistake."""
    if _services is None:
        raise RuntimeError("no services installed for RQ jobs in this process: "
                           "call chatbot.tasks.install(build_services(config)) before running jobs")
    return _services


def job_id_for(message_id: int) -> str:
    # Zero-padded: RQ's rate limiter breaks timestamp ties by id, so ids must sort like numbers.
    return f"message-{message_id:012d}"


def enqueue_processing(queue: Queue, message_id: int, sender: str) -> Job:
    """Queue the answer to a stored message; one sender's jobs run one at a time, oldest first."""
    job = queue.create_job(
        process_message,
        args=(message_id,),
        job_id=job_id_for(message_id),
        timeout=JOB_TIMEOUT,
        retry=JOB_RETRY,
        rate_limit=RateLimit(key=sender_key(sender), concurrency=1),
        on_failure=Callback(apologise_when_failed_for_good),
        result_ttl=86400,
        failure_ttl=7 * 86400,
        description=f"process message {message_id}",
    )
    _enqueue_rate_limited(queue, job)
    return job


# RQ's rate-limited enqueue as one script, one round trip: queue.enqueue_call makes three, and even
# RQ's pipeline mode packs ten commands into a MULTI/EXEC. It writes what RQ writes (the job hash
# from RQ's own to_dict, the registry keys RQ names) and promotes with RQ's own promotion script,
# run inside it; tests/test_webhook_fast_path.py compares the Redis state with RQ's. One difference:
# RQ keeps each rate-limit key's settings forever, one hash per sender who ever wrote; here they expire.
# KEYS: the queues set, the rate-limit keys set, the key's settings, the job, allowed, rate_limited.
# ARGV: queue key, rate-limit key, concurrency, settings' lifetime, timestamp, enqueued_at, queue
# prefix, job prefix, job id, and the job hash's fields and values as one run of netstrings
# ("<length>:<bytes>"): redis-py packs each argument in Python, and one argument is ~40 fewer.
ENQUEUE_RATE_LIMITED_SCRIPT = f"""
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'concurrency', ARGV[3])
local fields, blob, at = {{}}, ARGV[10], 1
while at <= #blob do
    local colon = string.find(blob, ':', at, true)
    local size = tonumber(string.sub(blob, at, colon - 1))
    fields[#fields + 1] = string.sub(blob, colon + 1, colon + size)
    at = colon + size + 1
end
redis.call('HSET', KEYS[4], unpack(fields))
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[9])
-- RQ's script reads KEYS and ARGV: as this function's parameters they shadow the script's own.
local function acquire(KEYS, ARGV)
{ACQUIRE_AND_ENQUEUE_SCRIPT}
end
local promoted = acquire({{KEYS[5], KEYS[6]}}, {{ARGV[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8]}})
redis.call('EXPIRE', KEYS[3], ARGV[4])
return promoted
"""


def _enqueue_rate_limited(queue: Queue, job: Job) -> None:
    job.origin = queue.name
    job._status = JobStatus.RATE_LIMITED
    registry = RateLimitRegistry.from_job(job)
    keys = [queue.redis_queues_keys, registry.rl_keys_key, registry.config_key, job.key,
            registry.allowed_key, registry.rate_limited_key]
    args = [queue.key, registry.key, job.rate_limit_concurrency, RATE_LIMIT_CONFIG_TTL, current_timestamp(),
            utcformat(rq_now()), Queue.redis_queue_namespace_prefix, Job.redis_job_namespace_prefix, job.id]
    encode = queue.connection.get_encoder().encode
    args.append(b"".join(b"%d:%s" % (len(part), part)
                         for item in job.to_dict().items() for part in map(encode, item)))
    # redis-py runs it by its hash and loads it only when Redis has lost it (restarted, flushed).
    queue.connection.register_script(ENQUEUE_RATE_LIMITED_SCRIPT)(keys=keys, args=args)


def process_message(message_id: int) -> dict:
    """Answer and deliver a stored user message (and any older one of the same sender; with
    COALESCE_SECONDS, the newer ones that arrive before the sender pauses too)."""
    services = current_services()
    until = time.monotonic() + JOB_DEADLINE
    job = get_current_job()
    with connection_scope():
        message = Message.get_or_none(Message.id == message_id)
    if message is None:
        log.warning("message_id=%s not found", message_id)
        return {"missing": True}
    limit = services.config.max_processing_attempts
    # A second guard behind RQ's rate limit: a job re-run after a worker died must not overlap.
    with conversation_lock(services.redis, message.conversation_id, message_id):
        if message.twilio_sid and message.status == Status.PENDING.value:
            # "typing…" under the user's message while the model thinks; best effort, short timeout.
            services.whatsapp.show_typing(message.twilio_sid)
        with connection_scope():
            attempt = Message.count_attempt(message_id)
            if attempt > limit:
                # Every earlier run failed without an answer (or died): stop the laps, apologise once.
                outcome = services.processor.give_up(message_id, f"gave up after {limit} attempts")
            else:
                final_attempt = job is None or not job.retries_left or attempt == limit
                outcome = services.processor.process(message_id, final_attempt=final_attempt, until=until,
                                                     coalesce_seconds=services.config.coalesce_seconds)
    metrics.count_job(outcome, gave_up=attempt > limit)
    return asdict(outcome)


def apologise_when_failed_for_good(job: Job, connection, error_type, error, traceback) -> None:
    """RQ's failure callback: when a message's job fails with no retry left (it raised, timed out or
    its worker died), the user gets an apology instead of silence."""
    metrics.count_job_error(job.retries_left)
    if job.retries_left or (error_type is not None and issubclass(error_type, (SenderBusy, WhatsAppError))):
        # A retry is coming; or the job holding the conversation answers this message too; or
        # Twilio cannot take messages now, and the sweeper queues the message again when it can.
        return
    message_id = job.args[0]
    services = current_services()
    reason = f"job failed for good: {error_type.__name__ if error_type else 'unknown error'}"
    log.error("message_id=%s %s; apologising", message_id, reason)
    with connection_scope():
        message = Message.get_or_none(Message.id == message_id)
        if message is None:
            return
    try:
        with conversation_lock(services.redis, message.conversation_id, message_id, wait=GIVE_UP_LOCK_WAIT):
            with connection_scope():
                services.processor.give_up(message_id, reason)
    except SenderBusy:
        log.warning("message_id=%s conversation busy; the job holding it answers this message", message_id)


@contextmanager
def conversation_lock(redis, conversation_id, message_id: int, wait: float = LOCK_WAIT):
    """Hold the conversation's lock, renewing it from a thread while the job runs."""
    lock = redis.lock(f"chatbot:lock:conversation:{conversation_id}", timeout=LOCK_TTL,
                      blocking_timeout=wait, thread_local=False)
    if not lock.acquire():
        raise SenderBusy(f"conversation of message_id={message_id} is being processed elsewhere")
    done = threading.Event()

    def renew():
        while not done.wait(LOCK_TTL / 4):
            try:
                lock.extend(LOCK_TTL, replace_ttl=True)
            except (LockError, RedisError):
                log.warning("message_id=%s could not renew its conversation lock", message_id)
                return

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
        try:
            lock.release()
        except (LockError, RedisError):
            log.warning("message_id=%s conversation lock expired before release", message_id)


def cleanup_expired_conversations() -> dict[str, int]:
    """End conversations idle longer than CONVERSATION_TTL (dropping their context), delete what is
    past its retention, and return how many of each went."""
    services = current_services()
    now = utcnow()
    with connection_scope():
        expired = [
            conversation.id
            for conversation in Conversation.idle_since(now - timedelta(seconds=services.config.conversation_ttl))
        ]
        Conversation.end(expired, services.context)
        counts = {"conversations_ended": len(expired), **delete_past_retention(services.config, services.context, now)}
    # An idle cleanup stays quiet: four zeros every 6 hours would only bury the lines that matter.
    if any(counts.values()):
        log.info("cleanup %s", " ".join(f"{name}={count}" for name, count in counts.items()))
    return counts


def delete_past_retention(config, context, now) -> dict[str, int]:
    """Delete conversations untouched for RETENTION_DAYS with their messages, context and webhook log
    entries, then webhook log entries older than WEBHOOK_LOG_RETENTION_DAYS; 0 keeps either forever."""
    conversations = messages = logs = 0
    if config.retention_days:
        cutoff = now - timedelta(days=config.retention_days)
        for batch_conversations, batch_messages, batch_logs in Conversation.delete_untouched_since(cutoff, context):
            conversations += batch_conversations
            messages += batch_messages
            logs += batch_logs
    if config.webhook_log_retention_days:
        logs += sum(WebhookLog.delete_received_before(now - timedelta(days=config.webhook_log_retention_days)))
    return {"conversations_deleted": conversations, "messages_deleted": messages, "webhook_logs_deleted": logs}


ACTIVE_STATES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED,
                 JobStatus.RATE_LIMITED}


def job_is_active(redis, job_id: str) -> bool:
    """True when RQ still has the job waiting or running (not finished, failed or gone)."""
    try:
        return Job.fetch(job_id, connection=redis).get_status() in ACTIVE_STATES
    except NoSuchJobError:
        return False


def sweep_pending_messages() -> int:
    """Queue stored messages that no job is working on: unanswered ones whose job never reached
    Redis (or was lost with it), and answers still waiting to be sent (e.g. Twilio was down)."""
    services = current_services()
    queued = 0
    hand_back_idle_takeovers()
    with connection_scope():
        for message in Message.needing_work(PENDING_GRACE, RESEND_HORIZON):
            if job_is_active(services.redis, job_id_for(message.id)):
                continue
            enqueue_processing(services.queue, message.id, message.conversation.user_phone)
            queued += 1
        expired = Message.give_up_unsent(RESEND_HORIZON)
    if queued:
        log.warning("queued %d stored messages that had no job", queued)
    if expired:
        log.error("gave up sending %d replies older than %s", expired, RESEND_HORIZON)
    return queued


def enqueue_operator_reply(queue: Queue, reply_id: int) -> Job:
    """Queue the sending of a reply an operator wrote (the conversation lock keeps it in order)."""
    return queue.enqueue_call(
        send_operator_reply,
        args=(reply_id,),
        job_id=f"operator-reply-{reply_id:012d}",
        timeout=JOB_TIMEOUT,
        retry=JOB_RETRY,
        result_ttl=86400,
        failure_ttl=7 * 86400,
        description=f"send operator reply {reply_id}",
    )


def send_operator_reply(reply_id: int) -> dict:
    """Send a reply an operator wrote (and any older one of the conversation still unsent), in order."""
    services = current_services()
    job = get_current_job()
    with connection_scope():
        reply = Message.get_or_none(Message.id == reply_id)
    if reply is None:
        log.warning("message_id=%s not found", reply_id)
        return {"missing": True}
    # The lock the answering jobs take: two operators' replies, or a reply and an answer, never interleave.
    with conversation_lock(services.redis, reply.conversation_id, reply_id):
        with connection_scope():
            final_attempt = job is None or not job.retries_left
            outcome = services.processor.deliver_operator_reply(reply_id, final_attempt=final_attempt)
    return asdict(outcome)


def take_over(conversation_id, operator: str) -> bool:
    """Pause the bot for an active conversation nobody has taken over; return whether it was paused."""
    return bool(
        Conversation.update(paused_at=utcnow(), paused_by=operator)
        .where(Conversation.id == conversation_id, Conversation.paused_at.is_null(),
               Conversation.is_active == True)  # noqa: E712
        .execute()
    )


def store_operator_reply(conversation: Conversation, text: str, operator: str) -> Message:
    """Store an operator's reply, unsent, as the answer to the user messages waiting for a person."""
    with database.atomic():
        # Claimed by one UPDATE: of two operators replying at once, only one answers each message.
        answered = sorted(
            message_id
            for (message_id,) in (
                Message.update(status=Status.ANSWERED.value)
                .where(Message.conversation == conversation, Message.role == Role.USER.value,
                       Message.status == Status.WAITING.value)
                .returning(Message.id)
                .tuples()
            )
        )
        reply = Message.create(
            conversation=conversation,
            role=Role.ASSISTANT.value,
            content=text,
            status=Status.UNSENT.value,
            reply_to=answered[-1] if answered else None,
            operator=operator,
            metadata={"answers": answered},
        )
    # A reply counts as activity: TAKEOVER_TIMEOUT runs from here.
    conversation.touch()
    return reply


def hand_back(*conditions) -> int:
    """Give the taken-over conversations matching `conditions` back to the bot; return how many."""
    return (
        Conversation.update(paused_at=None, paused_by=None)
        .where(Conversation.paused_at.is_null(False), *conditions)
        .execute()
    )


def hand_back_idle_takeovers() -> int:
    """Hand back conversations taken over longer than TAKEOVER_TIMEOUT minutes ago with no message
    from the user or the operator since; 0 minutes never does."""
    minutes = current_services().config.takeover_timeout
    if not minutes:
        return 0
    cutoff = utcnow() - timedelta(minutes=minutes)
    with connection_scope():
        # updated_at moves with every user message and every operator reply.
        handed_back = hand_back(Conversation.paused_at < cutoff, Conversation.updated_at < cutoff)
    if handed_back:
        log.info("handed back %d idle taken-over conversations after %d minutes", handed_back, minutes)
    return handed_back
