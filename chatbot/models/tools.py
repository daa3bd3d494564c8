"""What the assistant can do besides talk: the HTTP tools an operator defines, every call the model
made to one, and the follow-up messages it scheduled."""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from peewee import Case, CharField, DateTimeField, FloatField, ForeignKeyField, IntegerField, TextField, fn

from chatbot.models.base import BaseModel, JSONField, utcnow
from chatbot.models.conversation import Conversation, Message


class ToolRisk(StrEnum):
    READ = "read"  # runs when the model calls it
    CONFIRM = "confirm"  # runs only after the customer's explicit yes in their next message


class ToolAuth(StrEnum):
    NONE = "none"
    BEARER = "bearer"  # Authorization: Bearer <secret>
    BASIC = "basic"  # Authorization: Basic of <secret>, written "user:password"
    HEADER = "header"  # <auth_header>: <secret>


class Tool(BaseModel):
    """An HTTP endpoint of the business the model may call, filled from a template, never evaluated."""

    name = CharField(max_length=64, unique=True)
    description = TextField()
    method = CharField(max_length=8, default="GET")
    url_template = TextField()
    # JSON with {parameter} placeholders, each replaced by the argument as JSON; "" sends no body.
    body_template = TextField(default="")
    # The JSON Schema of the arguments, offered to the model and checked before any request.
    parameters = JSONField(default=lambda: {"type": "object", "properties": {}})
    auth = CharField(max_length=8, default=ToolAuth.NONE.value)
    # The header's name for ToolAuth.HEADER.
    auth_header = CharField(max_length=100, default="")
    secret_encrypted = TextField(null=True)
    timeout = FloatField(default=10.0)
    risk = CharField(max_length=8, default=ToolRisk.READ.value)
    # The AI configurations offered this tool (their ids); empty: every one.
    ai_configurations = JSONField(default=list)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    def offered_to(self, ai_configuration_id: int | None) -> bool:
        """Whether the AI configuration (None: the environment's) is offered this tool."""
        return not self.ai_configurations or ai_configuration_id in self.ai_configurations


class ToolUseStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"  # the endpoint failed, timed out or was refused; the model was told
    INVALID = "invalid"  # the model's arguments did not fit the schema: no request was made
    AWAITING_YES = "awaiting_yes"  # a confirm tool: asked the customer, runs on their yes
    DECLINED = "declined"  # a confirm tool the customer did not say yes to


FAILED_TOOL_USES = (ToolUseStatus.FAILED.value, ToolUseStatus.INVALID.value)


class ToolUse(BaseModel):
    """One call the model made to a tool (built-in or the operator's), as the transcript shows it."""

    conversation = ForeignKeyField(Conversation, on_delete="CASCADE", index=True, backref="tool_uses")
    # The customer message being answered (None when it was deleted since).
    message = ForeignKeyField(Message, null=True, on_delete="SET NULL")
    tool = CharField(max_length=64)
    # As the model gave them, with secrets and phone numbers masked.
    arguments = JSONField(default=dict)
    # A confirm tool's arguments as given: what runs on the customer's yes (cleared when they say anything else).
    pending_arguments = JSONField(null=True)
    status = CharField(max_length=16, index=True)
    duration_ms = FloatField(null=True)
    # Bytes the endpoint answered with (before the result was cut for the model).
    size = IntegerField(null=True)
    error = TextField(null=True)
    # What the model read back (cut to a few KB).
    result = TextField(null=True)
    # A confirm call run on the customer's yes: when (its result is given again if the answer is retried).
    confirmed_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "tool_use"

    @classmethod
    def awaiting_yes(cls, conversation_id) -> ToolUse | None:
        """The confirm call the assistant asked this customer about, if the customer has not answered yet."""
        return (cls.select().where(cls.conversation == conversation_id, cls.status == ToolUseStatus.AWAITING_YES.value)
                .order_by(cls.id.desc()).first())

    @classmethod
    def counts_since(cls, since: datetime) -> dict[str, tuple[int, int]]:
        """Each tool's calls since `since` and how many of them failed, by tool name."""
        failed = fn.SUM(Case(None, [(cls.status.in_(FAILED_TOOL_USES), 1)], 0))
        rows = cls.select(cls.tool, fn.COUNT(cls.id), failed).where(cls.created_at >= since).group_by(cls.tool).tuples()
        return {name: (calls, int(failures or 0)) for name, calls, failures in rows}

    @classmethod
    def failed_since(cls, since: datetime, limit: int):
        """Select, newest first with their conversations, the calls since `since` that failed or whose
        arguments did not fit (the model was told; the customer may have got a worse answer)."""
        return (cls.select(cls, Conversation).join(Conversation)
                .where(cls.status.in_(FAILED_TOOL_USES), cls.created_at >= since)
                .order_by(cls.created_at.desc(), cls.id.desc()).limit(limit))

    @classmethod
    def confirmed_by(cls, message_id) -> ToolUse | None:
        """The confirm call that customer message said yes to (and that ran), if any."""
        return cls.select().where(cls.message == message_id, cls.confirmed_at.is_null(False)).first()


class FollowUpStatus(StrEnum):
    SCHEDULED = "scheduled"
    SENT = "sent"  # handed to the sender: its message carries the delivery
    CANCELLED = "cancelled"


# A customer has at most this many follow-ups waiting at once.
MAX_SCHEDULED_FOLLOW_UPS = 5


class FollowUp(BaseModel):
    """A message the assistant promised to send this customer later."""

    conversation = ForeignKeyField(Conversation, on_delete="CASCADE", index=True, backref="follow_ups")
    text = TextField()
    due_at = DateTimeField(index=True)
    status = CharField(max_length=16, default=FollowUpStatus.SCHEDULED.value, index=True)
    # The assistant message that carries it, once due.
    sent_message = ForeignKeyField(Message, null=True, on_delete="SET NULL")
    # Who cancelled it: an operator's username, or "STOP".
    cancelled_by = CharField(max_length=64, null=True)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "follow_up"

    @classmethod
    def due(cls, now: datetime):
        return cls.select().where(cls.status == FollowUpStatus.SCHEDULED.value, cls.due_at <= now).order_by(cls.due_at)

    @classmethod
    def scheduled_for(cls, conversation_id) -> int:
        return cls.select().where(cls.conversation == conversation_id,
                                  cls.status == FollowUpStatus.SCHEDULED.value).count()

    @classmethod
    def cancel(cls, *where, by: str) -> int:
        """Cancel the scheduled follow-ups matching `where`; return how many."""
        return (cls.update(status=FollowUpStatus.CANCELLED.value, cancelled_by=by)
                .where(cls.status == FollowUpStatus.SCHEDULED.value, *where).execute())

    @classmethod
    def cancel_for_sender(cls, user_phone: str, number: str, by: str) -> int:
        """Cancel what was promised to `user_phone` on `number` (they wrote STOP there)."""
        conversations = Conversation.select(Conversation.id).where(Conversation.user_phone == user_phone,
                                                                   Conversation.number == number)
        return cls.cancel(cls.conversation.in_(conversations), by=by)

