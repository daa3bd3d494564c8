"""The built-in tool schedule_follow_up: a message to this customer later, stored first and sent by
the sweeper when it is due (inside the 24-hour window as it is, past it as the number's template)."""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from chatbot.models import (
    MAX_SCHEDULED_FOLLOW_UPS,
    Conversation,
    FollowUp,
    FollowUpStatus,
    Message,
    OptOut,
    Role,
    Status,
    ToolUseStatus,
    utcnow,
)
from chatbot.models.db import database
from chatbot.tools.calls import ToolResult

NAME = "schedule_follow_up"
MAX_AHEAD = timedelta(days=30)
MIN_AHEAD = timedelta(minutes=1)
MAX_TEXT_CHARS = 1000
RELATIVE = re.compile(r"^\s*in\s+(\d{1,5})\s*(minute|min|hour|day)s?\s*$", re.IGNORECASE)
UNITS = {"minute": 60, "min": 60, "hour": 3600, "day": 86400}


def definition(now: datetime, zone: str) -> dict:
    """The tool as the model is offered it; it names today's date in the business's zone so that
    "tomorrow at 9" can be written down (the date only: the offer stays the same all day)."""
    today = now.replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(zone))
    return {"type": "function", "function": {
        "name": NAME,
        "description": ("Send this customer a WhatsApp message later, e.g. a reminder they asked for. Use it "
                        "only when the customer asks to be reminded or agrees to a follow-up. "
                        f"Today is {today:%A %Y-%m-%d} in the {zone} time zone."),
        "parameters": {
            "type": "object",
            "properties": {
                "when": {"type": "string", "description": (
                    f"When to send it: a date and time in {zone} (e.g. 2026-03-01T09:00), or a delay such as "
                    "'in 30 minutes', 'in 2 hours', 'in 1 day'.")},
                "text": {"type": "string", "description": "The message to send, written to the customer."},
            },
            "required": ["when", "text"],
        },
    }}


def due_time(when: str, now: datetime, zone: str) -> datetime:
    """The UTC time (naive, as stored) `when` names; raise ValueError saying what is wrong."""
    relative = RELATIVE.match(when or "")
    if relative:
        due = now + timedelta(seconds=int(relative.group(1)) * UNITS[relative.group(2).lower()])
    else:
        try:
            parsed = datetime.fromisoformat((when or "").strip().replace("Z", "+00:00"))
        except ValueError as error:
            raise ValueError("'when' must be a date and time such as 2026-03-01T09:00, or 'in 2 hours'") from error
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=ZoneInfo(zone))
        due = parsed.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)
    if due < now + MIN_AHEAD:
        raise ValueError("that time has passed (or is less than a minute away)")
    if due > now + MAX_AHEAD:
        raise ValueError(f"a follow-up can be at most {MAX_AHEAD.days} days ahead")
    return due


def schedule(conversation: Conversation, arguments: dict, zone: str, now: datetime | None = None) -> ToolResult:
    """Store the follow-up the model asked for; the result tells the model what was scheduled, or why not."""
    now = now or utcnow()
    text = str(arguments.get("text") or "").strip()
    if not text:
        return ToolResult(ToolUseStatus.INVALID, "error: 'text' is required", error="no text")
    if len(text) > MAX_TEXT_CHARS:
        return ToolResult(ToolUseStatus.INVALID, f"error: 'text' is longer than {MAX_TEXT_CHARS} characters",
                          error="text too long")
    try:
        due = due_time(str(arguments.get("when") or ""), now, zone)
    except ValueError as error:
        return ToolResult(ToolUseStatus.INVALID, f"error: {error}", error=str(error))
    if FollowUp.scheduled_for(conversation.id) >= MAX_SCHEDULED_FOLLOW_UPS:
        problem = f"this customer already has {MAX_SCHEDULED_FOLLOW_UPS} follow-ups waiting"
        return ToolResult(ToolUseStatus.FAILED, f"error: {problem}", error=problem)
    follow_up = FollowUp.create(conversation=conversation, text=text, due_at=due)
    local = due.replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(zone))
    return ToolResult(ToolUseStatus.OK, f"scheduled (follow-up {follow_up.id}) for {local:%A %Y-%m-%d %H:%M} {zone}")


def claim_due(origin: str, now: datetime | None = None) -> list[int]:
    """Turn each due follow-up into an unsent assistant message, once (two sweepers never both
    claim one), and return those messages' ids; one to a customer who wrote STOP since is cancelled."""
    now = now or utcnow()
    claimed = []
    for follow_up in FollowUp.due(now):
        conversation = follow_up.conversation
        with database.atomic() as transaction:
            if OptOut.applies(conversation.user_phone, conversation.number):
                FollowUp.cancel(FollowUp.id == follow_up.id, by="STOP")
                continue
            message = Message.create(conversation=conversation, role=Role.ASSISTANT.value, origin=origin,
                                     content=follow_up.text, status=Status.UNSENT.value,
                                     metadata={"follow_up": follow_up.id})
            taken = (FollowUp.update(status=FollowUpStatus.SENT.value, sent_message=message)
                     .where(FollowUp.id == follow_up.id, FollowUp.status == FollowUpStatus.SCHEDULED.value).execute())
            if not taken:
                transaction.rollback()
                continue
        claimed.append(message.id)
    return claimed

