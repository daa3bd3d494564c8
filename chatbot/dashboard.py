"""The admin dashboard's figures, over every WhatsApp number or one, each computed by the database."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from peewee import Expression, Value, fn

from chatbot.models import Conversation, Message, Origin, ReplyPart, Role, Status, utcnow

# The admin's playground is an operator trying the bot, not traffic: it counts nowhere here.
NOT_PLAYGROUND = Message.origin != Origin.PLAYGROUND.value


# How many senders the dashboard lists by what their answers cost.
TOP_SPENDERS = 10


@dataclass(frozen=True)
class Spend:
    """What the AI's answers of a period cost in USD, and how many of them came without a cost."""

    usd: float
    unknown: int


@dataclass(frozen=True)
class ModelSpend:
    model: str
    usd: float
    unknown: int


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
    # Spend since UTC midnight, over the last 7 days and since the 1st of the month (UTC); by model
    # and the costliest senders, both this month.
    spend_today: Spend
    spend_week: Spend
    spend_month: Spend
    spend_by_model: list[ModelSpend]
    top_spenders: list[tuple[str, float]]
    # This week's AI answers that record the model asked for, and those a fallback model wrote.
    ai_answers_week: int
    fallback_answers_week: int


def compute_stats(now: datetime | None = None, number: str | None = None) -> DashboardStats:
    """Return the dashboard figures of `number`'s conversations (a conversation key: "" is the default
    number; None: every number); the week is the last 7 days, today starts at UTC midnight."""
    now = now or utcnow()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week = now - timedelta(days=7)
    month = today.replace(day=1)
    counted = _counted(number)
    messages = Message.select().where(counted)
    questions = messages.where(Message.role == Role.USER.value, Message.created_at >= week)
    asked = questions.count()
    failed = questions.where(Message.status == Status.FAILED.value).count()
    parts, delivered, undelivered = ReplyPart.delivery_counts(week, number)
    conversations = Conversation.select().where(
        Conversation.is_active == True,  # noqa: E712
        Conversation.id.not_in(Message.select(Message.conversation).where(~NOT_PLAYGROUND)),
    )
    return DashboardStats(
        messages_today=messages.where(Message.created_at >= today).count(),
        messages_week=messages.where(Message.created_at >= week).count(),
        active_conversations=(conversations if number is None
                              else conversations.where(Conversation.number == number)).count(),
        error_rate=(failed / asked) if asked else None,
        median_latency_ms=_median_latency(week, counted),
        tokens_week=(
            Message.select(fn.COALESCE(fn.SUM(Message.total_tokens), 0))
            .where(Message.role == Role.ASSISTANT.value, Message.created_at >= week, counted)
            .scalar()
        ),
        delivery_rate=(delivered / parts) if parts else None,
        failed_parts_week=undelivered,
        spend_today=Spend(*Message.spend(today, number=number)),
        spend_week=Spend(*Message.spend(week, number=number)),
        spend_month=Spend(*Message.spend(month, number=number)),
        spend_by_model=[ModelSpend(*row) for row in Message.spend_by_model(month, number)],
        top_spenders=Message.top_spenders(month, TOP_SPENDERS, number),
        **_fallback_use(week, counted),
    )


def _counted(number: str | None) -> Expression:
    """Match the messages the figures count: no playground trial, and only `number`'s when given."""
    return NOT_PLAYGROUND & Message.on_number(number)


def _fallback_use(since: datetime, counted: Expression) -> dict[str, int]:
    answers = Message.select().where(
        Message.role == Role.ASSISTANT.value,
        Message.created_at >= since,
        Message.model.is_null(False),
        counted,
        # metadata is JSON with sorted keys and ": " separators; `**` is a case-insensitive LIKE on
        # SQLite and Postgres alike (a `_` in a slug matches any one character: close enough here).
        Message.metadata ** Value('%"requested_model": "%', converter=False),
    )
    asked_for = Value('%"requested_model": "', converter=False).concat(Message.model).concat('"%')
    return {"ai_answers_week": answers.count(),
            "fallback_answers_week": answers.where(~(Message.metadata ** asked_for)).count()}


def _median_latency(since: datetime, counted: Expression) -> float | None:
    timed = Message.select(Message.latency_ms).where(
        Message.role == Role.ASSISTANT.value,
        Message.created_at >= since,
        Message.latency_ms.is_null(False),
        counted,
    )
    count = timed.count()
    if not count:
        return None
    # The middle row (or the two middle rows) by latency, picked by the database.
    middle = timed.order_by(Message.latency_ms).offset((count - 1) // 2).limit(2 - count % 2)
    values = [row.latency_ms for row in middle]
    return sum(values) / len(values)
