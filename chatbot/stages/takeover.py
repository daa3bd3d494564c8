"""The takeover gate: while an operator answers a conversation in person, its messages wait for them."""
from __future__ import annotations

from chatbot.models import Status
from chatbot.stages.base import Stage, Turn, Verdict


class TakeoverStage(Stage):
    """Holds a taken-over conversation's messages for the operator, never the AI."""

    def verdict(self, turn: Turn) -> Verdict | None:
        if turn.conversation.paused_at is None:
            return None
        return Verdict(status=Status.WAITING)
