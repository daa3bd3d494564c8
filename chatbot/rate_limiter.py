"""Per-sender and global message limits of each number in Redis (sliding windows)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

from redis import Redis

from chatbot.redact import sender_key

PREFIX = "chatbot:ratelimit:"


class Allowance(StrEnum):
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


# One round trip per message, atomic. A sliding window: the count is this window's plus the last
# window's, weighted by how much of it still overlaps the last `window` seconds, so a burst across a
# window boundary cannot pass twice the limit. When over a limit, the sender's one notice for the
# window is claimed, and a notice is only sent while fewer than the notice cap went out this window.
# KEYS: sender now, sender before, all now, all before, sender's notice marker, notices sent.
# ARGV: key lifetime, per-sender limit, global limit, weight of the previous window, notice cap.
# Returns {allowance, notify}: allowance 0 allowed, 1 sender limited, 2 global limited; notify 1 for the claim.
CHECK_SCRIPT = """
local weight = tonumber(ARGV[4])
local function rate(now_key, before_key)
    local now = redis.call('INCR', now_key)
    redis.call('EXPIRE', now_key, ARGV[1])
    local before = redis.call('GET', before_key)
    return now + weight * (before and tonumber(before) or 0)
end
local by_sender = rate(KEYS[1], KEYS[2])
local by_all = rate(KEYS[3], KEYS[4])
local allowance = 0
if by_sender > tonumber(ARGV[2]) then
    allowance = 1
elseif by_all > tonumber(ARGV[3]) then
    allowance = 2
else
    return {0, 0}
end
if not redis.call('SET', KEYS[5], 1, 'NX', 'EX', ARGV[1]) then
    return {allowance, 0}
end
local notices = redis.call('INCR', KEYS[6])
redis.call('EXPIRE', KEYS[6], ARGV[1])
return {allowance, notices <= tonumber(ARGV[5]) and 1 or 0}
"""
# At most this many limit notices go out per window: in a flood each one is a paid Twilio send.
MAX_NOTICES_PER_WINDOW = 20
ALLOWANCES = (Allowance.ALLOWED, Allowance.SENDER_LIMITED, Allowance.GLOBAL_LIMITED)

# What a limited sender is told, once per window.
LIMIT_NOTICES = {
    Allowance.SENDER_LIMITED: "You're sending messages faster than I can answer. Please wait a minute, "
                              "then send your question again.",
    Allowance.GLOBAL_LIMITED: "I'm getting a lot of messages right now. Please try again in a few minutes.",
}


class RateLimiter:
    """Counts messages per sender and in total over a sliding window; one notice per sender per window,
    and at most MAX_NOTICES_PER_WINDOW in all."""

    def __init__(self, redis: Redis, per_sender: int, global_limit: int, window: int,
                 clock=time.time):
        self.redis = redis
        self.per_sender = per_sender
        self.global_limit = global_limit
        self.window = window
        self.clock = clock
        self._check = redis.register_script(CHECK_SCRIPT)

    def check(self, sender: str, number: str = "") -> Decision:
        """Count one message from `sender` to `number` (a conversation key, "" for the default number)
        and say whether it may reach the AI: each number has its own limits."""
        now = self.clock()
        bucket = int(now // self.window)
        overlap = 1.0 - (now % self.window) / self.window
        on_number = f":{sender_key(number)}" if number else ""
        who = sender_key(sender) + on_number
        everyone = "global" + on_number
        keys = [f"{PREFIX}{who}:{bucket}", f"{PREFIX}{who}:{bucket - 1}",
                f"{PREFIX}{everyone}:{bucket}", f"{PREFIX}{everyone}:{bucket - 1}",
                f"{PREFIX}{who}:{bucket}:notified", f"{PREFIX}notices:{bucket}"]
        allowance, notify = self._check(keys=keys, args=[2 * self.window + 5, self.per_sender, self.global_limit,
                                                         repr(overlap), MAX_NOTICES_PER_WINDOW])
        return Decision(ALLOWANCES[allowance], notify=bool(notify))
