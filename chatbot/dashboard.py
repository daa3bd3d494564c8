"""The admin dashboard's numbers, each computed by the database."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from peewee import fn

from chatbot.models import Conversation, Message, Origin, ReplyPart, Role, Status, utcnow

# The admin's playground is an operator trying the bot, not traffic: it counts nowhere here.
NOT_PLAYGROUND = Message.origin != Origin.PLAYGROUND.value


@dataclass(frozen=True)
class DashboardStats:
    messages_today: int
    messages_week: int
    active_conversations: int
    error_rate: float | None
    median_latency_ms: float | None
    tokens_week: int
    # Of the reply parts Twilio took this week: the share it reported delivered (or read), and how
    # many it reported failed or undelivered.
    delivery_rate: float | None
    failed_parts_week: int


def compute_stats(now: datetime | None = None) -> DashboardStats:
    """Return the dashboard figures; the week is the last 7 days, today starts at UTC midnight."""
    now = now or utcnow()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week = now - timedelta(days=7)
    messages = Message.select().where(NOT_PLAYGROUND)
    questions = messages.where(Message.role == Role.USER.value, Message.created_at >= week)
    asked = questions.count()
    failed = questions.where(Message.status == Status.FAILED.value).count()
    parts, delivered, undelivered = ReplyPart.delivery_counts(week)
    return DashboardStats(
        messages_today=messages.where(Message.created_at >= today).count(),
        messages_week=messages.where(Message.created_at >= week).count(),
        active_conversations=Conversation.select().where(
            Conversation.is_active == True,  # noqa: E712
            Conversation.id.not_in(Message.select(Message.conversation).where(~NOT_PLAYGROUND)),
        ).count(),
        error_rate=(failed / asked) if asked else None,
        median_latency_ms=_median_latency(week),
        tokens_week=(
            Message.select(fn.COALESCE(fn.SUM(Message.total_tokens), 0))
            .where(Message.role == Role.ASSISTANT.value, Message.created_at >= week, NOT_PLAYGROUND)
            .scalar()
        ),
        delivery_rate=(delivered / parts) if parts else None,
        failed_parts_week=undelivered,
    )


def _median_latency(since: datetime) -> float | None:
    timed = Message.select(Message.latency_ms).where(
        Message.role == Role.ASSISTANT.value,
        Message.created_at >= since,
        Message.latency_ms.is_null(False),
        NOT_PLAYGROUND,
    )
    count = timed.count()
    if not count:
        return None
    # The middle row (or the two middle rows) by latency, picked by the database.
    middle = timed.order_by(Message.latency_ms).offset((count - 1) // 2).limit(2 - count % 2)
    values = [row.latency_ms for row in middle]
    return sum(values) / len(values)
