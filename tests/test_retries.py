"""The one retry loop that the AI adapter and the WhatsApp client share."""
from __future__ import annotations

import pytest

from chatbot.errors import AIError, WhatsAppError
from chatbot.retries import MAX_RETRY_AFTER, backoff_delay, with_retries


def failing(*errors, then="ok"):
    calls = []

    def attempt():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return then

    return attempt, calls


def test_transient_failures_are_retried_with_growing_waits():
    attempt, calls = failing(WhatsAppError("busy", retryable=True), WhatsAppError("busy", retryable=True))
    waits = []
    assert with_retries(attempt, attempts=3, backoff=1.0, sleep=waits.append, label="test") == "ok"
    assert len(calls) == 3
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0


def test_a_permanent_failure_is_raised_at_once():
    attempt, calls = failing(AIError("bad key", retryable=False))
    with pytest.raises(AIError, match="bad key"):
        with_retries(attempt, attempts=3, backoff=1.0, sleep=lambda _: None, label="test")
    assert len(calls) == 1


def test_the_last_transient_failure_is_raised_after_every_attempt():
    attempt, calls = failing(*[WhatsAppError(f"busy {n}", retryable=True) for n in range(3)])
    with pytest.raises(WhatsAppError, match="busy 2"):
        with_retries(attempt, attempts=3, backoff=0.0, sleep=lambda _: None, label="test")
    assert len(calls) == 3


def test_retry_after_is_honoured_up_to_a_cap():
    assert backoff_delay(1, backoff=1.0, retry_after=4.0) == 4.0
    assert backoff_delay(1, backoff=1.0, retry_after=3600.0) == MAX_RETRY_AFTER


def test_before_retry_may_stop_the_loop():
    attempt, calls = failing(AIError("slow", retryable=True))

    def out_of_time(error, number, delay):
        raise AIError("deadline", retryable=False)

    with pytest.raises(AIError, match="deadline"):
        with_retries(attempt, attempts=3, backoff=1.0, sleep=lambda _: None, label="test", before_retry=out_of_time)
    assert len(calls) == 1


def test_zero_attempts_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 1"):
        with_retries(lambda: "never", attempts=0, backoff=1.0, sleep=lambda _: None, label="test")
