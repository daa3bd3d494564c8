"""Peewee models and their queries."""
from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from functools import cache

from peewee import (
    JOIN,
    SQL,
    BooleanField,
    Case,
    CharField,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    IntegrityError,
    Model,
    TextField,
    UUIDField,
    fn,
)
from werkzeug.security import check_password_hash, generate_password_hash

from chatbot.crypto import FieldCipher, SecretDecryptionError
from chatbot.db import database
from chatbot.redact import mask_secret
from config import CONTENT_SID_SHAPE, MODEL_SLUG_SHAPE, WHATSAPP_ADDRESS_SHAPE, fallback_models_problem


def utcnow() -> datetime:
    """Return the current UTC time without tzinfo (stored the same on SQLite and Postgres)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class JSONField(TextField):
    """JSON stored as text, portable across SQLite and Postgres."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)

    def python_value(self, value):
        return None if value is None else json.loads(value)


class Origin(str, Enum):
    """Where a user message came from: only WhatsApp messages are ever answered through Twilio."""

    WHATSAPP = "whatsapp"
    CONSOLE = "console"
    PLAYGROUND = "playground"  # an operator trying the bot in the admin; never sent, never counted


class Role(str, Enum):
    USER = "user"
    ASSISTANT = "assistant"


class Status(str, Enum):
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


class Prepared:
    """A statement whose SQL peewee writes once per kind of database; each run only binds values.

    For the webhook's path, where peewee took longer to write each statement than SQLite took to
    run it. `build(*values)` returns the peewee query, and `fields[i].db_value` converts
    `values[i]`: one value per query parameter, in the order they appear in its SQL.
    """

    def __init__(self, build, fields):
        self.build = build
        self.fields = tuple(fields)
        self._sql = {}

    def bind(self, *values) -> tuple[str, list]:
        """Return the SQL and parameters that `build(*values).sql()` would."""
        kind = type(database.obj)
        sql = self._sql.get(kind)
        if sql is None:
            sql = self._sql[kind] = self.build(*values).sql()[0]
        return sql, [field.db_value(value) for field, value in zip(self.fields, values)]

    def execute(self, *values):
        """Run the statement and return the database cursor."""
        return database.execute_sql(*self.bind(*values))


class BaseModel(Model):
    class Meta:
        database = database

    @classmethod
    def insert_row(cls, **values) -> int:
        """Do what `insert(**values).execute()` does, defaults included, without rewriting the SQL."""
        row = {field.name: default() if callable(default) else default
               for field, default in cls._meta.defaults.items() if field.name not in values}
        row.update(values)
        names = tuple(name for name in cls._meta.sorted_field_names if name in row)
        cursor = _prepared_insert(cls, names).execute(*(row[name] for name in names))
        return cursor.fetchone()[0] if database.returning_clause else cursor.lastrowid


@cache
def _prepared_insert(model: type[BaseModel], names: tuple[str, ...]) -> Prepared:
    # Peewee orders an INSERT's columns as the model declares them, which `names` already follows.
    return Prepared(lambda *values: model.insert(**dict(zip(names, values))),
                    [model._meta.fields[name] for name in names])


# Rows deleted per transaction by the retention cleanup, so no lock is held for long.
DELETE_BATCH = 500
# WhatsApp takes free-form replies until this long after the user's last message; later, only an
# approved template.
SERVICE_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class ServiceWindow:
    """WhatsApp's 24-hour window for free-form replies to one sender on one number."""

    # None: the sender never wrote through WhatsApp (a console or playground chat): no window applies.
    last_user_message_at: datetime | None

    @property
    def closes_at(self) -> datetime | None:
        return None if self.last_user_message_at is None else self.last_user_message_at + SERVICE_WINDOW

    def is_closed(self) -> bool:
        """True when the window has closed: a reply now needs an approved template."""
        return self.closes_at is not None and self.closes_at <= utcnow()


class Conversation(BaseModel):
    """One sender's thread with one of the assistant's numbers; at most one is active per sender and number."""

    id = UUIDField(primary_key=True, default=uuid.uuid4)
    user_phone = CharField(max_length=64, index=True)
    # The `whatsapp:+E.164` address the sender wrote to; "" is the default number (TWILIO_WHATSAPP_NUMBER),
    # so conversations stored before there were several numbers, and a changed default, need no rewrite.
    number = CharField(max_length=64, default="")
    profile_name = CharField(max_length=255, default="")
    is_active = BooleanField(default=True, index=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow, index=True)
    # Set while an operator has taken the conversation over: the bot answers nothing until hand-back.
    paused_at = DateTimeField(null=True)
    paused_by = CharField(max_length=64, null=True)

    class Meta:
        table_name = "conversation"

    @classmethod
    def resume_or_start_id(cls, user_phone: str, profile_name: str = "", ttl: int | None = None,
                           number: str = "") -> uuid.UUID:
        """Record activity on the sender's active conversation with `number` (a conversation key:
        "" for the default number) and return its id, starting a new conversation when none is
        active or the active one has been idle longer than `ttl` seconds."""
        now = utcnow()
        cutoff = now - timedelta(seconds=ttl) if ttl else datetime.min
        for (conversation_id,) in TOUCH_FRESH.execute(now, user_phone, number, True, cutoff):
            return cls.id.python_value(conversation_id)
        active = (cls.user_phone == user_phone) & (cls.number == number) & (cls.is_active == True)  # noqa: E712
        # Only a stale one: a conversation a concurrent webhook just started must stay active.
        cls.update(is_active=False).where(active & (cls.updated_at < cutoff)).execute()
        try:
            # A savepoint, so losing a race to a concurrent webhook keeps the outer transaction.
            with database.atomic():
                new_id = uuid.uuid4()
                cls.insert(id=new_id, user_phone=user_phone, number=number, profile_name=profile_name or "").execute()
                return new_id
        except IntegrityError:
            return cls.select(cls.id).where(active).scalar()

    @classmethod
    def idle_since(cls, cutoff: datetime):
        """Select active conversations with no activity since `cutoff`."""
        return cls.select().where(cls.is_active == True, cls.updated_at < cutoff)  # noqa: E712

    @classmethod
    def latest_for(cls, user_phone: str) -> "Conversation | None":
        """Return the sender's most recently active conversation, ended or not."""
        return (
            cls.select()
            .where(cls.user_phone == user_phone)
            .order_by(cls.is_active.desc(), cls.updated_at.desc())
            .first()
        )

    @classmethod
    def listed(cls):
        """Select conversations each with `message_count`, `last_message` (its first 200 characters),
        `waiting` (messages held for a person) and `failures` (user messages the AI failed and replies
        not delivered, superseded ones left out): the admin's list in one query."""
        def of_this(*conditions):
            return Message.select(fn.COUNT(Message.id)).where(Message.conversation == cls.id, *conditions)

        last_message = (
            Message.select(fn.SUBSTR(Message.content, 1, 200))
            .where(Message.conversation == cls.id)
            .order_by(Message.id.desc())
            .limit(1)
        )
        failed_parts = (
            ReplyPart.select(fn.COUNT(ReplyPart.id))
            .join(Message)
            .where(Message.conversation == cls.id, ReplyPart.status.in_(DELIVERY_FAILURES),
                   Message.status != Status.SUPERSEDED.value)
        )
        return cls.select(
            cls,
            of_this().alias("message_count"),
            last_message.alias("last_message"),
            of_this(Message.status == Status.WAITING.value).alias("waiting"),
            # Each count wrapped: `+` between two bare queries would be their UNION.
            (fn.COALESCE(of_this(Message.status.in_(FAILURE_STATUSES)), 0) + fn.COALESCE(failed_parts, 0))
            .alias("failures"),
        )

    @classmethod
    def recent(cls, include_ended: bool, limit: int):
        """Select conversations, most recently active first, each with its `message_count`."""
        query = (
            cls.select(cls, fn.COUNT(Message.id).alias("message_count"))
            .join(Message, JOIN.LEFT_OUTER, on=(Message.conversation == cls.id))
            .group_by(cls.id)
            .order_by(cls.updated_at.desc())
            .limit(limit)
        )
        return query if include_ended else query.where(cls.is_active == True)  # noqa: E712

    @classmethod
    def end(cls, conversation_ids, context) -> int:
        """End these conversations and forget their context: each sender's next message starts afresh."""
        # Context first: with Redis unreachable nothing changes, and the caller can simply retry.
        for conversation_id in conversation_ids:
            context.clear_history(conversation_id)
        return cls.update(is_active=False).where(cls.id.in_(conversation_ids)).execute()

    @classmethod
    def delete_with_history(cls, conversation_ids, context) -> tuple[int, int]:
        """Delete these conversations, their messages, context windows and the webhook log entries
        of their messages (which hold the sender's number); return how many messages and log entries went."""
        # Context first: with Redis unreachable nothing is deleted, and the caller can simply retry.
        for conversation_id in conversation_ids:
            context.clear_history(conversation_id)
        of_these = Message.conversation.in_(conversation_ids)
        with database.atomic():
            sids = [
                message.twilio_sid
                for message in Message.select(Message.twilio_sid).where(of_these, Message.twilio_sid.is_null(False))
            ]
            logs = WebhookLog.delete().where(WebhookLog.message_sid.in_(sids)).execute() if sids else 0
            # Counted first: SQLite does not count the answers its cascade deletes with their questions.
            messages = Message.select().where(of_these).count()
            Message.delete().where(of_these).execute()
            cls.delete().where(cls.id.in_(conversation_ids)).execute()
        return messages, logs

    @classmethod
    def delete_untouched_since(cls, cutoff: datetime, context, batch_size: int = DELETE_BATCH):
        """Delete conversations with no activity since `cutoff` as `delete_with_history` does, at most
        `batch_size` per transaction; yield (conversations, messages, log entries) as each batch commits."""
        while True:
            candidates = [
                conversation_id
                for (conversation_id,) in (
                    cls.select(cls.id)
                    .where(cls.updated_at < cutoff)
                    .order_by(cls.updated_at)
                    .limit(batch_size)
                    .tuples()
                )
            ]
            if not candidates:
                return
            with database.atomic():
                # Ended first, each one checked again under its row lock (Postgres) or the write lock
                # (SQLite): a conversation a new message touched meanwhile is kept, and so is that message.
                claimed = [
                    conversation_id
                    for (conversation_id,) in (
                        cls.update(is_active=False)
                        .where(cls.id.in_(candidates), cls.updated_at < cutoff)
                        .returning(cls.id)
                        .tuples()
                    )
                ]
                messages, logs = cls.delete_with_history(claimed, context) if claimed else (0, 0)
            yield len(claimed), messages, logs

    def service_window(self) -> ServiceWindow:
        """Return WhatsApp's 24-hour window for replies here, opened by the user's last WhatsApp message."""
        # WhatsApp keeps one window per sender and business number: a message in an earlier or a
        # later conversation with the same number opens it just as well.
        last = (
            Message.select(fn.MAX(Message.created_at))
            .join(Conversation)
            .where(
                Conversation.user_phone == self.user_phone,
                Conversation.number == self.number,
                Message.role == Role.USER.value,
                Message.from_whatsapp(),
            )
            .scalar()
        )
        return ServiceWindow(last)

    def touch(self) -> None:
        """Record activity now."""
        self.updated_at = utcnow()
        Conversation.update(updated_at=self.updated_at).where(Conversation.id == self.id).execute()

    @classmethod
    def touch_fresh(cls, now: datetime, user_phone: str, number: str, active: bool, cutoff: datetime):
        """Stamp the sender's active conversation with `number` with `now` if it was active at `cutoff`;
        return its id."""
        return (
            cls.update(updated_at=now)
            .where((cls.user_phone == user_phone) & (cls.number == number) & (cls.is_active == active)
                   & (cls.updated_at >= cutoff))
            .returning(cls.id)
        )


# Every inbound message runs it.
TOUCH_FRESH = Prepared(Conversation.touch_fresh, [Conversation.updated_at, Conversation.user_phone,
                                                  Conversation.number, Conversation.is_active,
                                                  Conversation.updated_at])


class Message(BaseModel):
    """One WhatsApp message, from the user or from the assistant."""

    conversation = ForeignKeyField(Conversation, backref="messages", on_delete="CASCADE", index=True)
    role = CharField(max_length=16, choices=[(r.value, r.value) for r in Role])
    content = TextField()
    created_at = DateTimeField(default=utcnow)
    status = CharField(max_length=16, index=True)
    # Twilio's MessageSid: unique where present, so a redelivered webhook finds its row.
    twilio_sid = CharField(max_length=64, null=True, unique=True)
    reply_to = ForeignKeyField("self", null=True, backref="replies", on_delete="CASCADE")
    metadata = JSONField(default=dict)
    origin = CharField(max_length=16, default=Origin.WHATSAPP.value)
    model = CharField(max_length=128, null=True)
    prompt_tokens = IntegerField(null=True)
    completion_tokens = IntegerField(null=True)
    total_tokens = IntegerField(null=True)
    latency_ms = FloatField(null=True)
    parts_sent = IntegerField(default=0)
    error = TextField(null=True)
    # How many job runs took this user message up (first runs, retries and sweeps' re-queues alike):
    # past MAX_PROCESSING_ATTEMPTS it is given up, so one poison message cannot loop forever.
    attempts = IntegerField(default=0)
    # The part of this answer being handed to Twilio and since when: written before the send, cleared
    # with the part's result. A run that finds it set asks Twilio whether the part went out.
    sending_part = IntegerField(null=True)
    sending_since = DateTimeField(null=True)
    # The operator who wrote this reply by hand (None for the bot's own answers).
    operator = CharField(max_length=64, null=True)
    # What producing this answer cost in USD, as the provider reported it (None: not reported).
    cost = FloatField(null=True)
    # When Twilio took the last part of this answer: minus its question's created_at, the wait the
    # user had from asking to the answer leaving (None until then, and for answers never sent).
    sent_at = DateTimeField(null=True)

    class Meta:
        table_name = "message"

    @classmethod
    def answered_exchanges(cls, conversation: Conversation, limit: int) -> list[tuple[list["Message"], "Message"]]:
        """Return the last `limit` answered user messages grouped with their answers, oldest first: one
        answer may answer several (a burst's, an operator's), listed in its `answers`, replying to the last."""
        questions = list(reversed(
            cls.select()
            .where(
                cls.conversation == conversation,
                cls.role == Role.USER.value,
                cls.status == Status.ANSWERED.value,
            )
            .order_by(cls.id.desc())
            .limit(limit)
        ))
        if not questions:
            return []
        answers = {
            answer.reply_to_id: answer
            for answer in cls.select().where(cls.reply_to.in_([q.id for q in questions])).order_by(cls.id)
        }
        exchanges = []
        for last_id, answer in sorted(answers.items()):
            answered = {*answer.metadata.get("answers", []), last_id}
            exchanges.append(([q for q in questions if q.id in answered], answer))
        return exchanges

    @classmethod
    def outstanding(cls, conversation: Conversation, up_to_id: int):
        """Select the conversation's user messages up to `up_to_id` still needing an answer or a send."""
        unsent_answers = cls.select(cls.reply_to).where(
            cls.conversation == conversation, cls.status == Status.UNSENT.value
        )
        return (
            cls.select()
            .where(
                cls.conversation == conversation,
                cls.role == Role.USER.value,
                cls.id <= up_to_id,
                (cls.status == Status.PENDING.value) | cls.id.in_(unsent_answers),
            )
            .order_by(cls.id)
        )

    @classmethod
    def newest_pending(cls, conversation: Conversation) -> "Message | None":
        """Return the conversation's latest user message still waiting for an answer, if any."""
        return (
            cls.select(cls.id, cls.created_at)
            .where(
                cls.conversation == conversation,
                cls.role == Role.USER.value,
                cls.status == Status.PENDING.value,
            )
            .order_by(cls.id.desc())
            .first()
        )

    @classmethod
    def from_whatsapp(cls):
        """Match messages that came through WhatsApp: background jobs never answer a console line."""
        return cls.origin == Origin.WHATSAPP.value

    @classmethod
    def needing_work(cls, grace: timedelta, horizon: timedelta):
        """Select user messages that should have a job by now: unanswered ones, and ones whose
        answer is still unsent (within `horizon`), oldest first."""
        cutoff = utcnow() - grace
        Answer = cls.alias()
        unsent = Answer.select(Answer.reply_to).where(
            Answer.status == Status.UNSENT.value,
            Answer.created_at < cutoff,
            Answer.created_at >= utcnow() - horizon,
        )
        return (
            cls.select()
            .where(
                cls.role == Role.USER.value,
                ((cls.status == Status.PENDING.value) & (cls.created_at < cutoff)) | cls.id.in_(unsent),
                cls.from_whatsapp(),
            )
            .order_by(cls.id)
        )

    @classmethod
    def give_up_unsent(cls, horizon: timedelta) -> int:
        """Mark answers that could not be sent within `horizon` as failed; return how many."""
        return (
            cls.update(status=Status.SEND_FAILED.value, error=f"not delivered within {horizon}")
            .where(cls.status == Status.UNSENT.value, cls.created_at < utcnow() - horizon)
            .execute()
        )

    @classmethod
    def count_attempt(cls, message_id: int) -> int:
        """Count one more job run taking this message up; return how many there have been."""
        cls.update(attempts=cls.attempts + 1).where(cls.id == message_id).execute()
        return cls.select(cls.attempts).where(cls.id == message_id).scalar() or 0

    @classmethod
    def retry_failed(cls, since: datetime) -> list["Message"]:
        """Put user messages that got the fallback since `since` back in line; return them."""
        failed = list(
            cls.select().where(cls.role == Role.USER.value, cls.status == Status.FAILED.value,
                               cls.created_at >= since, cls.from_whatsapp()).order_by(cls.id)
        )
        cls.put_back_in_line([message.id for message in failed])
        return failed

    @classmethod
    def put_back_in_line(cls, question_ids) -> None:
        """Make these failed user messages pending again, their apologies superseded by the next answer."""
        if not question_ids:
            return
        with database.atomic():
            # A fresh count of attempts: the operator's retry is a new start, not one more lap.
            cls.update(status=Status.PENDING.value, error=None, attempts=0).where(cls.id.in_(question_ids)).execute()
            cls.update(status=Status.SUPERSEDED.value).where(
                cls.reply_to.in_(question_ids), cls.status != Status.UNSENT.value
            ).execute()

    @classmethod
    def put_back_unsent(cls, answer: "Message") -> None:
        """Make an undelivered reply unsent again from its first failed part on (the parts after it go
        again too, to keep the order), so the next job sends the rest."""
        first_failed = (
            ReplyPart.select(fn.MIN(ReplyPart.number))
            .where(ReplyPart.message == answer.id, ReplyPart.status.in_(DELIVERY_FAILURES))
            .scalar()
        )
        parts_sent = answer.parts_sent if first_failed is None else min(answer.parts_sent, first_failed - 1)
        with database.atomic():
            ReplyPart.delete().where(ReplyPart.message == answer.id, ReplyPart.number > parts_sent).execute()
            cls.update(status=Status.UNSENT.value, error=None, parts_sent=parts_sent, sending_part=None,
                       sending_since=None).where(cls.id == answer.id).execute()
            if answer.reply_to_id is not None:
                cls.update(attempts=0).where(cls.id == answer.reply_to_id).execute()

    @classmethod
    def problems(cls, stuck_before: datetime, limit: int):
        """Select, newest first with their conversations, what needs the operator: user messages the AI
        failed, replies not delivered, and user messages unanswered since before `stuck_before`."""
        undelivered_parts = ReplyPart.select(ReplyPart.message).where(ReplyPart.status.in_(DELIVERY_FAILURES))
        question, answer = cls.role == Role.USER.value, cls.role == Role.ASSISTANT.value
        return (
            cls.select(cls, Conversation)
            .join(Conversation)
            .where(
                cls.from_whatsapp(),
                (question & (cls.status == Status.FAILED.value))
                | (answer & cls.status.in_(UNDELIVERED_STATUSES))
                | (answer & (cls.status != Status.SUPERSEDED.value) & cls.id.in_(undelivered_parts))
                | (question & (cls.status == Status.PENDING.value) & (cls.created_at < stuck_before)),
            )
            .order_by(cls.id.desc())
            .limit(limit)
        )

    @classmethod
    def counted_in_spend(cls):
        """Match the answers spend is counted over: the operator's playground trials are left out, as
        from every other figure, and no cap holds them back."""
        return cls.origin != Origin.PLAYGROUND.value

    @classmethod
    def on_number(cls, number: str | None):
        """Match messages of conversations with `number` (a conversation key, "" the default number);
        None matches every number."""
        if number is None:
            return SQL("1 = 1")
        return cls.conversation.in_(Conversation.select(Conversation.id).where(Conversation.number == number))

    @classmethod
    def spend(cls, since: datetime, sender: str | None = None, number: str | None = None) -> tuple[float, int]:
        """Return what the AI's answers since `since` cost in USD (only `sender`'s, or `number`'s, when
        given) and how many of those answers came without a reported cost (counted apart, never as 0)."""
        query = (
            cls.select(fn.COALESCE(fn.SUM(cls.cost), 0), fn.COUNT(cls.id) - fn.COUNT(cls.cost))
            .where(cls.model.is_null(False), cls.created_at >= since, cls.counted_in_spend(), cls.on_number(number))
        )
        if sender is not None:
            query = query.join(Conversation).where(Conversation.user_phone == sender)
        total, unknown = query.tuples().first()
        return float(total or 0), int(unknown or 0)

    @classmethod
    def top_spenders(cls, since: datetime, limit: int, number: str | None = None) -> list[tuple[str, float]]:
        """Return the `limit` senders whose answers since `since` (`number`'s only when given) cost the
        most, with that cost in USD."""
        total = fn.SUM(cls.cost)
        return [
            (sender, float(spent))
            for sender, spent in (
                cls.select(Conversation.user_phone, total)
                .join(Conversation)
                .where(cls.cost.is_null(False), cls.created_at >= since, cls.counted_in_spend(),
                       cls.on_number(number))
                .group_by(Conversation.user_phone)
                .order_by(total.desc(), Conversation.user_phone)
                .limit(limit)
                .tuples()
            )
        ]

    @classmethod
    def spend_of_conversations(cls, conversation_ids) -> dict:
        """Return, by conversation id, what its answers cost in USD so far (conversations with none left out)."""
        return {
            conversation_id: float(spent)
            for conversation_id, spent in (
                cls.select(cls.conversation, fn.SUM(cls.cost))
                .where(cls.conversation.in_(conversation_ids), cls.cost.is_null(False), cls.counted_in_spend())
                .group_by(cls.conversation)
                .tuples()
            )
        }

    @classmethod
    def spent_for_budgets(cls, sender: str, number: str, day_start: datetime,
                          month_start: datetime | None) -> tuple[float, float, float]:
        """Return in one query what `sender`'s answers on `number` (a conversation key) cost since
        `day_start` and, when `month_start` is given, what everyone's answers cost since then, on
        every number and on `number` alone (else 0, 0): the budgets' check before each AI call."""
        on_number = Conversation.number == number
        of_sender_today = (Conversation.user_phone == sender) & on_number & (cls.created_at >= day_start)
        query = cls.select(
            fn.COALESCE(fn.SUM(Case(None, [(of_sender_today, cls.cost)], 0)), 0),
            fn.COALESCE(fn.SUM(cls.cost), 0),
            fn.COALESCE(fn.SUM(Case(None, [(on_number, cls.cost)], 0)), 0),
        ).join(Conversation).where(cls.cost.is_null(False), cls.counted_in_spend())
        if month_start is None:
            # No monthly cap: only this sender's rows of today are read (conversation.user_phone is indexed).
            query = query.where(of_sender_today)
        else:
            query = query.where(cls.created_at >= month_start)
        sender_today, everyone, this_number = query.tuples().first()
        if month_start is None:
            return float(sender_today or 0), 0.0, 0.0
        return float(sender_today or 0), float(everyone or 0), float(this_number or 0)

    def current_answer(self) -> "Message | None":
        """Return the assistant's current answer to this user message, if any."""
        return (
            Message.select()
            .where(Message.reply_to == self, Message.status != Status.SUPERSEDED.value)
            .order_by(Message.id)
            .first()
        )


class ReplyPart(BaseModel):
    """One WhatsApp message of a reply as Twilio took it, and how far its delivery got."""

    message = ForeignKeyField(Message, backref="parts", on_delete="CASCADE")
    number = IntegerField()
    twilio_sid = CharField(max_length=64, unique=True)
    # queued → sent → delivered → read, or failed / undelivered; a status never moves backwards.
    status = CharField(max_length=16, default="queued")
    error_code = IntegerField(null=True)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "reply_part"
        indexes = ((("message", "number"), True),)

    @classmethod
    def record(cls, message_id: int, number: int, twilio_sid: str) -> None:
        """Store a part Twilio took; a re-run recording the same part again changes nothing. Parts of
        stand-ins (`flask chat`, the playground) have no Twilio sid and get no delivery reports."""
        if not TWILIO_MESSAGE_SID.match(twilio_sid):
            return
        cls.insert(message=message_id, number=number, twilio_sid=twilio_sid).on_conflict_ignore().execute()

    @classmethod
    def apply_status(cls, twilio_sid: str, status: str, error_code: int | None) -> str | None:
        """Move the part Twilio calls `twilio_sid` forward to `status`; return why it did not move, or None.

        Twilio's reports arrive out of order and more than once, so a status only replaces earlier
        ones: queued < sent < delivered < read. A failure (failed, undelivered) replaces only queued
        or sent, and is final: a part known delivered stays delivered, a failed one stays failed.
        """
        if status in DELIVERY_PROGRESS:
            earlier = DELIVERY_PROGRESS[:DELIVERY_PROGRESS.index(status)]
        elif status in DELIVERY_FAILURES:
            earlier = ("queued", "sent")
        else:
            return f"status {status!r} is not tracked"
        moved = earlier and (
            cls.update(status=status, error_code=error_code, updated_at=utcnow())
            .where(cls.twilio_sid == twilio_sid, cls.status.in_(earlier))
            .execute()
        )
        if moved:
            return None
        current = cls.select(cls.status).where(cls.twilio_sid == twilio_sid).scalar()
        if current is None:
            return "unknown MessageSid: not a reply part of this service"
        return f"kept {current}: {status} is not newer"

    @classmethod
    def of_conversation(cls, conversation: Conversation) -> dict[int, list["ReplyPart"]]:
        """Return the conversation's parts by the id of their message, each list in sending order."""
        parts: dict[int, list[ReplyPart]] = {}
        for part in (
            cls.select()
            .join(Message)
            .where(Message.conversation == conversation)
            .order_by(cls.message, cls.number)
        ):
            parts.setdefault(part.message_id, []).append(part)
        return parts

    @classmethod
    def latest_failures(cls, conversation_ids) -> dict:
        """Return, by conversation id, the part that settled last when it failed; conversations whose
        latest settled part was delivered (or that have none) are left out."""
        settled = (
            cls.select(fn.MAX(cls.id))
            .join(Message)
            .where(Message.conversation.in_(conversation_ids), cls.status.in_(DELIVERY_SETTLED))
            .group_by(Message.conversation)
        )
        latest = (
            cls.select(cls, Message.conversation)
            .join(Message)
            .where(cls.id.in_(settled), cls.status.in_(DELIVERY_FAILURES))
        )
        return {part.message.conversation_id: part for part in latest}


TWILIO_MESSAGE_SID = re.compile(r"^(SM|MM)[0-9a-f]{32}$")
# How far a part's delivery can get, in order, and the two ways it can end without arriving.
DELIVERY_PROGRESS = ("queued", "sent", "delivered", "read")
DELIVERY_FAILURES = ("failed", "undelivered")
# Statuses that say how the part ended: it reached the phone, or it never will.
DELIVERY_SETTLED = ("delivered", "read", *DELIVERY_FAILURES)
# A reply that never reached the user, and every message status that tells of a failure.
UNDELIVERED_STATUSES = (Status.SEND_FAILED.value, Status.OUTSIDE_WINDOW.value)
FAILURE_STATUSES = (Status.FAILED.value, *UNDELIVERED_STATUSES)


class AccessEntry(BaseModel):
    """A number on the admin-kept allowlist or blocklist (ACCESS_MODE says which one applies)."""

    user_phone = CharField(max_length=64)
    kind = CharField(max_length=8)  # "allow" or "block"
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "access_entry"
        indexes = ((("user_phone", "kind"), True),)

    @classmethod
    def is_listed(cls, user_phone: str, kind: str) -> bool:
        """Say whether `user_phone` (E.164) is on the admin's `kind` list (one lookup in the unique index)."""
        return cls.select().where(cls.user_phone == user_phone, cls.kind == kind).exists()

    @classmethod
    def of_kind(cls, kind: str):
        """Select the admin's `kind` list, newest first."""
        return cls.select().where(cls.kind == kind).order_by(cls.created_at.desc(), cls.id.desc())

    @classmethod
    def add_many(cls, numbers: list[str], kind: str) -> list[str]:
        """Put E.164 `numbers` on the `kind` list; return those that were not on it already."""
        if not numbers:
            return []
        listed = {row.user_phone for row in cls.select(cls.user_phone).where(
            cls.user_phone.in_(numbers), cls.kind == kind)}
        added = [number for number in dict.fromkeys(numbers) if number not in listed]
        if added:
            cls.insert_many([{"user_phone": number, "kind": kind} for number in added]).on_conflict_ignore().execute()
        return added


class Setting(BaseModel):
    """A setting the operator changed at run time in the admin; it wins over the environment's."""

    key = CharField(max_length=64, unique=True)
    value = TextField()
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "setting"

    @classmethod
    def values(cls, *keys: str) -> dict[str, str]:
        """Return the operator's value for each of `keys` they set (one query); unset keys are absent."""
        return {row.key: row.value for row in cls.select(cls.key, cls.value).where(cls.key.in_(keys))}

    @classmethod
    def put(cls, key: str, value: str) -> None:
        """Set `key` to `value`, replacing the operator's earlier choice."""
        (cls.insert(key=key, value=value, updated_at=utcnow())
         .on_conflict(conflict_target=[cls.key], update={cls.value: value, cls.updated_at: utcnow()})
         .execute())

    @classmethod
    def forget(cls, *keys: str) -> None:
        """Drop the operator's values for `keys`: the environment's apply again."""
        cls.delete().where(cls.key.in_(keys)).execute()


class OptOut(BaseModel):
    """A sender who wrote STOP: the bot answers nothing until they write START."""

    user_phone = CharField(max_length=64, unique=True)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "opt_out"


PROVIDERS = ("openrouter",)


class AIConfiguration(BaseModel):
    """An AI provider setup; the active one answers messages (else the environment's)."""

    name = CharField(max_length=100, unique=True)
    provider = CharField(max_length=32, default="openrouter")
    model_name = CharField(max_length=200)
    max_tokens = IntegerField(default=500)
    temperature = FloatField(default=0.7)
    system_prompt = TextField(default="")
    # Comma-separated OpenRouter slugs tried, in order, when the model above cannot answer.
    fallback_models = TextField(default="")
    is_active = BooleanField(default=False, index=True)
    api_key_encrypted = TextField(null=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "ai_configuration"

    @classmethod
    def active(cls) -> "AIConfiguration | None":
        """Return the active configuration, if one is active."""
        return cls.select().where(cls.is_active == True).order_by(cls.updated_at.desc()).first()  # noqa: E712

    @staticmethod
    def field_problem(name: str, value) -> str | None:
        """Say what is wrong with `value` for the field `name`, or None when it is valid: the one set
        of rules that the admin form, the CLI and saving all apply."""
        if name == "name" and not (value or "").strip():
            return "Name is required."
        if name == "provider" and value not in PROVIDERS:
            return "Provider must be OpenRouter."
        if name == "model_name" and not MODEL_SLUG_SHAPE.match(value or ""):
            return "Model must be an OpenRouter slug such as openai/gpt-4o-mini."
        if name == "fallback_models":
            return fallback_models_problem(value)
        if name == "max_tokens" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return "Max tokens must be a whole number of at least 1."
        if name == "temperature" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 2):
            return "Temperature must be a number from 0 to 2."
        return None

    def validation_errors(self) -> dict[str, str]:
        """Return a message per invalid field (empty when the configuration is valid)."""
        problems = {name: self.field_problem(name, getattr(self, name))
                    for name in ("name", "provider", "model_name", "max_tokens", "temperature")}
        return {name: problem for name, problem in problems.items() if problem}

    def set_api_key(self, plaintext: str, cipher: FieldCipher) -> None:
        """Store the API key encrypted; the plaintext never reaches the database."""
        self.api_key_encrypted = cipher.encrypt(plaintext) if plaintext else None

    def api_key(self, cipher: FieldCipher) -> str:
        """Return the decrypted API key ('' when none is stored)."""
        return cipher.decrypt(self.api_key_encrypted) if self.api_key_encrypted else ""

    def masked_key(self, cipher: FieldCipher) -> str:
        """Describe the stored key for display: at most `sk-or-…a1b2`, never the key."""
        if not self.api_key_encrypted:
            return "not set (uses OPENROUTER_API_KEY)"
        try:
            return mask_secret(self.api_key(cipher))
        except SecretDecryptionError:
            return "cannot decrypt (check FIELD_ENCRYPTION_KEY)"

    def activate(self) -> None:
        """Make this the only active configuration."""
        with database.atomic():
            AIConfiguration.update(is_active=False).where(AIConfiguration.id != self.id).execute()
            self.is_active = True
            self.updated_at = utcnow()
            self.save()


# A greeting is sent as its own WhatsApp message, before the first answer.
MAX_GREETING_CHARS = 1000


class WhatsAppNumber(BaseModel):
    """A WhatsApp number the assistant answers on, and how it answers there.

    The default number (TWILIO_WHATSAPP_NUMBER) needs no row: one is added only to give it a label,
    a greeting, its own AI configuration or template, or to switch it off.
    """

    address = CharField(max_length=64, unique=True)  # whatsapp:+E.164, as Twilio posts it in `To`
    label = CharField(max_length=100)
    # None: the active AI configuration (else the environment's settings), as on the default number.
    ai_configuration = ForeignKeyField(AIConfiguration, null=True, on_delete="SET NULL", backref="numbers")
    # Sent once, before the first answer a sender gets from this number ("" sends none).
    greeting = TextField(default="")
    # The approved template that carries a reply past WhatsApp's 24-hour window (None: such replies
    # are marked outside_window for the operator instead).
    template_sid = CharField(max_length=34, null=True)
    # The most this number's answers may cost in a calendar month, in USD (None: no cap of its own).
    monthly_budget = FloatField(null=True)
    is_active = BooleanField(default=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "whatsapp_number"

    @staticmethod
    def field_problem(name: str, value) -> str | None:
        """Say what is wrong with `value` for the field `name`, or None: the rules the admin and the CLI share."""
        if name == "address" and not WHATSAPP_ADDRESS_SHAPE.match(value or ""):
            return "Address must be whatsapp:+ followed by an E.164 number, e.g. whatsapp:+14155238886."
        if name == "label" and not (value or "").strip():
            return "Label is required."
        if name == "label" and len(value) > 100:
            return "Label must be at most 100 characters."
        if name == "greeting" and len(value or "") > MAX_GREETING_CHARS:
            return f"Greeting must be at most {MAX_GREETING_CHARS} characters."
        if name == "template_sid" and value and not CONTENT_SID_SHAPE.match(value):
            return "Template must be a Twilio Content SID: HX followed by 32 hex characters."
        if name == "monthly_budget" and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value <= 0):
            return "Monthly budget must be an amount in USD above 0, or empty for none."
        return None

    def validation_errors(self) -> dict[str, str]:
        """Return a message per invalid field (empty when the number is valid)."""
        problems = {name: self.field_problem(name, getattr(self, name))
                    for name in ("address", "label", "greeting", "template_sid", "monthly_budget")}
        return {name: problem for name, problem in problems.items() if problem}


class WebhookLog(BaseModel):
    """An audit record of one webhook request (secrets redacted)."""

    received_at = DateTimeField(default=utcnow, index=True)
    method = CharField(max_length=8)
    path = CharField(max_length=255)
    remote_addr = CharField(max_length=64, default="")
    headers = JSONField(default=dict)
    body = TextField(default="")
    response_status = IntegerField(index=True)
    processing_ms = FloatField(default=0.0)
    signature_valid = BooleanField(null=True, index=True)
    message_sid = CharField(max_length=64, null=True, index=True)
    verdict = CharField(max_length=32, null=True, index=True)
    error = TextField(null=True)

    class Meta:
        table_name = "webhook_log"

    @classmethod
    def delete_received_before(cls, cutoff: datetime, batch_size: int = DELETE_BATCH):
        """Delete entries received before `cutoff`, at most `batch_size` per statement; yield each batch's count."""
        while True:
            oldest = cls.select(cls.id).where(cls.received_at < cutoff).order_by(cls.id).limit(batch_size)
            deleted = cls.delete().where(cls.id.in_(oldest)).execute()
            if not deleted:
                return
            yield deleted


class AdminUser(BaseModel):
    """An operator who may log in to the admin panel."""

    username = CharField(max_length=80, unique=True)
    password_hash = CharField(max_length=255)
    created_at = DateTimeField(default=utcnow)
    last_login_at = DateTimeField(null=True)

    class Meta:
        table_name = "admin_user"

    def set_password(self, password: str) -> None:
        """Store a salted hash of `password` (werkzeug's scrypt)."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def session_stamp(self) -> str:
        """A value that changes with the password, so a reset ends existing sessions."""
        return hashlib.sha256(self.password_hash.encode()).hexdigest()[:16]


# At most one active conversation per sender and number, enforced by the database itself.
ONE_ACTIVE_INDEX = "conversation_one_active_per_phone_and_number"
Conversation.add_index(
    Conversation.index(
        Conversation.user_phone,
        Conversation.number,
        unique=True,
        where=(Conversation.is_active == True),  # noqa: E712
        name=ONE_ACTIVE_INDEX,
    )
)


