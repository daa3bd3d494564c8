"""Conversations, their messages and the parts each reply was sent in."""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

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
    TextField,
    UUIDField,
    fn,
)

from chatbot.errors import NothingToRetry
from chatbot.models.audit import WebhookLog
from chatbot.models.base import DELETE_BATCH, BaseModel, JSONField, Origin, Role, Status, utcnow
from chatbot.models.db import database

# WhatsApp takes free-form replies until this long after the user's last message; later, only an
# approved template.
SERVICE_WINDOW = timedelta(hours=24)
# How a WhatsApp sender's address begins; the playground's (`playground:<admin>`) and the console's
# (`console:<name>`) senders are not on WhatsApp.
WHATSAPP_PREFIX = "whatsapp:"


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


# Full-text search over the messages' text: an FTS5 index kept by triggers on SQLite, a stored
# tsvector column on Postgres (the same 'simple' configuration as the knowledge's passages).
MESSAGE_FTS_TABLE = "message_fts"
MESSAGE_SEARCH_COLUMN = "search"
MESSAGE_TEXT_SEARCH = "to_tsvector('simple', content)"

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
    # When the customer was asked "How did I do?" (never twice in one conversation).
    rating_asked_at = DateTimeField(null=True)

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
        active = (cls.user_phone == user_phone) & (cls.number == number) & (cls.is_active == True)  # noqa: E712
        for fresh in cls.update(updated_at=now).where(active & (cls.updated_at >= cutoff)).returning(cls.id).execute():
            return fresh.id
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
    def on_whatsapp(cls):
        """Match conversations with a sender on WhatsApp: only they are ever sent anything through
        Twilio, taken over, replied to or retried."""
        return cls.user_phone.startswith(WHATSAPP_PREFIX)

    @property
    def is_on_whatsapp(self) -> bool:
        """Whether the sender is on WhatsApp (the rule `on_whatsapp` matches in SQL)."""
        return self.user_phone.startswith(WHATSAPP_PREFIX)

    @classmethod
    def idle_since(cls, cutoff: datetime):
        """Select active conversations with no activity since `cutoff`."""
        return cls.select().where(cls.is_active == True, cls.updated_at < cutoff)  # noqa: E712

    @classmethod
    def latest_for(cls, user_phone: str) -> Conversation | None:
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
    def end_with(cls, conversations: list[Conversation], message_id: int, context) -> None:
        """End these conversations with the message `message_id` (a /reset, a confirmed /forget) and
        forget their context. Messages written after it arrived before it was carried out; they are
        not part of what ends: they move to the sender's next conversation with the same number."""
        with database.atomic():
            # Ended first: a webhook storing a message now either finished (its message is moved
            # below) or waits for this row and then starts the next conversation itself.
            cls.end([conversation.id for conversation in conversations], context)
            for conversation in conversations:
                later = [row.id for row in Message.select(Message.id).where(
                    Message.conversation == conversation.id, Message.role == Role.USER.value, Message.id > message_id)]
                if later:
                    successor = cls.resume_or_start_id(conversation.user_phone, conversation.profile_name,
                                                       number=conversation.number)
                    # With their replies (a rate limit's notice); answers to earlier messages stay.
                    Message.update(conversation=successor).where(
                        Message.id.in_(later) | Message.reply_to.in_(later)).execute()

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
    def answered_exchanges(cls, conversation: Conversation, limit: int) -> list[tuple[list[Message], Message]]:
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
    def written_between(cls, user_phone: str, after_id: int, before_id: int) -> bool:
        """Whether `user_phone` wrote any message (to any number) after `after_id` and before `before_id`."""
        return (
            cls.select(cls.id)
            .join(Conversation)
            .where(Conversation.user_phone == user_phone, cls.role == Role.USER.value,
                   cls.id > after_id, cls.id < before_id)
            .exists()
        )

    @classmethod
    def newest_pending(cls, conversation: Conversation) -> Message | None:
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
    def unprompted_unsent(cls, cutoff: datetime):
        """Select the messages the assistant wrote on its own (follow-ups, the rating question: no
        question, no operator) still unsent since before `cutoff`: their job was lost, or Twilio was down."""
        return cls.select(cls.id).where(cls.role == Role.ASSISTANT.value, cls.reply_to.is_null(),
                                        cls.operator.is_null(), cls.status == Status.UNSENT.value,
                                        cls.created_at < cutoff, cls.from_whatsapp())

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
    def failed_since(cls, since: datetime) -> list[Message]:
        """Return the WhatsApp user messages that got the fallback since `since`, oldest first."""
        return list(
            cls.select().where(cls.role == Role.USER.value, cls.status == Status.FAILED.value,
                               cls.created_at >= since, cls.from_whatsapp()).order_by(cls.id)
        )

    @classmethod
    def put_back_in_line(cls, question_ids) -> None:
        """Make these failed user messages pending again, their apologies superseded by the next answer.

        Only those still failed: of several retries at once, one puts each back. Raises NothingToRetry
        when none was put back (another retry was first).
        """
        if not question_ids:
            return
        with database.atomic():
            # A fresh count of attempts: the operator's retry is a new start, not one more lap.
            claimed = [
                question_id
                for (question_id,) in (
                    cls.update(status=Status.PENDING.value, error=None, attempts=0)
                    .where(cls.id.in_(question_ids), cls.status == Status.FAILED.value)
                    .returning(cls.id)
                    .tuples()
                )
            ]
            if not claimed:
                raise NothingToRetry(f"messages {list(question_ids)} are failed no longer")
            cls.update(status=Status.SUPERSEDED.value).where(
                cls.reply_to.in_(claimed), cls.status != Status.UNSENT.value
            ).execute()

    @classmethod
    def put_back_unsent(cls, answer: Message) -> None:
        """Make an undelivered reply unsent again from its first failed part on (the parts after it go
        again too, to keep the order), so the next job sends the rest.

        Its state is read again under its row's lock, never taken from `answer`: of several retries at
        once (a double click), one puts it back and the others raise NothingToRetry, finding it unsent
        again or sent since. From a stale `parts_sent` a second retry would mark it sent, unsent.
        """
        with database.atomic():
            # Postgres locks the row; SQLite's transaction holds the write lock from its BEGIN (IMMEDIATE).
            current = cls.select(cls.status, cls.parts_sent).where(cls.id == answer.id)
            current = (current.for_update() if database.for_update else current).first()
            first_failed = (
                ReplyPart.select(fn.MIN(ReplyPart.number))
                .where(ReplyPart.message == answer.id, ReplyPart.status.in_(DELIVERY_FAILURES))
                .scalar()
            )
            if current is None or current.status == Status.SUPERSEDED.value or (
                    first_failed is None and current.status not in UNDELIVERED_STATUSES):
                raise NothingToRetry(f"message {answer.id} is undelivered no longer")
            parts_sent = current.parts_sent if first_failed is None else min(current.parts_sent, first_failed - 1)
            ReplyPart.delete().where(ReplyPart.message == answer.id, ReplyPart.number > parts_sent).execute()
            cls.update(status=Status.UNSENT.value, error=None, parts_sent=parts_sent, sending_part=None,
                       sending_since=None).where(cls.id == answer.id).execute()
            if answer.reply_to_id is not None:
                cls.update(attempts=0).where(cls.id == answer.reply_to_id).execute()

    @classmethod
    def problems(cls, stuck_before: datetime, limit: int):
        """Select, newest first with their conversations, what needs the operator: user messages the AI
        failed, replies not delivered, and user messages unanswered since before `stuck_before`; none
        the operator dismissed."""
        question, answer = cls.role == Role.USER.value, cls.role == Role.ASSISTANT.value
        return (
            cls.select(cls, Conversation)
            .join(Conversation)
            .where(
                cls.from_whatsapp(),
                # An operator's reply in a playground conversation was stored as from WhatsApp.
                Conversation.on_whatsapp(),
                (question & (cls.status == Status.FAILED.value))
                | (answer & cls.never_arrived())
                | (question & (cls.status == Status.PENDING.value) & (cls.created_at < stuck_before)),
                cls.id.not_in(Dismissal.select(Dismissal.message)),
            )
            .order_by(cls.id.desc())
            .limit(limit)
        )

    @classmethod
    def never_arrived(cls, answer: type[Message] | None = None):
        """Match answers that never reached the user: not sent (send_failed, outside_window), or with a
        part Twilio reported failed. An answer superseded by a later one is not counted."""
        answer = answer or cls
        failed_parts = ReplyPart.select(ReplyPart.message).where(ReplyPart.status.in_(DELIVERY_FAILURES))
        return (answer.status != Status.SUPERSEDED.value) & (
            answer.status.in_(UNDELIVERED_STATUSES) | answer.id.in_(failed_parts))

    @classmethod
    def counted_in_spend(cls):
        """Match the answers the caps count: the operator's playground trials are left out (no cap holds
        them back); the spend figures add them on a line of their own, as the bill does."""
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
        query = cls._cost_since(since, cls.counted_in_spend(), cls.on_number(number))
        if sender is not None:
            query = query.join(Conversation).where(Conversation.user_phone == sender)
        total, unknown = query.tuples().first()
        return float(total or 0), int(unknown or 0)

    @classmethod
    def playground_spend(cls, since: datetime) -> tuple[float, int]:
        """Return what the admin's playground trials since `since` cost in USD (billed like any answer),
        and how many came without a reported cost."""
        total, unknown = cls._cost_since(since, ~cls.counted_in_spend()).tuples().first()
        return float(total or 0), int(unknown or 0)

    @classmethod
    def _cost_since(cls, since: datetime, *conditions):
        return cls.select(fn.COALESCE(fn.SUM(cls.cost), 0), fn.COUNT(cls.id) - fn.COUNT(cls.cost)).where(
            cls.model.is_null(False), cls.created_at >= since, *conditions)

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

    @classmethod
    def average_cost(cls, model: str, answers: int) -> float | None:
        """Return what the last `answers` answers `model` wrote cost on average in USD (trials in the
        playground included: they cost the same); None when none reported a cost."""
        costs = [cost for (cost,) in (
            cls.select(cls.cost)
            .where(cls.model == model, cls.cost.is_null(False))
            .order_by(cls.id.desc())
            .limit(answers)
            .tuples()
        )]
        return sum(costs) / len(costs) if costs else None

    def current_answer(self) -> Message | None:
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
    def of_conversation(cls, conversation: Conversation) -> dict[int, list[ReplyPart]]:
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
class Dismissal(BaseModel):
    """A problem an operator dismissed from the Problems page, and why: a retry cannot help, or it was
    dealt with outside the panel. Gone with its message."""

    message = ForeignKeyField(Message, unique=True, on_delete="CASCADE")
    reason = TextField()
    dismissed_by = CharField(max_length=64)
    dismissed_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "dismissal"

    @classmethod
    def dismiss(cls, message_ids, reason: str, by: str) -> int:
        """Dismiss these messages' problems with `reason`; return how many were not dismissed already."""
        rows = [{"message": message_id, "reason": reason, "dismissed_by": by[:64]} for message_id in message_ids]
        if not rows:
            return 0
        with database.atomic():
            before = cls.select().where(cls.message.in_(list(message_ids))).count()
            cls.insert_many(rows).on_conflict_ignore().execute()
            return cls.select().where(cls.message.in_(list(message_ids))).count() - before


TWILIO_MESSAGE_SID = re.compile(r"^(SM|MM)[0-9a-f]{32}$")
# How far a part's delivery can get, in order, and the two ways it can end without arriving.
DELIVERY_PROGRESS = ("queued", "sent", "delivered", "read")
DELIVERY_FAILURES = ("failed", "undelivered")
# Statuses that say how the part ended: it reached the phone, or it never will.
DELIVERY_SETTLED = ("delivered", "read", *DELIVERY_FAILURES)
# A reply that never reached the user, and every message status that tells of a failure.
UNDELIVERED_STATUSES = (Status.SEND_FAILED.value, Status.OUTSIDE_WINDOW.value)
FAILURE_STATUSES = (Status.FAILED.value, *UNDELIVERED_STATUSES)
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

