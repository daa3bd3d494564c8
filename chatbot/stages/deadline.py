"""The deadline gate: a model call that would not finish inside the job's deadline waits for the next run."""
from __future__ import annotations

import time
from collections.abc import Callable

from chatbot.models import Status
from chatbot.stages.base import Stage, Turn, Verdict

# A model call that would have less time than this before the job's deadline waits for the next run.
MIN_AI_SECONDS = 5.0


class DeadlineStage(Stage):
    """Leaves a message for the job's next run when too little of this run's time is left."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock

    def verdict(self, turn: Turn) -> Verdict | None:
        if turn.until is None or self.clock() < turn.until - MIN_AI_SECONDS:
            return None
        return Verdict(status=Status.PENDING, later=True)
