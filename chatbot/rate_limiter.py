"""Per-sender and global message limits in Redis (fixed windows)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from redis import Redis

from chatbot.redact import sender_key

PREFIX = "chatbot:ratelimit:"


class Allowance(str, Enum):
    """Whether the limits let a message reach the AI, and if not, which limit held it back."""

    ALLOWED = "allowed"
    SENDER_LIMITED = "sender_limited"
    GLOBAL_LIMITED = "global_limited"


@dataclass(frozen=True)
class Decision:
    allowance: Allowance
    # True for the first refused message of the sender in this window: it gets the one notice.
    notify: bool = False

    @property
    def allowed(self) -> bool:
        return self.allowance is Allowance.ALLOWED


# One round trip per message, atomic: count the sender's message and the total in this window,
# and when either is over its limit, claim the sender's one notice for the window.
# KEYS: sender counter, global counter, notice marker. ARGV: key lifetime, per-sender limit, global limit.
# Returns {allowance, notify}: allowance 0 allowed, 1 sender limited, 2 global limited; notify 1 for the claim.
CHECK_SCRIPT = """
local sent_by_sender = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local sent_by_all = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
local allowance = 0
if sent_by_sender > tonumber(ARGV[2]) then
    allowance = 1
elseif sent_by_all > tonumber(ARGV[3]) then
    allowance = 2
else
    return {0, 0}
end
local first = redis.call('SET', KEYS[3], 1, 'NX', 'EX', ARGV[1])
return {allowance, first and 1 or 0}
"""
ALLOWANCES = (Allowance.ALLOWED, Allowance.SENDER_LIMITED, Allowance.GLOBAL_LIMITED)

# What a limited sender is told, once per window.
LIMIT_NOTICES = {
    Allowance.SENDER_LIMITED: "You're sending messages faster than I can answer. Please wait a minute, "
                            "then send your question again.",
    Allowance.GLOBAL_LIMITED: "I'm getting a lot of messages right now. Please try again in a few minutes.",
}


class RateLimiter:
    """Counts messages per sender and in total per window; one notice per sender per window."""

    def __init__(self, redis: Redis, per_sender: int, global_limit: int, window: int,
                 clock=time.time):
        self.redis = redis
        self.per_sender = per_sender
        self.global_limit = global_limit
        self.window = window
        self.clock = clock
        self._check = redis.register_script(CHECK_SCRIPT)

    def check(self, sender: str) -> Decision:
        """Count one message from `sender` and say whether it may reach the AI."""
        bucket = int(self.clock() // self.window)
        who = sender_key(sender)
        keys = [f"{PREFIX}{who}:{bucket}", f"{PREFIX}global:{bucket}", f"{PREFIX}{who}:{bucket}:notified"]
        allowance, notify = self._check(keys=keys, args=[self.window + 5, self.per_sender, self.global_limit])
        return Decision(ALLOWANCES[allowance], notify=bool(notify))
