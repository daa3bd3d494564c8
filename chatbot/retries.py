"""The one retry loop for calls to upstreams: exponential backoff with jitter, Retry-After honoured."""
from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TypeVar

from chatbot.errors import UpstreamError

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 30.0
Result = TypeVar("Result")


def backoff_delay(number: int, backoff: float, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt `number`: the upstream's Retry-After (capped) when it
    gave one, else `backoff` doubled per attempt, jittered so clients that failed together spread out."""
    if retry_after is not None:
        return min(retry_after, MAX_RETRY_AFTER)
    return backoff * (2 ** (number - 1)) * (0.5 + random.random() / 2)


def with_retries(attempt: Callable[[], Result], *, attempts: int, backoff: float, sleep: Callable[[float], None],
                 label: str, before_retry: Callable[[UpstreamError, int, float], None] | None = None) -> Result:
    """Call `attempt` until it returns, retrying UpstreamErrors marked retryable up to `attempts` times.

    `before_retry(error, number, delay)` runs after every retryable failure, the last one included,
    and may raise instead (a deadline that the wait would overrun).
    """
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except UpstreamError as error:
            if not error.retryable:
                raise
            delay = backoff_delay(number, backoff, error.retry_after)
            if before_retry is not None:
                before_retry(error, number, delay)
            if number == attempts:
                raise
            log.warning("%s attempt %d failed, retrying in %.1fs: %s", label, number, delay, error)
            sleep(delay)
    raise ValueError(f"attempts must be at least 1, not {attempts}")
