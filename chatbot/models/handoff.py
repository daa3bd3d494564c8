"""Handoffs to a person: why the assistant called one, who took it, how long the customer waited;
the team's internal notes on a conversation and their canned replies."""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, TextField, fn

from chatbot.models.base import BaseModel, utcnow
from chatbot.models.conversation import Conversation, Message


class HandoffReason(StrEnum):
    CUSTOMER_REQUEST = "customer_request"  # /human or one of HANDOFF_PHRASES, or the model heard it
    MISSING_KNOWLEDGE = "missing_knowledge"
    UNSUPPORTED_REQUEST = "unsupported_request"
    POLICY = "policy"
    TOOL_FAILURE = "tool_failure"
    REPEATED_FAILURE = "repeated_failure"  # HANDOFF_AFTER_FAILURES answers in a row failed or were not covered


# What the model may give as its reason (the request_human tool's enum); the others are ours.
MODEL_REASONS = (HandoffReason.CUSTOMER_REQUEST, HandoffReason.MISSING_KNOWLEDGE, HandoffReason.UNSUPPORTED_REQUEST,
                 HandoffReason.POLICY, HandoffReason.TOOL_FAILURE)
REASON_WORDS = {
    HandoffReason.CUSTOMER_REQUEST: "the customer asked for a person",
    HandoffReason.MISSING_KNOWLEDGE: "the assistant did not know the answer",
    HandoffReason.UNSUPPORTED_REQUEST: "the assistant cannot do what was asked",
    HandoffReason.POLICY: "a policy needs a person",
    HandoffReason.TOOL_FAILURE: "a tool the assistant uses failed",
    HandoffReason.REPEATED_FAILURE: "the assistant failed several times in a row",
}


def reason_in_words(reason: str) -> str:
    """Say why a person was called, in words (a reason of a later version as it is)."""
    try:
        return REASON_WORDS[HandoffReason(reason)]
    except ValueError:
        return reason


class Handoff(BaseModel):
    """One call for a person in one conversation, from its opening to its resolution."""

    conversation = ForeignKeyField(Conversation, on_delete="CASCADE", index=True, backref="handoffs")
    # The customer message that called the person (None when it was deleted since).
    message = ForeignKeyField(Message, null=True, on_delete="SET NULL")
    reason = CharField(max_length=32)
    # How it was called: "command", "phrase", "model" or "failures".
    trigger = CharField(max_length=16)
    summary = TextField(default="")
    opened_at = DateTimeField(default=utcnow, index=True)
    claimed_by = CharField(max_length=64, null=True)
    claimed_at = DateTimeField(null=True)
    first_reply_at = DateTimeField(null=True)
    resolved_at = DateTimeField(null=True, index=True)
    resolved_by = CharField(max_length=64, null=True)
    # The team was told (by at least one channel), and when it was last reminded.
    notified_at = DateTimeField(null=True)
    reminded_at = DateTimeField(null=True)
    # Why the last notification failed on some channel, in one line ("" when none did).
    notify_error = TextField(default="")
    notify_attempts = IntegerField(default=0)

    class Meta:
        table_name = "handoff"

    @classmethod
    def open_ones(cls):
        """Select the handoffs nobody has resolved, the longest waiting first."""
        return (cls.select(cls, Conversation).join(Conversation)
                .where(cls.resolved_at.is_null()).order_by(cls.opened_at, cls.id))

    @classmethod
    def open_for(cls, conversation_id) -> Handoff | None:
        return cls.get_or_none(cls.conversation == conversation_id, cls.resolved_at.is_null())

    @classmethod
    def waiting_count(cls) -> int:
        return cls.select().where(cls.resolved_at.is_null()).count()

    @classmethod
    def unclaimed_since(cls, cutoff: datetime):
        """Select the open handoffs nobody claimed, opened (or last reminded of) before `cutoff`."""
        return cls.select().where(cls.resolved_at.is_null(), cls.claimed_at.is_null(),
                                  fn.COALESCE(cls.reminded_at, cls.opened_at) < cutoff)

    @property
    def reason_words(self) -> str:
        return reason_in_words(self.reason)


class Note(BaseModel):
    """What one of the team wrote on a conversation for the others: never sent to the customer."""

    conversation = ForeignKeyField(Conversation, on_delete="CASCADE", index=True, backref="notes")
    author = CharField(max_length=64)
    text = TextField()
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "note"


class CannedReply(BaseModel):
    """A reply the team sends often, kept in the admin to be picked instead of typed."""

    title = CharField(max_length=100, unique=True)
    text = TextField()
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "canned_reply"
