"""The panel's notices: every alert the operator is sent, kept where the admin shows it, until read."""
from __future__ import annotations

from peewee import CharField, DateTimeField, TextField

from chatbot.models.base import BaseModel, utcnow


class Notice(BaseModel):
    """One alert (chatbot.alerts), as the operator reads it in the panel: with or without ALERT_WEBHOOK_URL."""

    created_at = DateTimeField(default=utcnow, index=True)
    # The alert's type ("budget:monthly", "ai:AIError:401"): what repeats within the hour is not noticed twice.
    kind = CharField(max_length=64)
    text = TextField()
    # Read by anyone in the team: one person dealing with it is enough.
    read_at = DateTimeField(null=True, index=True)
    read_by = CharField(max_length=64, null=True)

    class Meta:
        table_name = "notice"

    @classmethod
    def keep(cls, kind: str, text: str) -> Notice:
        """Keep an alert of type `kind` for the panel, unread."""
        return cls.create(kind=kind[:64], text=text)

    @classmethod
    def unread_count(cls) -> int:
        return cls.select().where(cls.read_at.is_null()).count()

    @classmethod
    def newest(cls, limit: int):
        """Select the newest `limit` notices, unread ones first."""
        return cls.select().order_by(cls.read_at.is_null(False), cls.id.desc()).limit(limit)

    @classmethod
    def mark_read(cls, by: str, notice_id: int | None = None) -> int:
        """Mark one notice (or, with no id, every unread one) read by `by`; return how many were unread."""
        query = cls.update(read_at=utcnow(), read_by=by[:64]).where(cls.read_at.is_null())
        if notice_id is not None:
            query = query.where(cls.id == notice_id)
        return query.execute()
