"""Campaigns: one approved template sent once to each recipient of an audience, and how each send went."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from peewee import JOIN, CharField, DateTimeField, ForeignKeyField, IntegerField, TextField, fn

from chatbot.models.base import BaseModel, JSONField, Role, utcnow
from chatbot.models.conversation import DELIVERY_FAILURES, Message, ReplyPart


class CampaignStatus(StrEnum):
    DRAFT = "draft"  # created: nothing goes out until it is sent
    SCHEDULED = "scheduled"  # waits for send_at; the minute sweep starts it
    SENDING = "sending"
    PAUSED = "paused"  # by an operator, or by itself on an error no recipient can fix (see `error`)
    CANCELLED = "cancelled"  # what was not sent stays unsent
    FINISHED = "finished"


# A campaign in one of these states is over: nothing of it is sent any more.
ENDED = (CampaignStatus.CANCELLED.value, CampaignStatus.FINISHED.value)


class RecipientStatus(StrEnum):
    QUEUED = "queued"  # not sent yet (a send may be under way: see sending_since)
    SENT = "sent"  # Twilio took it; its receipts say how far it got
    FAILED = "failed"  # Twilio refused it for this recipient (error_code says why)
    SKIPPED = "skipped"  # excluded when its turn came: STOP or the access list changed since creation
    CANCELLED = "cancelled"  # the campaign was cancelled before its turn


class Campaign(BaseModel):
    """An approved template (ContentSid) with its variables, for an audience, from one of the numbers."""

    name = CharField(max_length=100)
    # The number it goes out from, as conversations store it ("" the default number).
    number = CharField(max_length=64, default="")
    content_sid = CharField(max_length=34)
    # The template's text as approved, {{1}} and all: what the recipient's conversation starts with.
    text = TextField(default="")
    # How each variable is filled: {"1": "a fixed value"} or {"1": {"column": 2}} (a column of the file).
    variables = JSONField(default=dict)
    # Where the audience came from, in words: "contacts.csv", "wrote in the last 30 days".
    audience = CharField(max_length=255, default="")
    # What creating it left out: how many by reason, and the first MAX_SKIPS_KEPT lines with theirs.
    skipped_counts = JSONField(default=dict)
    skipped = JSONField(default=list)
    status = CharField(max_length=16, default=CampaignStatus.DRAFT.value, index=True)
    # When a scheduled campaign starts (naive UTC).
    send_at = DateTimeField(null=True)
    # Why the campaign paused itself (Twilio refused every send alike), with the fix.
    error = TextField(null=True)
    created_by = CharField(max_length=80, default="")
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    started_at = DateTimeField(null=True)
    # When it finished or was cancelled.
    ended_at = DateTimeField(null=True)

    class Meta:
        table_name = "campaign"

    @property
    def is_over(self) -> bool:
        return self.status in ENDED

    @classmethod
    def move(cls, campaign_id: int, to: CampaignStatus, *, from_: tuple[str, ...], **changes) -> bool:
        """Move the campaign to `to` when it is in one of `from_` (one statement: of two operators
        clicking at once, one moves it); return whether it moved."""
        return bool(cls.update(status=to.value, updated_at=utcnow(), **changes)
                    .where(cls.id == campaign_id, cls.status.in_(from_)).execute())

    @classmethod
    def due(cls, now: datetime):
        """Select scheduled campaigns whose time has come."""
        return cls.select(cls.id).where(cls.status == CampaignStatus.SCHEDULED.value, cls.send_at <= now)

    @classmethod
    def sending(cls):
        """Select campaigns that are sending (a job should be working on each)."""
        return cls.select(cls.id).where(cls.status == CampaignStatus.SENDING.value)

    @classmethod
    def delete_ended_before(cls, cutoff: datetime) -> int:
        """Delete campaigns that ended, or never left draft, before `cutoff`, their recipients with them."""
        old = (cls.select(cls.id).where(
            (cls.status.in_(ENDED) & (cls.ended_at < cutoff))
            | ((cls.status == CampaignStatus.DRAFT.value) & (cls.updated_at < cutoff))))
        ids = [campaign.id for campaign in old]
        if not ids:
            return 0
        CampaignRecipient.delete().where(CampaignRecipient.campaign.in_(ids)).execute()
        return cls.delete().where(cls.id.in_(ids)).execute()

    @classmethod
    def template_messages(cls, number: str, since: datetime) -> int:
        """Count the template messages `number` (a conversation key) sent since `since`: campaign
        messages, and replies sent past the 24-hour window as the number's template. What Twilio
        and Meta bill per message is theirs to say; this is the count to multiply by it."""
        campaign_sends = (CampaignRecipient.select().join(Campaign)
                          .where(Campaign.number == number, CampaignRecipient.sent_at >= since).count())
        # The processor notes the template in the answer's metadata (stored with sorted keys).
        past_window = (Message.select().where(Message.metadata.contains('"template": "HX'),
                                              Message.sent_at >= since, Message.on_number(number)).count())
        return campaign_sends + past_window


# Creating a campaign keeps the first this many skipped lines with their reasons (and counts them all).
MAX_SKIPS_KEPT = 200


class CampaignRecipient(BaseModel):
    """One recipient of a campaign: the variables it gets, and how its one send went."""

    campaign = ForeignKeyField(Campaign, backref="recipients", on_delete="CASCADE")
    # whatsapp:+E.164
    phone = CharField(max_length=64)
    # Its line in the audience file (None for a recent-days audience).
    line = IntegerField(null=True)
    # The template's variables for this recipient, as sent: {"1": "Ada", "2": "20% off"}.
    variables = JSONField(default=dict)
    status = CharField(max_length=16, default=RecipientStatus.QUEUED.value)
    # Written before the send goes to Twilio and cleared with its result: a run that finds it set asks
    # Twilio whether the message went out before it sends again. Kept from the first attempt on.
    sending_since = DateTimeField(null=True)
    twilio_sid = CharField(max_length=64, null=True, unique=True)
    # The campaign's message in the recipient's conversation, once sent.
    message = ForeignKeyField(Message, null=True, on_delete="SET NULL")
    error_code = IntegerField(null=True)
    error = TextField(null=True)
    sent_at = DateTimeField(null=True)

    class Meta:
        table_name = "campaign_recipient"
        indexes = ((("campaign", "phone"), True), (("campaign", "status"), False))

    @classmethod
    def waiting(cls, campaign_id: int) -> list[int]:
        """The ids of the recipients still to send to, in order."""
        return [recipient_id for (recipient_id,) in (
            cls.select(cls.id)
            .where(cls.campaign == campaign_id, cls.status == RecipientStatus.QUEUED.value)
            .order_by(cls.id)
            .tuples())]

    @classmethod
    def cancel_waiting(cls, campaign_id: int) -> int:
        """Cancel the recipients not sent to and with no send under way; return how many."""
        return (cls.update(status=RecipientStatus.CANCELLED.value)
                .where(cls.campaign == campaign_id, cls.status == RecipientStatus.QUEUED.value,
                       cls.sending_since.is_null())
                .execute())

    @classmethod
    def forget(cls, phone: str) -> int:
        """Delete every campaign's row of `phone` (the customer asked to be forgotten); return how many."""
        return cls.delete().where(cls.phone == phone).execute()


@dataclass(frozen=True)
class CampaignResults:
    """How far a campaign's sends got. Each recipient counts once in `queued`, `sent`, `failed` (Twilio
    refused it), `skipped` or `cancelled`; of the sent, the receipts say how many were delivered (read
    ones included), read, or failed on the way (counted in `failed` too); `replies` counts the
    recipients who wrote back after it."""

    total: int
    queued: int
    sent: int
    delivered: int
    read: int
    failed: int
    # Of the failed, those Twilio took and then reported failed or undelivered.
    undelivered: int
    replies: int
    skipped: int
    cancelled: int

    @classmethod
    def of(cls, campaign_id: int) -> CampaignResults:
        by_status = dict(CampaignRecipient.select(CampaignRecipient.status, fn.COUNT(CampaignRecipient.id))
                         .where(CampaignRecipient.campaign == campaign_id)
                         .group_by(CampaignRecipient.status).tuples())
        receipts = dict(ReplyPart.select(ReplyPart.status, fn.COUNT(ReplyPart.id))
                        .join(CampaignRecipient, on=(CampaignRecipient.message == ReplyPart.message))
                        .where(CampaignRecipient.campaign == campaign_id)
                        .group_by(ReplyPart.status).tuples())
        Later = Message.alias()
        replied = (Later.select(Later.id)
                   .where(Later.conversation == Message.conversation, Later.role == Role.USER.value,
                          Later.id > Message.id))
        replies = (CampaignRecipient.select()
                   .join(Message, JOIN.INNER, on=(CampaignRecipient.message == Message.id))
                   .where(CampaignRecipient.campaign == campaign_id, fn.EXISTS(replied))
                   .count())
        status = {value: by_status.get(value.value, 0) for value in RecipientStatus}
        undelivered = sum(receipts.get(failure, 0) for failure in DELIVERY_FAILURES)
        return cls(
            total=sum(status.values()),
            queued=status[RecipientStatus.QUEUED],
            sent=status[RecipientStatus.SENT],
            delivered=receipts.get("delivered", 0) + receipts.get("read", 0),
            read=receipts.get("read", 0),
            failed=status[RecipientStatus.FAILED] + undelivered,
            undelivered=undelivered,
            replies=replies,
            skipped=status[RecipientStatus.SKIPPED],
            cancelled=status[RecipientStatus.CANCELLED],
        )
