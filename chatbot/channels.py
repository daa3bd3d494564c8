"""Channels: where a conversation's messages come from and where its replies go.

WhatsApp, the console (`flask chat`) and the admin's playground share one processor. Each channel
brings what differs: the gates its messages pass, the sender that delivers replies, the origin
stamped on what is stored, and whether attachments and per-number settings exist at all.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from chatbot.media import MediaFetcher
from chatbot.models import Origin
from chatbot.numbers import NumberDirectory
from chatbot.stages.access import AccessPolicy
from chatbot.stages.approved import ApprovedAnswers
from chatbot.stages.base import Stage
from chatbot.stages.budget import Budgets
from chatbot.stages.commands import UserCommands
from chatbot.stages.deadline import DeadlineStage
from chatbot.stages.handoff import HandoffRequests
from chatbot.stages.optouts import OptOuts
from chatbot.stages.ratings import RatingReplies
from chatbot.stages.rehearsal import CustomersOwnCommands, HandoffPreview
from chatbot.stages.takeover import TakeoverStage


@dataclass(frozen=True)
class Channel:
    """What the processor needs to know of where a conversation lives."""

    origin: Origin
    # Delivers replies: the WhatsApp client, or a stand-in with its send/send_template/show_typing.
    sender: object
    # The gates before the AI, asked in this order.
    stages: tuple[Stage, ...]
    # Reads attachments; None where no attachment can arrive (they are answered as unreadable).
    media: MediaFetcher | None = None
    # The numbers' own settings; None where every conversation answers with the defaults.
    numbers: NumberDirectory | None = None


def whatsapp_channel(sender, opt_outs: OptOuts, commands: UserCommands, access: AccessPolicy, budgets: Budgets,
                     media: MediaFetcher, numbers: NumberDirectory, approved: ApprovedAnswers | None = None,
                     handoff: HandoffRequests | None = None, clock: Callable[[], float] = time.monotonic) -> Channel:
    """Customers on WhatsApp: STOP and START first (they work for everyone), then access (a kept-out
    sender gets nothing else), their commands, their answer to "How did I do?", a request for a
    person, takeover (or a handoff) holding messages for the person, the caps, the job's deadline,
    and last the business's approved answers (an answer like any other: budgeted, and only within
    the deadline)."""
    stages = (opt_outs, access, commands, RatingReplies(), *((handoff,) if handoff else ()), TakeoverStage(),
              budgets, DeadlineStage(clock))
    return Channel(Origin.WHATSAPP, sender, stages + ((approved,) if approved else ()), media, numbers)


def operator_channel(origin: Origin, sender, opt_outs: OptOuts, commands: UserCommands,
                     customers_own: CustomersOwnCommands, handoff: HandoffPreview,
                     approved: ApprovedAnswers | None = None, clock: Callable[[], float] = time.monotonic) -> Channel:
    """An operator trying the assistant (the console, the playground): the customers' commands answer
    as on WhatsApp (/help, /reset, STOP and START for the test user), except that a real customer's
    own commands are not carried out and /human calls nobody; no access list or caps stand in the
    way; a takeover and the deadline still apply, and approved answers answer."""
    stages = (customers_own, opt_outs, commands, handoff, TakeoverStage(), DeadlineStage(clock))
    return Channel(origin, sender, stages + ((approved,) if approved else ()))
