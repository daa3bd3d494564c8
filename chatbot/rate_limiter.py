"""Per-sender and global message limits in Redis (fixed windows)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from redis import Redis

from chatbot.tasks import sender_key

PREFIX = "chatbot:ratelimit:"


class Verdict(str, Enum):
    ALLOWED = "allowed"
    SENDER_LIMITED = "sender_limited"
    GLOBAL_LIMITED = "global_limited"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    # True for the first refused message of the sender in this window: it gets the one notice.
    notify: bool = False

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOWED


class RateLimiter:
    """Counts messages per sender and in total per window; one notice per sender per window."""

    def __init__(self, redis: Redis, per_sender: int, global_limit: int, window: int,
                 clock=time.time):
        self.redis = redis
        self.per_sender = per_sender
        self.global_limit = global_limit
        self.window = window
        self.clock = clock

    def check(self, sender: str) -> Decision:
        """Count one message from `sender` and say whether it may reach the AI."""
        bucket = int(self.clock() // self.window)
        who = sender_key(sender)
        sender_counter = f"{PREFIX}{who}:{bucket}"
        global_counter = f"{PREFIX}global:{bucket}"
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(sender_counter).expire(sender_counter, self.window + 5)
            pipe.incr(global_counter).expire(global_counter, self.window + 5)
            sent_by_sender, _, sent_by_all, _ = pipe.execute()
        if sent_by_sender > self.per_sender:
            verdict = Verdict.SENDER_LIMITED
        elif sent_by_all > self.global_limit:
            verdict = Verdict.GLOBAL_LIMITED
        else:
            return Decision(Verdict.ALLOWED)
        notice_marker = f"{PREFIX}{who}:{bucket}:notified"
        first = bool(self.redis.set(notice_marker, 1, nx=True, ex=self.window + 5))
        return Decision(verdict, notify=first)
