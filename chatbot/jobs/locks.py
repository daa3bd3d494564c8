"""The conversation lock: one job at a time per conversation, renewed while it runs."""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from redis.exceptions import LockError, RedisError

from chatbot.errors import SenderBusy
from config import Config

log = logging.getLogger(__name__)

# The conversation lock lives `ttl` seconds (CONVERSATION_LOCK_TTL) unless its holder renews it, so a
# killed worker's lock is gone by the time RQ hands its job to another worker.
LOCK_TTL = Config.conversation_lock_ttl
LOCK_WAIT = 30


@contextmanager
def conversation_lock(redis, conversation_id, message_id: int, wait: float = LOCK_WAIT, ttl: int = LOCK_TTL):
    """Hold the conversation's lock, renewing it from a thread while the job runs."""
    lock = redis.lock(f"chatbot:lock:conversation:{conversation_id}", timeout=ttl,
                      blocking_timeout=wait, thread_local=False)
    if not lock.acquire():
        raise SenderBusy(f"conversation of message_id={message_id} is being processed elsewhere")
    done = threading.Event()

    def renew():
        while not done.wait(ttl / 4):
            try:
                lock.extend(ttl, replace_ttl=True)
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

