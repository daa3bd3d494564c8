"""The admin dashboard's figures, over every WhatsApp number or one, each computed by the database.

Every inbound message of a period has one outcome, decided by its own status and its answer's:

- answered: its status is answered and nothing says the answer failed to arrive (a command's canned
  reply counts; so does an answer Twilio is still sending);
- failed: the AI call failed (status failed): the user got the apology instead;
- undelivered: answered, but the answer never arrived: its status is send_failed or outside_window,
  or Twilio reported one of its parts failed or undelivered;
- rate_limited: held back by the per-sender or global rate limit (status rate_limited);
- refused: not sent to the AI on purpose: not_allowed, over_budget or opted_out;
- waiting: none of these yet: pending, or held for an operator who took the conversation over.

A burst's earlier messages share the answer of its last one; they count as answered.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from peewee import SQL, Case, Expression, PostgresqlDatabase, Select, Value, fn

from chatbot.models import (
    DELIVERY_FAILURES,
    UNDELIVERED_STATUSES,
    Conversation,
    Handoff,
    KnowledgeSpend,
    Message,
    Rating,
    ReplyPart,
    Role,
    Status,
    utcnow,
)
from chatbot.models.db import database

# The admin's playground is an operator trying the bot, not traffic: it counts nowhere here.
NOT_PLAYGROUND = Message.counted_in_spend()

# How many senders the dashboard lists by what their answers cost.
TOP_SPENDERS = 10

OUTCOMES = ("answered", "failed", "undelivered", "rate_limited", "refused", "waiting")
REFUSED = (Status.NOT_ALLOWED.value, Status.OVER_BUDGET.value, Status.OPTED_OUT.value)
# The percentiles of reply times the dashboard shows, by nearest rank: the value at position
# ceil(p × n / 100) of the n sorted times (the median of 4 times is the 2nd).
PERCENTILES = (50, 95)
ERROR_LABELS = {"ai_failure": "AI failure", Status.SEND_FAILED.value: "could not be sent",
                Status.OUTSIDE_WINDOW.value: "outside the 24-hour window"}


@dataclass(frozen=True)
class Period:
    """A span the figures cover, cut into hours or days of the dashboard's time zone."""

    key: str
    label: str
    buckets: int
    bucket: timedelta


PERIODS = {
    "24h": Period("24h", "24 hours", 24, timedelta(hours=1)),
    "7d": Period("7d", "7 days", 7, timedelta(days=1)),
    "30d": Period("30d", "30 days", 30, timedelta(days=1)),
}
DEFAULT_PERIOD = "24h"


@dataclass(frozen=True)
class Spend:
    """What the AI's answers of a period cost in USD, and how many of them came without a cost."""

    usd: float
    unknown: int


@dataclass(frozen=True)
class Handoffs:
    """Calls for a person in a period: how many by reason, and the wait for a person's first reply."""

    by_reason: dict[str, int]
    replied: int
    # Minutes; None when no handoff of the period has a first reply yet.
    first_reply_p50: float | None
    first_reply_max: float | None

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


@dataclass(frozen=True)
class RatingGroup:
    """The ratings customers gave one AI configuration on one number in a period."""

    number: str
    # "db:NAME" for a stored AI configuration, "env" for the environment's settings.
    ai_source: str
    count: int
    average: float
    # How many were 4 or 5.
    good: int

    @property
    def good_share(self) -> float:
        return self.good / self.count if self.count else 0.0

    @property
    def ai_configuration(self) -> str:
        return self.ai_source.removeprefix("db:") if self.ai_source.startswith("db:") else "environment settings"


@dataclass(frozen=True)
class ModelUse:
    """One model's answers of the period: tokens in and out, and what they cost (unknown counted apart)."""

    model: str
    answers: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    usd: float
    unknown: int


@dataclass(frozen=True)
class ErrorCount:
    """How often one kind of error happened: an AI failure, an answer's status, or a Twilio error code."""

    kind: str
    count: int
    # The status of the message list behind it (None: the Problems view lists it).
    status: str | None

    @property
    def label(self) -> str:
        return ERROR_LABELS.get(self.kind, self.kind)


@dataclass(frozen=True)
class ReplyTimes:
    """Percentiles of how long answers took, in milliseconds (None: no answer timed)."""

    end_to_end_p50: float | None = None
    end_to_end_p95: float | None = None
    ai_p50: float | None = None
    ai_p95: float | None = None
    end_to_end_timed: int = 0
    ai_timed: int = 0


@dataclass(frozen=True)
class DashboardStats:
    period: Period
    zone: str
    # Where each bucket starts (UTC, naive as stored) and its label in the dashboard's zone.
    bucket_starts: list[datetime]
    bucket_labels: list[str]
    # Inbound messages per bucket by outcome (see the module's docstring), and over the period.
    outcomes: dict[str, list[int]]
    totals: dict[str, int]
    reply_times: ReplyTimes
    # Per bucket: "end_to_end_p50", "end_to_end_p95", "ai_p50", "ai_p95" in milliseconds.
    reply_times_by_bucket: dict[str, list[float | None]]
    errors: list[ErrorCount]
    models: list[ModelUse]
    active_conversations: int
    # Spend since UTC midnight, over the last 7 days and since the 1st of the month (UTC); by model
    # and the costliest senders, both this month.
    spend_today: Spend
    spend_week: Spend
    spend_month: Spend
    spend_by_model: list[ModelUse]
    top_spenders: list[tuple[str, float]]
    # This week's AI answers that record the model asked for, and those a fallback model wrote.
    ai_answers_week: int
    fallback_answers_week: int
    # The period's handoffs to a person by reason, and how long customers waited for a person's first reply.
    handoffs: Handoffs
    # The period's ratings by number and AI configuration, most rated first.
    ratings: list[RatingGroup]

    @property
    def inbound(self) -> int:
        return sum(self.totals.values())

    @property
    def failed_all(self) -> int:
        """Inbound messages whose user got no answer from the AI or never got the answer."""
        return self.totals["failed"] + self.totals["undelivered"]


def compute_stats(now: datetime | None = None, number: str | None = None, period: str = DEFAULT_PERIOD,
                  zone: str = "UTC") -> DashboardStats:
    """Return the dashboard figures of `number`'s conversations (a conversation key: "" is the default
    number; None: every number) over `period` (a key of PERIODS), cut into hours or days of `zone`."""
    now = now or utcnow()
    chosen = PERIODS[period]
    starts = bucket_starts(chosen, now, ZoneInfo(zone))
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    week = now - timedelta(days=7)
    month = today.replace(day=1)
    counted = _counted(number)
    outcomes = _outcomes(starts, counted)
    by_bucket = _reply_time_percentiles(starts, counted, per_bucket=True)
    conversations = Conversation.select().where(
        Conversation.is_active == True,  # noqa: E712
        Conversation.id.not_in(Message.select(Message.conversation).where(~NOT_PLAYGROUND)),
        Conversation.id.in_(Message.select(Message.conversation).where(Message.role == Role.USER.value)),
    )
    return DashboardStats(
        period=chosen,
        zone=zone,
        bucket_starts=starts,
        bucket_labels=bucket_labels(chosen, starts, ZoneInfo(zone)),
        outcomes=outcomes,
        totals={outcome: sum(counts) for outcome, counts in outcomes.items()},
        reply_times=ReplyTimes(**_reply_time_percentiles(starts, counted, per_bucket=False)[0]),
        reply_times_by_bucket={name: [by_bucket.get(index, {}).get(name) for index in range(len(starts))]
                               for name in ("end_to_end_p50", "end_to_end_p95", "ai_p50", "ai_p95")},
        errors=_errors(starts[0], counted),
        models=_model_use(starts[0], counted),
        active_conversations=(conversations if number is None
                              else conversations.where(Conversation.number == number)).count(),
        spend_today=spend_since(today, number),
        spend_week=spend_since(week, number),
        spend_month=spend_since(month, number),
        # The month's models, costliest first: the same figures as the period's, over the month.
        spend_by_model=sorted(_model_use(month, counted), key=lambda use: (-use.usd, use.model)),
        top_spenders=Message.top_spenders(month, TOP_SPENDERS, number),
        **_fallback_use(week, counted),
        handoffs=_handoffs(starts[0], number),
        ratings=_ratings(starts[0], number),
    )


def _ratings(since: datetime, number: str | None) -> list[RatingGroup]:
    """The ratings given since `since` (on `number` when given), by number and AI configuration."""
    good = fn.SUM(Case(None, [(Rating.score >= 4, 1)], 0))
    rows = (Rating.select(Rating.number, Rating.ai_source, fn.COUNT(Rating.id), fn.AVG(Rating.score), good)
            .where(Rating.created_at >= since).group_by(Rating.number, Rating.ai_source))
    if number is not None:
        rows = rows.where(Rating.number == number)
    groups = [RatingGroup(number=key, ai_source=source, count=count, average=float(average), good=int(good or 0))
              for key, source, count, average, good in rows.tuples()]
    return sorted(groups, key=lambda group: (-group.count, group.number, group.ai_source))


def _handoffs(since: datetime, number: str | None) -> Handoffs:
    """The handoffs opened since `since` (on `number`'s conversations when given)."""
    opened = Handoff.select(Handoff.reason, Handoff.opened_at, Handoff.first_reply_at).join(Conversation).where(
        Handoff.opened_at >= since)
    if number is not None:
        opened = opened.where(Conversation.number == number)
    by_reason: dict[str, int] = {}
    waits = []
    for reason, opened_at, first_reply_at in opened.tuples():
        by_reason[reason] = by_reason.get(reason, 0) + 1
        if first_reply_at is not None:
            waits.append((first_reply_at - opened_at).total_seconds() / 60)
    waits.sort()
    return Handoffs(by_reason=dict(sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))),
                    replied=len(waits), first_reply_p50=waits[(len(waits) - 1) // 2] if waits else None,
                    first_reply_max=waits[-1] if waits else None)


def spend_since(since: datetime, number: str | None = None) -> Spend:
    """What the AI cost since `since` (`number`'s share only, when given): its answers, and embedding
    the knowledge's passages, which no answer carries."""
    usd, unknown = Message.spend(since, number=number)
    return Spend(usd + KnowledgeSpend.since(since, number), unknown)


def bucket_starts(period: Period, now: datetime, zone: ZoneInfo) -> list[datetime]:
    """Return where each of the period's buckets starts, oldest first, as naive UTC: whole hours or
    midnights of `zone`, the last bucket holding `now`."""
    local_now = now.replace(tzinfo=UTC).astimezone(zone)
    if period.bucket == timedelta(hours=1):
        # Stepped in UTC: a day that changes the clocks still has one bucket per hour that passed.
        this_hour = local_now.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        return [(this_hour - hours * period.bucket).replace(tzinfo=None)
                for hours in range(period.buckets - 1, -1, -1)]
    return [datetime.combine(local_now.date() - timedelta(days=days), time(0), zone)
            .astimezone(UTC).replace(tzinfo=None)
            for days in range(period.buckets - 1, -1, -1)]


def bucket_labels(period: Period, starts: list[datetime], zone: ZoneInfo) -> list[str]:
    """Name each bucket by its start in `zone`: 14:00 for an hour, 2026-03-05 for a day."""
    shape = "%H:%M" if period.bucket == timedelta(hours=1) else "%Y-%m-%d"
    return [start.replace(tzinfo=UTC).astimezone(zone).strftime(shape) for start in starts]


def _counted(number: str | None) -> Expression:
    """Match the messages the figures count: no playground trial, and only `number`'s when given."""
    return NOT_PLAYGROUND & Message.on_number(number)


def _bucket_of(moment, starts: list[datetime]) -> Case:
    """Return the index of the bucket `moment` falls in (it is at or after the first start)."""
    return Case(None, [(moment < start, index) for index, start in enumerate(starts[1:])], len(starts) - 1)


def _outcome_of_questions() -> Case:
    """Return each inbound message's outcome (see the module's docstring), in SQL."""
    answer = Message.alias("answer")
    never_arrived = fn.EXISTS(
        answer.select(SQL("1")).where(
            answer.reply_to == Message.id,
            Message.never_arrived(answer),
        )
    )
    return Case(None, [
        (Message.status == Status.RATE_LIMITED.value, "rate_limited"),
        (Message.status.in_(REFUSED), "refused"),
        (Message.status == Status.FAILED.value, "failed"),
        ((Message.status == Status.ANSWERED.value) & never_arrived, "undelivered"),
        (Message.status == Status.ANSWERED.value, "answered"),
    ], "waiting")


def _outcomes(starts: list[datetime], counted: Expression) -> dict[str, list[int]]:
    """Count inbound messages per bucket and outcome, in one query."""
    rows = (
        Message.select(_bucket_of(Message.created_at, starts).alias("bucket"),
                       _outcome_of_questions().alias("outcome"), fn.COUNT(Message.id))
        .where(Message.role == Role.USER.value, Message.created_at >= starts[0], counted)
        # By position: Postgres takes a parameterised expression repeated in GROUP BY for another one.
        .group_by(SQL("1"), SQL("2"))
        .tuples()
    )
    outcomes = {outcome: [0] * len(starts) for outcome in OUTCOMES}
    for bucket, outcome, count in rows:
        outcomes[outcome][bucket] = count
    return outcomes


def _milliseconds_between(later, earlier):
    if isinstance(database.obj, PostgresqlDatabase):
        return fn.date_part("epoch", later - earlier) * 1000
    return (fn.julianday(later) - fn.julianday(earlier)) * 86_400_000


def _reply_time_percentiles(starts: list[datetime], counted: Expression, per_bucket: bool) -> dict[int, dict]:
    """Return, by bucket (all in bucket 0 unless `per_bucket`), the p50 and p95 of the end-to-end reply
    time (the question stored → Twilio took the answer's last part) and of the AI call, in one query."""
    # The answers are the unaliased model, so `counted` (written over Message) matches them.
    answer, question = Message, Message.alias("question")
    bucket = _bucket_of(question.created_at, starts) if per_bucket else Value(0)

    def samples(kind: str, value, present):
        return (
            answer.select(bucket.alias("bucket"), Value(kind).alias("kind"), value.alias("value"))
            .join(question, on=(answer.reply_to == question.id))
            # Answers to answered questions: an apology for a failed AI call is no answer's timing.
            .where(answer.role == Role.ASSISTANT.value, answer.status != Status.SUPERSEDED.value,
                   question.status == Status.ANSWERED.value, question.created_at >= starts[0], present, counted)
        )

    union = (samples("end_to_end", _milliseconds_between(answer.sent_at, question.created_at),
                     answer.sent_at.is_null(False))
             + samples("ai", answer.latency_ms, answer.latency_ms.is_null(False))).alias("sample")
    partition = [union.c.bucket, union.c.kind]
    ranked = Select([union], [
        union.c.bucket, union.c.kind, union.c.value,
        fn.ROW_NUMBER().over(partition_by=partition, order_by=[union.c.value]).alias("position"),
        fn.COUNT(SQL("*")).over(partition_by=partition).alias("timed"),
    ]).alias("ranked")
    # ceil(p × n / 100) in whole numbers, the same on SQLite and Postgres.
    columns = [fn.MIN(Case(None, [(ranked.c.position == (percentile * ranked.c.timed + 99) / 100, ranked.c.value)]))
               for percentile in PERCENTILES]
    query = Select([ranked], [ranked.c.bucket, ranked.c.kind, *columns, fn.MAX(ranked.c.timed)]).group_by(
        ranked.c.bucket, ranked.c.kind)
    found: dict[int, dict] = {}
    for row_bucket, kind, p50, p95, timed in database.execute(query).fetchall():
        found.setdefault(row_bucket, {}).update({f"{kind}_p50": p50, f"{kind}_p95": p95, f"{kind}_timed": timed})
    if not per_bucket:
        found.setdefault(0, {})
    return found


def _errors(since: datetime, counted: Expression) -> list[ErrorCount]:
    """Count the period's errors by kind, most frequent first, in one query: AI failures, answers that
    could not be sent (send_failed) or were held outside the 24-hour window, and each Twilio error code
    its delivery receipts reported."""
    # Typed, so Postgres can match these rows' code with the receipts' error codes.
    no_code = SQL("CAST(NULL AS INTEGER)")
    ai_failures = (
        Message.select(Value("ai_failure").alias("kind"), no_code.alias("code"), fn.COUNT(Message.id))
        .where(Message.role == Role.USER.value, Message.status == Status.FAILED.value,
               Message.created_at >= since, counted)
    )
    unsent = (
        Message.select(Message.status, no_code, fn.COUNT(Message.id))
        .where(Message.role == Role.ASSISTANT.value, Message.status.in_(UNDELIVERED_STATUSES),
               Message.created_at >= since, counted)
        .group_by(Message.status)
    )
    receipts = (
        ReplyPart.select(Value("twilio"), ReplyPart.error_code, fn.COUNT(ReplyPart.id))
        .join(Message)
        .where(ReplyPart.status.in_(DELIVERY_FAILURES), Message.created_at >= since, counted)
        .group_by(ReplyPart.error_code)
    )
    errors = []
    for kind, code, count in database.execute(ai_failures + unsent + receipts).fetchall():
        if not count:
            continue
        if kind == "twilio":
            errors.append(ErrorCount(f"Twilio {code}" if code is not None else "Twilio (no code)", count, None))
        else:
            errors.append(ErrorCount(kind, count, Status.FAILED.value if kind == "ai_failure" else kind))
    return sorted(errors, key=lambda error: (-error.count, error.kind))


def _model_use(since: datetime, counted: Expression) -> list[ModelUse]:
    """Return each model's answers of the period with their tokens and cost, most tokens first."""
    total = fn.COALESCE(fn.SUM(Message.total_tokens), 0)
    return [
        ModelUse(model, answers, int(prompt), int(completion), int(tokens), float(usd), int(unknown))
        for model, answers, prompt, completion, tokens, usd, unknown in (
            Message.select(Message.model, fn.COUNT(Message.id), fn.COALESCE(fn.SUM(Message.prompt_tokens), 0),
                           fn.COALESCE(fn.SUM(Message.completion_tokens), 0), total,
                           fn.COALESCE(fn.SUM(Message.cost), 0), fn.COUNT(Message.id) - fn.COUNT(Message.cost))
            .where(Message.model.is_null(False), Message.created_at >= since, counted)
            .group_by(Message.model)
            .order_by(total.desc(), Message.model)
            .tuples()
        )
    ]


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
