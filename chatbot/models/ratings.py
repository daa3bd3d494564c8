"""What customers thought: the rating a customer gave a conversation when asked "How did I do?"."""
from __future__ import annotations

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField

from chatbot.models.base import BaseModel, utcnow
from chatbot.models.conversation import Conversation, Message

SCORES = range(1, 6)


class Rating(BaseModel):
    """One conversation's rating, 1 (bad) to 5 (good); a conversation is asked once and rated once."""

    conversation = ForeignKeyField(Conversation, on_delete="CASCADE", unique=True, backref="ratings")
    # The customer's reply that carried it (None when it was deleted since).
    message = ForeignKeyField(Message, null=True, on_delete="SET NULL")
    score = IntegerField()
    # The conversation's number ("" the default one) and the AI configuration that last answered it
    # ("db:NAME", or "env" for the environment's settings), as the dashboard groups ratings.
    number = CharField(max_length=64, default="", index=True)
    ai_source = CharField(max_length=110, default="")
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "rating"
