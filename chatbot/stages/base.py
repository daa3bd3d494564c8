"""What every gate shares: the one question it answers about a message, and the verdict it gives.

A gate (a stage) looks at one stored user message before the AI would see it and says whether the
message stops there, and with what: the status it is left in, and a canned reply when the user is
to be told something. `None` lets the message go on to the next gate, and past the last to the AI.
The processor applies a verdict the same way whichever gate gave it, so a new gate (handoff,
approved answers) is one class, not another branch in the processor.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from chatbot.models import Conversation, Message, Status
from chatbot.numbers import Assistant


@dataclass(frozen=True)
class Verdict:
    """Where a message stops before the AI."""

    # The status the message is left in.
    status: Status
    # Sent as the message's answer (a command's reply, a notice); None: the user is told nothing.
    reply: str | None = None
    # The canned reply's kind, kept in its metadata ("command:help", "access", "budget_monthly").
    kind: str = ""
    # Added to the message's metadata: why it stopped, for the operator.
    note: dict = field(default_factory=dict)
    # Counted in the refusals metric under this name ("access", "budget"); None: not a refusal.
    refused: str | None = None
    # The message itself is gone with everything of its sender (they erased it): nothing to settle.
    erased: bool = False
    # The conversation ended with this message (/reset, an erasure): the sender's later messages
    # moved to a new conversation and are answered there, with nothing of the old one in context.
    restarted: bool = False
    # Not settled now: the job runs again and the message meets the gates afresh.
    later: bool = False
    # The reply answers the question as the AI would have (an approved answer): it enters the
    # conversation's context, and what finding it cost (`cost`, USD, by `model`) counts in spend.
    answer: bool = False
    cost: float | None = None
    model: str | None = None


@dataclass(frozen=True)
class Turn:
    """The message a gate judges, with what it may need to judge it."""

    conversation: Conversation
    question: Message
    # How the number the conversation is with answers (greeting, caps, template).
    assistant: Assistant
    # The job's deadline as a clock() time; None: no deadline (the console, the playground).
    until: float | None = None


class Stage(ABC):
    """One gate before the AI."""

    @abstractmethod
    def verdict(self, turn: Turn) -> Verdict | None:
        """Return where `turn`'s message stops, or None to let it go on."""

    def settle(self, turn: Turn, cost: float | None) -> None:
        """Learn what became of a message this gate let through: its answer cost `cost` USD, or
        (None) it reached no AI answer, or one whose cost is unknown."""
        return None  # most gates hold nothing for a message they let through

    def claims(self, question: Message) -> bool:
        """Whether this gate answers `question` on its own whatever it holds (a command does): such
        a message ends a burst rather than joining the next AI answer."""
        return False
