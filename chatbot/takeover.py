"""Takeover: an operator pauses the bot for a conversation, answers in person, and hands it back."""
from __future__ import annotations

import logging

from chatbot import metrics
from chatbot.models import Conversation, Handoff, Message, Role, Status, utcnow
from chatbot.models.db import database

log = logging.getLogger(__name__)


def take_over(conversation_id, operator: str) -> bool:
    """Pause the bot for an active WhatsApp conversation nobody has taken over; return whether it was
    paused (a playground's or the console's has nobody on WhatsApp to answer)."""
    return bool(
        Conversation.update(paused_at=utcnow(), paused_by=operator)
        .where(Conversation.id == conversation_id, Conversation.paused_at.is_null(),
               Conversation.is_active == True, Conversation.on_whatsapp())  # noqa: E712
        .execute()
    )


def store_operator_reply(conversation: Conversation, text: str, operator: str) -> Message:
    """Store an operator's reply, unsent, as the answer to the user messages waiting for a person."""
    with database.atomic():
        # Claimed by one UPDATE: of two operators replying at once, only one answers each message.
        answered = sorted(
            message_id
            for (message_id,) in (
                Message.update(status=Status.ANSWERED.value)
                .where(Message.conversation == conversation, Message.role == Role.USER.value,
                       Message.status == Status.WAITING.value)
                .returning(Message.id)
                .tuples()
            )
        )
        reply = Message.create(
            conversation=conversation,
            role=Role.ASSISTANT.value,
            content=text,
            status=Status.UNSENT.value,
            reply_to=answered[-1] if answered else None,
            operator=operator,
            metadata={"answers": answered},
        )
    # A reply counts as activity: TAKEOVER_TIMEOUT runs from here.
    conversation.touch()
    note_first_reply(conversation.id)
    return reply


def note_first_reply(conversation_id) -> None:
    """Record when a person first answered the conversation's open handoff (time to first reply)."""
    now = utcnow()
    for handoff in Handoff.select().where(Handoff.conversation == conversation_id, Handoff.resolved_at.is_null(),
                                          Handoff.first_reply_at.is_null()):
        if Handoff.update(first_reply_at=now).where(Handoff.id == handoff.id,
                                                   Handoff.first_reply_at.is_null()).execute():
            metrics.observe_first_human_reply((now - handoff.opened_at).total_seconds())


def hand_back(*conditions) -> int:
    """Give the taken-over conversations matching `conditions` back to the bot; return how many."""
    return (
        Conversation.update(paused_at=None, paused_by=None)
        .where(Conversation.paused_at.is_null(False), *conditions)
        .execute()
    )

