"""The handoff gate: a customer who asks for a person (the /human command, or one of HANDOFF_PHRASES
anywhere in the message) gets one, with no AI call. While a person is called, the takeover gate after
this one holds the customer's messages for them."""
from __future__ import annotations

import re

from chatbot.handoff import Handoffs
from chatbot.models import HandoffReason, Status
from chatbot.stages.base import Stage, Turn, Verdict
from chatbot.stages.words import CommandWords

KIND = "handoff"


class HandoffRequests(Stage):
    def __init__(self, handoffs: Handoffs, words: CommandWords, phrases: tuple[str, ...]):
        self.handoffs = handoffs
        self.words = words
        phrases = [re.escape(phrase) for phrase in phrases]
        # Whole words: "real person" is a request, "surreal personality" is not.
        self.phrases = re.compile(r"\b(?:" + "|".join(phrases) + r")\b", re.IGNORECASE) if phrases else None

    def claims(self, question) -> bool:
        return self.trigger_of(question.content) is not None

    def trigger_of(self, text: str) -> str | None:
        """How `text` asks for a person: "command", "phrase", or None when it does not."""
        if self.words.command_in(text) == "human":
            return "command"
        if self.phrases is not None and self.phrases.search(" ".join(text.split())):
            return "phrase"
        return None

    def verdict(self, turn: Turn) -> Verdict | None:
        if turn.conversation.paused_at is not None:
            return None  # a person has it already: the takeover gate holds the message for them
        trigger = self.trigger_of(turn.question.content)
        if trigger is None:
            return None
        handoff = self.handoffs.call(turn.conversation, turn.question, HandoffReason.CUSTOMER_REQUEST, trigger,
                                     summary=turn.question.content[:500])
        if handoff is None:
            return Verdict(status=Status.WAITING)
        # The message waits for the person, as the ones after it will; the customer is told once.
        return Verdict(status=Status.WAITING, reply=self.handoffs.holding_message(), kind=KIND,
                       note={"handoff": handoff.id})
