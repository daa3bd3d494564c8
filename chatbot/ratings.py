"""Ratings on WhatsApp: a customer is asked once per conversation "How did I do?", when the
conversation has gone quiet after an AI answer or a person has resolved their handoff, and only
while WhatsApp's 24-hour window is open; a reply of 1 to 5 is the rating."""
from __future__ import annotations

import re
from datetime import datetime, timedelta

from peewee import fn

from chatbot.models import (
    SERVICE_WINDOW,
    Conversation,
    Handoff,
    Message,
    OptOut,
    Origin,
    Rating,
    Role,
    Status,
    utcnow,
)
from chatbot.models.db import database

QUESTION = "How did I do? Reply with a number from 1 (bad) to 5 (great)."
THANKS = "Thank you for your rating!"
KIND = "rating_request"
# The question goes out only with this much of the window left, so it is still open when it is sent.
WINDOW_MARGIN = timedelta(minutes=10)
# "5", "4/5", "3." or a quick-reply button's payload ("5", "rating_5", "rate-4").
SCORE_TEXT = re.compile(r"^\s*([1-5])\s*(?:/\s*5)?\s*[.!]?\s*$")
SCORE_PAYLOAD = re.compile(r"^(?:rat(?:ing|e)[_\-:]?)?([1-5])$", re.IGNORECASE)


def score_in(message: Message) -> int | None:
    """The rating `message` gives, when it is one: a button's payload or a whole-message 1 to 5."""
    payload = (message.metadata or {}).get("ButtonPayload")
    if payload:
        found = SCORE_PAYLOAD.match(payload.strip())
        return int(found.group(1)) if found else None
    found = SCORE_TEXT.match(message.content or "")
    return int(found.group(1)) if found else None


def due(now: datetime, quiet: timedelta) -> list[Conversation]:
    """Conversations to ask now: never asked, on WhatsApp, no person holding them, the window open,
    and either quiet for `quiet` after an AI answer or with a handoff a person resolved."""
    last_customer_message = (Message.select(fn.MAX(Message.created_at))
                             .where(Message.conversation == Conversation.id, Message.role == Role.USER.value))
    answered_by_ai = Message.select(Message.id).where(
        Message.conversation == Conversation.id, Message.role == Role.ASSISTANT.value, Message.model.is_null(False))
    resolved = Handoff.select(Handoff.id).where(Handoff.conversation == Conversation.id,
                                                Handoff.resolved_at.is_null(False))
    window_opened_after = now - SERVICE_WINDOW + WINDOW_MARGIN
    return list(Conversation.select().where(
        Conversation.rating_asked_at.is_null(),
        Conversation.paused_at.is_null(),
        Conversation.on_whatsapp(),
        # Only recent ones can have the window open: the index keeps this cheap however many there are.
        Conversation.updated_at >= window_opened_after,
        last_customer_message >= window_opened_after,
        (fn.EXISTS(answered_by_ai) & (Conversation.updated_at <= now - quiet)) | fn.EXISTS(resolved),
    ))


def ask(conversation: Conversation, content_sid: str = "") -> int | None:
    """Store the question to `conversation`'s customer as an unsent reply, once ever for the
    conversation; return its id, or None when it was asked already (or the customer opted out)."""
    with database.atomic():
        if OptOut.applies(conversation.user_phone, conversation.number):
            return None
        claimed = (Conversation.update(rating_asked_at=utcnow())
                   .where(Conversation.id == conversation.id, Conversation.rating_asked_at.is_null()).execute())
        if not claimed:
            return None
        metadata = {"canned": KIND, **({"content_sid": content_sid} if content_sid else {})}
        return Message.create(conversation=conversation, role=Role.ASSISTANT.value, origin=Origin.WHATSAPP.value,
                              content=QUESTION, status=Status.UNSENT.value, metadata=metadata).id


def record(conversation: Conversation, question: Message, score: int) -> Rating | None:
    """Store the rating `question` gives; None when the conversation was rated already."""
    last_answer = (Message.select(Message.metadata)
                   .where(Message.conversation == conversation, Message.role == Role.ASSISTANT.value,
                          Message.model.is_null(False))
                   .order_by(Message.id.desc()).first())
    ai_source = (last_answer.metadata or {}).get("ai_source", "") if last_answer else ""
    with database.atomic():
        if Rating.select().where(Rating.conversation == conversation).exists():
            return None
        return Rating.create(conversation=conversation, message=question, score=score, number=conversation.number,
                             ai_source=ai_source)
