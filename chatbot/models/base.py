"""What every model shares: the clock, the enums, JSON fields, the batch size of deletes."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum

from peewee import (
    Model,
    TextField,
)

from chatbot.models.db import database


def utcnow() -> datetime:
    """Return the current UTC time without tzinfo (stored the same on SQLite and Postgres)."""
    return datetime.now(UTC).replace(tzinfo=None)


class JSONField(TextField):
    """JSON stored as text, portable across SQLite and Postgres."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class Origin(StrEnum):
    """Where a user message came from: only WhatsApp messages are ever answered through Twilio."""

    WHATSAPP = "whatsapp"
    CONSOLE = "console"
    PLAYGROUND = "playground"  # an operator trying the bot in the admin; never sent, never counted
    # A campaign's template message, stored in the recipient's conversation so that a reply is read
    # in its light; sent by the campaign's job, never by the answering jobs or the sweep.
    CAMPAIGN = "campaign"


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class Status(StrEnum):
    """Where a message is in its life: inbound ones get answered, outbound ones get sent."""

    PENDING = "pending"
    ANSWERED = "answered"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"
    UNSENT = "unsent"
    SENT = "sent"
    SEND_FAILED = "send_failed"
    SUPERSEDED = "superseded"  # a fallback reply replaced by a real answer after `flask retry-failed`
    WAITING = "waiting"  # a user message held for a person: an operator has taken the conversation over
    OPTED_OUT = "opted_out"  # a user message from a sender who wrote STOP: stored, never answered
    NOT_ALLOWED = "not_allowed"  # a user message from a sender the access list keeps out
    OVER_BUDGET = "over_budget"  # a user message not sent to the AI: a spending cap was reached
    # A reply WhatsApp would refuse: the user's last message is more than 24 hours old and no
    # approved template is configured for the number. Kept for the operator, never retried.
    OUTSIDE_WINDOW = "outside_window"


class BaseModel(Model):
    class Meta:
        database = database


# Rows deleted per transaction by the retention cleanup, so no lock is held for long.
DELETE_BATCH = 500

