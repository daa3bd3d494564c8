"""Handoff: the assistant calls a person, once, and steps aside until the person resolves it.

A handoff pauses the conversation as a takeover does (the AI answers nothing; the customer's
messages wait, shown in the admin), records why, and has the team told by a job. One handoff is
open per conversation at most (a partial unique index says so to the database too): a second
trigger while one is open changes nothing. Resolving it hands the conversation back to the bot;
what happened before the resolution never calls a person again.
"""
from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

from peewee import IntegrityError
from rq import Queue

from chatbot import metrics
from chatbot.jobs.queueing import enqueue_handoff_notice
from chatbot.models import MODEL_REASONS, Conversation, Handoff, HandoffReason, Message, Role, utcnow
from chatbot.models.db import database
from chatbot.redact import mask_phone
from chatbot.takeover import hand_back

log = logging.getLogger(__name__)


def open_handoff(queue: Queue | None, conversation: Conversation, question: Message | None, reason: HandoffReason,
                 trigger: str, summary: str = "") -> Handoff | None:
    """Pause `conversation` for a person, record why, and queue the team's notification; return the
    handoff, or None when one is open already (nothing changes then)."""
    try:
        with database.atomic():
            handoff = Handoff.create(conversation=conversation.id, message=question.id if question else None,
                                     reason=reason.value, trigger=trigger, summary=summary[:2000])
            (Conversation.update(paused_at=utcnow(), paused_by=None)
             .where(Conversation.id == conversation.id).execute())
    except IntegrityError:
        return None
    conversation.paused_at, conversation.paused_by = utcnow(), None
    metrics.count_handoff(reason.value)
    log.info("handoff=%s opened conversation=%s sender=%s reason=%s trigger=%s", handoff.id, conversation.id,
             mask_phone(conversation.user_phone), reason.value, trigger)
    if queue is not None:
        enqueue_handoff_notice(queue, handoff.id)
    return handoff


def claim(handoff_id: int, operator: str) -> bool:
    """Assign an open handoff nobody claimed to `operator`; say whether it was theirs to take."""
    with database.atomic():
        claimed = (Handoff.update(claimed_by=operator, claimed_at=utcnow())
                   .where(Handoff.id == handoff_id, Handoff.claimed_at.is_null(), Handoff.resolved_at.is_null())
                   .execute())
        if claimed:
            conversation_id = Handoff.select(Handoff.conversation).where(Handoff.id == handoff_id).scalar()
            Conversation.update(paused_by=operator).where(Conversation.id == conversation_id).execute()
    return bool(claimed)


def resolve(conversation_id, operator: str) -> bool:
    """Close the conversation's open handoff and hand the conversation back to the bot; say whether
    one was open. Messages still waiting stay answered by nobody: the person has seen them."""
    with database.atomic():
        resolved = (Handoff.update(resolved_at=utcnow(), resolved_by=operator)
                    .where(Handoff.conversation == conversation_id, Handoff.resolved_at.is_null())
                    .execute())
        hand_back(Conversation.id == conversation_id)
    if resolved:
        log.info("handoff resolved conversation=%s by=%s", conversation_id, operator)
    return bool(resolved)


def last_resolution(conversation_id) -> datetime | None:
    """When a person last resolved a handoff of this conversation: nothing before it calls one again."""
    return (Handoff.select(Handoff.resolved_at)
            .where(Handoff.conversation == conversation_id, Handoff.resolved_at.is_null(False))
            .order_by(Handoff.resolved_at.desc()).scalar())


def failures_in_a_row(conversation_id, since: datetime | None, limit: int) -> int:
    """Count how many of the conversation's latest answers (up to `limit`, none from before `since`)
    failed or said the knowledge did not cover the question, stopping at the first good one."""
    answers = (Message.select(Message.metadata, Message.status)
               .where(Message.conversation == conversation_id, Message.role == Role.ASSISTANT.value,
                      Message.operator.is_null())
               .order_by(Message.id.desc()).limit(limit))
    if since is not None:
        answers = answers.where(Message.created_at > since)
    count = 0
    for answer in answers:
        canned = answer.metadata.get("canned") or ""
        if canned.endswith("_failure") or answer.metadata.get("not_covered"):
            count += 1
        elif canned:
            continue  # a command's answer or a notice says nothing of the assistant's knowledge
        else:
            break
    return count


def within_hours(spans: tuple, now: datetime, zone: str) -> bool:
    """Whether `now` (naive UTC) falls in one of the business hours' (weekday, first minute, end minute) spans."""
    if not spans:
        return True
    local = now.replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    return any(day == local.weekday() and start <= minute < end for day, start, end in spans)


def holding_message(config, now: datetime | None = None) -> str:
    """What the customer is told while a person is called: the out-of-hours words outside BUSINESS_HOURS."""
    if within_hours(config.business_hours_spans, now or utcnow(), config.admin_timezone):
        return config.handoff_message
    return config.handoff_message_out_of_hours.replace("{hours}", config.business_hours)


# Offered to every model that takes tools: calling it is a handoff, decided by the model, never read
# out of the answer's text (a marker in free text breaks on the first prompt that mentions it).
REQUEST_HUMAN = {
    "type": "function",
    "function": {
        "name": "request_human",
        "description": ("Hand the conversation to a person from the team. Call it when the customer asks for a "
                        "person, when you cannot answer from what you know, when they ask for something you "
                        "cannot do, or when a policy needs a person. The customer is told a person will answer."),
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "enum": [reason.value for reason in MODEL_REASONS]},
                "summary": {"type": "string", "description": "One or two sentences for the person taking over: "
                                                             "who the customer is and what they need."},
            },
            "required": ["reason", "summary"],
        },
    },
}


REQUEST_HUMAN_NAME = REQUEST_HUMAN["function"]["name"]


class Handoffs:
    """Calls a person for a conversation: what the handoff gate, the model's tool and repeated
    failures share."""

    def __init__(self, queue: Queue | None, config):
        self.queue = queue
        self.config = config

    def call(self, conversation: Conversation, question: Message | None, reason: HandoffReason, trigger: str,
             summary: str = "") -> Handoff | None:
        return open_handoff(self.queue, conversation, question, reason, trigger, summary)

    def holding_message(self) -> str:
        return holding_message(self.config)

    def due_after_failures(self, conversation: Conversation) -> bool:
        """Whether HANDOFF_AFTER_FAILURES answers in a row (since a person last resolved a handoff
        here) failed or were not covered by the knowledge."""
        limit = self.config.handoff_after_failures
        return bool(limit) and failures_in_a_row(conversation.id, last_resolution(conversation.id), limit) >= limit

    @staticmethod
    def reason_of(arguments: dict) -> HandoffReason:
        """The model's reason, if it is one it may give; else the customer's request."""
        try:
            reason = HandoffReason(str(arguments.get("reason")))
        except ValueError:
            return HandoffReason.CUSTOMER_REQUEST
        return reason if reason in MODEL_REASONS else HandoffReason.CUSTOMER_REQUEST
