"""The webhook log: one audit row per request Twilio (or anyone) made."""
from __future__ import annotations

from datetime import datetime

from peewee import (
    BooleanField,
    CharField,
    DateTimeField,
    FloatField,
    IntegerField,
    TextField,
)

from chatbot.models.base import DELETE_BATCH, BaseModel, JSONField, utcnow


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
    # The URL a refused signature was checked against (phone numbers masked).
    checked_url = CharField(max_length=512, null=True)

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

