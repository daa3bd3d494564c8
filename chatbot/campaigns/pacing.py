"""Pacing: a number's campaign sends spread at CAMPAIGN_RATE a second, across every worker and job.

Each send asks Redis for its turn right before it goes (one script, on Redis's own clock, so workers
on different machines share one pace) and is let through only when both hold: the number's last send
is 1/CAMPAIGN_RATE ago, and fewer than CAMPAIGN_RATE sends went in the last WINDOW (a second and
HEADROOM). Otherwise it is told how long to wait, sleeps, and asks again. The turn is taken when the
send is about to go, not before a sleep it may wake late from, and the window is a little over a
second, so a request held up a few milliseconds on its way never arrives as the eleventh in one of
Twilio's seconds.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from redis import Redis

from chatbot.redact import sender_key

KEY_PREFIX = "chatbot:campaign-pace:"
# 5 %: at most CAMPAIGN_RATE sends in any 1.05 s; a steady 10 a second becomes 9.5.
HEADROOM = 0.05
WINDOW_US = round(1_000_000 * (1 + HEADROOM))

# KEYS[1] the number's recent sends (a sorted set of their times, in microseconds); ARGV[1] the window,
# ARGV[2] the most sends in it, ARGV[3] the least time between two sends (microseconds). Returns 0 when
# the turn is taken (and recorded), else how many microseconds to wait before asking again.
TAKE_TURN = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local window, most, spacing = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local wait = 0
if redis.call('ZCARD', KEYS[1]) >= most then
  wait = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + window - now
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
if last then
  wait = math.max(wait, tonumber(last) + spacing - now)
end
if wait > 0 then
  return wait
end
redis.call('ZADD', KEYS[1], now, string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.floor(window / 1000) + 1000)
return 0
"""


class Pacer:
    """Lets each number's sends go at most `rate` a second, shared by every process."""

    def __init__(self, redis: Redis, rate: float, sleep: Callable[[float], None] = time.sleep):
        self.redis = redis
        # At least one send per window: a rate under one a second is met by the spacing alone.
        self.most = max(1, int(rate))
        self.spacing_us = round(1_000_000 / rate)
        self.sleep = sleep
        self._take_turn = redis.register_script(TAKE_TURN)

    def wait_turn(self, number: str) -> float:
        """Wait until `number` may send again and take that turn; return the seconds waited."""
        key = KEY_PREFIX + sender_key(number or "default")
        waited = 0.0
        while True:
            wait = self._take_turn(keys=[key], args=[WINDOW_US, self.most, self.spacing_us]) / 1_000_000
            if wait <= 0:
                return waited
            self.sleep(wait)
            waited += wait
