"""Which spending caps are reached now: since when, how many messages each refused, and whose.

The budget gate (chatbot.stages.budget) writes into each message it refuses the cap that refused it
and that cap's amount. A cap counts as reached while messages of its current period (a sender's day
on a number, a month) were refused under the amount still in force: raising or lowering the cap ends
it (the next message meets the new amount), and so does the end of the period.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from chatbot.models import Conversation, Message, Origin, Role, Status
from chatbot.stages.budget import CAP_NOTE, CAP_USD_NOTE, Cap, Caps, period_of

# How each cap is named where a message says what refused it.
CAP_WORDS = {
    Cap.NUMBER_MONTHLY: "the number's monthly budget",
    Cap.MONTHLY: "the monthly budget of every number",
    Cap.SENDER_DAILY: "the daily budget per sender",
}


@dataclass
class CapReached:
    """One cap over its amount: a number's month, everyone's month, or one sender's day on a number."""

    cap: Cap
    limit: float
    # The conversation key of the number ("" the default); None for the monthly budget of every number.
    number: str | None
    # The sender cut off, for a daily cap; None for a monthly one.
    sender: str | None
    since: datetime
    # When its period ends: the cap lets messages through again then, unless it is reached again.
    until: datetime
    refused: int = 0
    # The (sender, number) pairs it refused: the conversations to mark in the list.
    customers: set[tuple[str, str]] = field(default_factory=set)
    # The sender's name as WhatsApp gave it ("" when unknown), for a daily cap.
    profile_name: str = ""


def reached(caps: Caps, number_cap: Callable[[str], float | None], now: datetime,
            zone_name: str) -> list[CapReached]:
    """Return the caps reached now, those over every number or a number first, each with its refusals.

    `caps` are the caps in force over every number and per sender; `number_cap(key)` is a number's
    own monthly budget (None: none)."""
    month_begins = period_of(Cap.MONTHLY, now, zone_name)[0]
    found: dict[tuple, CapReached] = {}
    refusals = (
        Message.select(Message.created_at, Message.metadata, Conversation.user_phone, Conversation.number,
                       Conversation.profile_name)
        .join(Conversation)
        .where(Message.role == Role.USER.value, Message.status == Status.OVER_BUDGET.value,
               Message.created_at >= month_begins, Message.origin != Origin.PLAYGROUND.value)
        .order_by(Message.id)
        .namedtuples()
    )
    for refusal in refusals:
        cap, amount = _cap_of(refusal.metadata)
        if cap is None:
            continue  # refused before messages named their cap
        begins, ends = period_of(cap, now, zone_name)
        in_force = {Cap.MONTHLY: caps.monthly, Cap.SENDER_DAILY: caps.sender_daily}.get(cap)
        if cap is Cap.NUMBER_MONTHLY:
            in_force = number_cap(refusal.number)
        if refusal.created_at < begins or in_force is None or not math.isclose(amount, in_force):
            continue
        number = None if cap is Cap.MONTHLY else refusal.number
        sender = refusal.user_phone if cap is Cap.SENDER_DAILY else None
        entry = found.setdefault((cap, number, sender), CapReached(cap, in_force, number, sender,
                                                                   since=refusal.created_at, until=ends))
        entry.refused += 1
        entry.customers.add((refusal.user_phone, refusal.number))
        entry.profile_name = refusal.profile_name or entry.profile_name
    return sorted(found.values(), key=lambda entry: (entry.cap is Cap.SENDER_DAILY, entry.since))


def refused_by(metadata: dict) -> str:
    """Say which cap refused a message, from its metadata ('' when it was refused before messages said)."""
    cap, amount = _cap_of(metadata)
    return "" if cap is None else f"{CAP_WORDS[cap]} (${amount:g})"


def _cap_of(metadata: dict) -> tuple[Cap | None, float]:
    try:
        return Cap(metadata[CAP_NOTE]), float(metadata[CAP_USD_NOTE])
    except (KeyError, TypeError, ValueError):
        return None, 0.0
