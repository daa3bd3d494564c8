"""Locks renewed while a job runs: one job at a time per conversation, and per campaign."""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from redis.exceptions import LockError, RedisError

from chatbot.errors import CampaignBusy, SenderBusy
from config import Config

log = logging.getLogger(__name__)

# The conversation lock lives `ttl` seconds (CONVERSATION_LOCK_TTL) unless its holder renews it, so a
# killed worker's lock is gone by the time RQ hands its job to another worker.
LOCK_TTL = Config.conversation_lock_ttl
LOCK_WAIT = 30


@contextmanager
def conversation_lock(redis, conversation_id, message_id: int, wait: float = LOCK_WAIT, ttl: int = LOCK_TTL):
    """Hold the conversation's lock, renewing it from a thread while the job runs."""
    busy = SenderBusy(f"conversation of message_id={message_id} is being processed elsewhere")
    with renewed_lock(redis, f"chatbot:lock:conversation:{conversation_id}", busy, f"message_id={message_id}",
                      wait, ttl):
        yield


@contextmanager
def campaign_lock(redis, campaign_id: int, wait: float = LOCK_WAIT, ttl: int = LOCK_TTL):
    """Hold the campaign's lock, renewed while its job sends: two workers never send one campaign."""
    busy = CampaignBusy(f"campaign_id={campaign_id} is being sent by another job")
    with renewed_lock(redis, f"chatbot:lock:campaign:{campaign_id}", busy, f"campaign_id={campaign_id}", wait, ttl):
        yield


@contextmanager
def renewed_lock(redis, name: str, busy: Exception, holder: str, wait: float, ttl: int):
    """Hold the lock `name` (raising `busy` when it stays taken for `wait` seconds), renewing it from a
    thread every quarter of `ttl`: a killed holder's lock lapses within `ttl` seconds."""
    lock = redis.lock(name, timeout=ttl, blocking_timeout=wait, thread_local=False)
    if not lock.acquire():
        raise busy
    done = threading.Event()

    def renew():
        while not done.wait(ttl / 4):
            try:
                lock.extend(ttl, replace_ttl=True)
            except (LockError, RedisError):
                log.warning("%s could not renew its lock %s", holder, name)
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
            log.warning("%s lock %s expired before release", holder, name)
