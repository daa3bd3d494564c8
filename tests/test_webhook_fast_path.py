"""The webhook's short cuts leave what the long way leaves: RQ's own enqueue, peewee's own SQL."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from peewee import IntegrityError
from redis import Redis
from rq import Callback, Queue, RateLimit
from rq.job import Job, JobStatus

from chatbot.jobs import queueing, tasks
from chatbot.models import TOUCH_FRESH, Conversation, Message, WebhookLog, db, utcnow
from chatbot.rate_limiter import Allowance, Decision, RateLimiter
from chatbot.redact import sender_key
from chatbot.services import QUEUE_NAME
from tests.conftest import BOT_NUMBER

pytestmark = pytest.mark.postgres

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"
# Job fields that hold the moment of the enqueue, which two enqueues never share.
MOMENTS = {b"created_at", b"enqueued_at"}


def rq_enqueue_call(queue: Queue, message_id: int, sender: str) -> Job:
    """The long way: RQ's own enqueue_call with the options enqueue_processing uses."""
    return queue.enqueue_call(
        tasks.process_message,
        args=(message_id,),
        job_id=queueing.job_id_for(message_id),
        timeout=queueing.JOB_TIMEOUT,
        retry=queueing.JOB_RETRY,
        rate_limit=RateLimit(key=sender_key(sender), concurrency=1),
        on_failure=Callback(tasks.apologise_when_failed_for_good),
        result_ttl=86400,
        failure_ttl=7 * 86400,
        description=f"process message {message_id}",
    )


def redis_state(redis: Redis) -> dict:
    """Every key with its type, whether it expires, and its value; sorted sets as their order,
    since their scores are timestamps."""
    state = {}
    for key in redis.keys("*"):
        kind = redis.type(key)
        if kind == b"hash":
            value = {name: b"<moment>" if name in MOMENTS else field
                     for name, field in redis.hgetall(key).items()}
        elif kind == b"zset":
            value = redis.zrange(key, 0, -1)
        elif kind == b"list":
            value = redis.lrange(key, 0, -1)
        elif kind == b"set":
            value = redis.smembers(key)
        else:
            value = redis.get(key)
        state[key] = (kind, redis.ttl(key) == -1, value)
    return state


@pytest.fixture
def two_redis_databases(redis_url):
    """Two empty databases of the test Redis: one for each way of enqueueing."""
    server = redis_url.rsplit("/", 1)[0]
    ours, theirs = Redis.from_url(f"{server}/1"), Redis.from_url(f"{server}/2")
    for connection in (ours, theirs):
        connection.flushdb()
    yield ours, theirs
    for connection in (ours, theirs):
        connection.flushdb()
        connection.close()


@pytest.mark.parametrize("scripts_lost", [False, True], ids=["scripts loaded", "scripts lost"])
def test_enqueue_leaves_the_redis_state_of_rqs_own_enqueue(two_redis_databases, scripts_lost):
    ours, theirs = two_redis_databases
    for message_id, sender in ((1, ADA), (2, ADA), (3, BOB)):
        if scripts_lost:
            ours.script_flush()  # as after a Redis restart
        queueing.enqueue_processing(Queue(QUEUE_NAME, connection=ours), message_id, sender)
        rq_enqueue_call(Queue(QUEUE_NAME, connection=theirs), message_id, sender)
    # One difference, ours: RQ's per-sender rate-limit settings expire instead of staying forever.
    config_keys = [key for key in ours.keys("rq:rl:*") if key.count(b":") == 3]
    assert len(config_keys) == 2 and all(0 < ours.ttl(key) <= queueing.RATE_LIMIT_CONFIG_TTL for key in config_keys)
    for key in config_keys:
        ours.persist(key)
    assert redis_state(ours) == redis_state(theirs) != {}
    assert Queue(QUEUE_NAME, connection=ours).job_ids == [queueing.job_id_for(1), queueing.job_id_for(3)]
    assert Job.fetch(queueing.job_id_for(2), connection=ours).get_status() == JobStatus.RATE_LIMITED


def test_touching_a_conversation_binds_the_sql_peewee_writes(services):
    TOUCH_FRESH.bind(utcnow(), BOB, "", True, datetime.min)  # the first use writes the SQL
    values = (utcnow(), ADA, "whatsapp:+15550009999", True, utcnow() - timedelta(hours=1))
    assert TOUCH_FRESH.bind(*values) == Conversation.touch_fresh(*values).sql()


def stored(model, row_id: int, *unshared: str) -> dict:
    row = model.select().where(model.id == row_id).dicts().get()
    return {name: value for name, value in row.items() if name not in ("id", *unshared)}


def test_insert_row_stores_what_peewee_insert_stores(services):
    conversation = Conversation.resume_or_start_id(ADA)
    question = {"conversation": conversation, "role": "user", "content": "Ça va? 👍🏽", "status": "pending",
                "metadata": {"to": BOT_NUMBER, "media": [{"url": "https://x", "content_type": "image/jpeg"}]}}
    fast = Message.insert_row(twilio_sid="SM" + "a" * 32, **question)
    slow = Message.insert(twilio_sid="SM" + "b" * 32, **question).execute()
    assert stored(Message, fast, "twilio_sid", "created_at") == stored(Message, slow, "twilio_sid", "created_at")
    notice = {"conversation": conversation, "role": "assistant", "content": "Slow down", "status": "unsent",
              "reply_to": fast, "metadata": {"canned": "sender_limited"}}
    assert stored(Message, Message.insert_row(**notice), "created_at") == \
        stored(Message, Message.insert(**notice).execute(), "created_at")
    audit = {"method": "POST", "path": "/whatsapp/webhook", "headers": {"X-Twilio-Signature": "[redacted]"},
             "body": "Body=hi", "response_status": 200, "processing_ms": 1.5, "signature_valid": True,
             "message_sid": "SM" + "a" * 32, "verdict": "allowed"}
    assert stored(WebhookLog, WebhookLog.insert_row(**audit), "received_at") == \
        stored(WebhookLog, WebhookLog.insert(**audit).execute(), "received_at")


def test_insert_row_keeps_the_message_sid_unique(services):
    conversation = Conversation.resume_or_start_id(ADA)
    Message.insert_row(conversation=conversation, role="user", content="hi", status="pending", twilio_sid="SM1")
    with pytest.raises(IntegrityError), db.database.atomic():
        Message.insert_row(conversation=conversation, role="user", content="hi", status="pending", twilio_sid="SM1")


def test_rate_limit_keys_expire_after_their_window(redis):
    limiter = RateLimiter(redis, per_sender=1, global_limit=10, window=60, clock=lambda: 6000.0)
    assert limiter.check(ADA) == Decision(Allowance.ALLOWED)
    assert limiter.check(ADA) == Decision(Allowance.SENDER_LIMITED, notify=True)
    assert limiter.check(ADA) == Decision(Allowance.SENDER_LIMITED, notify=False)
    keys = redis.keys("chatbot:ratelimit:*")
    # The sender's counter, the global counter, the sender's notice marker, the window's notice count:
    # kept through the next window, whose sliding count still weighs this one.
    assert len(keys) == 4
    assert all(0 < redis.ttl(key) <= 125 for key in keys)


def test_rate_limiter_counts_on_when_redis_has_lost_its_scripts(redis):
    limiter = RateLimiter(redis, per_sender=1, global_limit=10, window=60, clock=lambda: 6000.0)
    limiter.check(ADA)
    redis.script_flush()
    assert limiter.check(ADA) == Decision(Allowance.SENDER_LIMITED, notify=True)
