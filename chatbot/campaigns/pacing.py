"""Pacing: a number's campaign sends spread at CAMPAIGN_RATE a second, across every worker and job.

Each send claims the next free moment of its number from Redis (one script: the later of now and
the last claim plus the spacing) and sleeps until it. Redis's own clock decides, so workers on
different machines share one pace. The spacing is HEADROOM wider than 1/CAMPAIGN_RATE: a request
held up a few milliseconds on its way then never arrives as the eleventh in one of Twilio's seconds.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis

from chatbot.redact import sender_key

KEY_PREFIX = "chatbot:campaign-pace:"
# 5%: 10 a second are spaced 105 ms apart, so ten requests span 1.05 s; 50 ms of jitter between the
# first and the eleventh still keeps them in different seconds.
HEADROOM = 0.05
# The claim outlives the moment it names by this much, then Redis forgets it.
KEEP_MS = 60_000

# KEYS[1] the number's pace; ARGV[1] the spacing in microseconds; ARGV[2] what to keep past the slot, in ms.
# Returns how long to wait for the claimed moment, in microseconds.
CLAIM = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
redis.call('SET', KEYS[1], string.format('%d', slot + tonumber(ARGV[1])),
           'PX', math.floor((slot - now) / 1000) + tonumber(ARGV[2]))
return slot - now
"""


class Pacer:
    """Hands out each number's send moments at most `rate` a second, shared by every process."""

    def __init__(self, redis: Redis, rate: float, sleep: Callable[[float], None] = time.sleep):
        self.redis = redis
        self.spacing_us = round(1_000_000 * (1 + HEADROOM) / rate)
        self.sleep = sleep
        self._claim = redis.register_script(CLAIM)

    def wait_turn(self, number: str) -> float:
        """Wait for `number`'s next free moment to send; return the seconds waited."""
        wait = self._claim(keys=[KEY_PREFIX + sender_key(number or "default")],
                           args=[self.spacing_us, KEEP_MS]) / 1_000_000
        if wait > 0:
            self.sleep(wait)
        return wait
