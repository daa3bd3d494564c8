"""The Problems page: failed answers, undelivered and stuck messages, explained, with a retry; and the
tool calls that failed."""
from __future__ import annotations

import logging
from datetime import timedelta

from flask import flash, redirect, request
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm
from redis.exceptions import RedisError

from chatbot.admin.panel import NOT_ON_WHATSAPP, LoginRequired, explanation_of, phone_column, services
from chatbot.error_explanations import NOT_ANSWERED, OUTSIDE_WINDOW_CODE, twilio_error
from chatbot.errors import NothingToRetry
from chatbot.jobs import queueing
from chatbot.models import (
    DELIVERY_FAILURES,
    Message,
    Origin,
    ReplyPart,
    Role,
    Status,
    ToolUse,
    utcnow,
)
from chatbot.roles import Role as TeamRole

log = logging.getLogger(__name__)


# A user message still unanswered this long after it was stored is stuck, not slow.
STUCK_AFTER = timedelta(minutes=5)
# The Problems view lists this many, newest first.
PROBLEMS_SHOWN = 200
# Failed tool calls are listed this far back: a broken endpoint shows up at once, and an old failure
# of one fixed since does not linger.
TOOL_FAILURES_SINCE = timedelta(days=7)


def failed_parts_of(message_ids) -> dict[int, list[ReplyPart]]:
    """Return the failed or undelivered parts of these messages by message id, in sending order."""
    parts: dict[int, list[ReplyPart]] = {}
    for part in (ReplyPart.select()
                 .where(ReplyPart.message.in_(list(message_ids)), ReplyPart.status.in_(DELIVERY_FAILURES))
                 .order_by(ReplyPart.message, ReplyPart.number)):
        parts.setdefault(part.message_id, []).append(part)
    return parts


def retry_blocker(message: Message, failed_parts) -> str | None:
    """Say why retrying `message` cannot help (sending it again fails the same way), or None when it can."""
    if message.role == Role.USER.value:
        return None
    explanation = explanation_of(message, failed_parts)
    if explanation == twilio_error(OUTSIDE_WINDOW_CODE):
        conversation = message.conversation
        template = services().numbers.for_key(conversation.number).template_sid
        if conversation.service_window().is_closed() and not template:
            return ("The user last wrote more than 24 hours ago and this number has no approved template: "
                    "retry once the user writes again, or after configuring a template.")
        return None
    if explanation is not None and not explanation.retry_helps:
        return f"{explanation.meaning} {explanation.fix}"
    if message.operator is None and message.reply_to_id is None:
        return "This reply answers no stored message, so no job can send it again."
    return None


def retry_problem(message: Message) -> str:
    """Put a problem message back in line as `flask retry-failed` and the sweeper do; say what was done.

    Raises NothingToRetry when another retry put it back first, and RedisError when the job could not
    be queued (the message is back in line all the same).
    """
    queue = services().queue
    if message.role == Role.USER.value and message.status == Status.FAILED.value:
        queueing.answer_again(queue, [message])
        return "Queued for another answer."
    if message.role == Role.USER.value:
        if not queueing.queue_unless_active(queue, message.id, message.conversation.user_phone):
            return "Already in line: its job is waiting for a worker. Check the dashboard's workers."
        return "Queued for an answer."
    queueing.send_again(queue, message)
    return "Queued for sending again."


def problem_kind(message: Message) -> str:
    if message.role == Role.ASSISTANT.value:
        return "not delivered"
    return "not answered" if message.status == Status.PENDING.value else "AI failed"


class ProblemsView(LoginRequired, BaseView):
    """What needs the operator: failed answers, undelivered replies, messages stuck unanswered; each
    explained in plain words, with a one-click retry where a retry can help."""

    roles_needed = {"retry_view": TeamRole.AGENT}

    @expose("/")
    def index(self):
        problems = list(Message.problems(utcnow() - STUCK_AFTER, PROBLEMS_SHOWN))
        failed_parts = failed_parts_of(message.id for message in problems)
        rows = [
            {
                "message": message,
                "phone": phone_column(self, None, message.conversation, "user_phone"),
                "kind": problem_kind(message),
                "explanation": (NOT_ANSWERED if message.status == Status.PENDING.value
                                else explanation_of(message, failed_parts.get(message.id, []))),
                "blocker": retry_blocker(message, failed_parts.get(message.id, [])),
            }
            for message in problems
        ]
        tool_failures = [
            {"use": use, "phone": phone_column(self, None, use.conversation, "user_phone")}
            for use in ToolUse.failed_since(utcnow() - TOOL_FAILURES_SINCE, PROBLEMS_SHOWN)
        ]
        return self.render("chatbot_admin/problems.html", rows=rows, shown=PROBLEMS_SHOWN,
                           stuck_minutes=int(STUCK_AFTER.total_seconds() // 60), tool_failures=tool_failures,
                           tool_failure_days=TOOL_FAILURES_SINCE.days)

    @expose("/retry/<row_id:message_id>/", methods=("POST",))
    def retry_view(self, message_id):
        # Only a problem is retried: a delivered reply is never sent twice by a stale page.
        message = Message.problems(utcnow() - STUCK_AFTER, 1).where(Message.id == message_id).first()
        if not SecureForm(request.form).validate():
            flash("The request expired; please look again.", "error")
            return redirect(self.get_url(".index"))
        if message is None:
            flash(not_a_problem(message_id), "error")
            return redirect(self.get_url(".index"))
        blocker = retry_blocker(message, failed_parts_of([message.id]).get(message.id, []))
        if blocker:
            flash(f"Not retried: {blocker}", "error")
            return redirect(self.get_url(".index"))
        try:
            flash(f"Message {message.id}: {retry_problem(message)}", "success")
        except NothingToRetry:
            flash(f"Message {message.id} is being retried already (another click, or another operator, was "
                  "first): nothing more was queued.", "warning")
        except RedisError as error:
            log.error("message_id=%s retry not queued: %s", message.id, error)
            flash("Put back in line but not queued (Redis is unreachable); the sweeper queues it once Redis "
                  "is back.", "error")
        return redirect(self.get_url(".index"))


def not_a_problem(message_id: int) -> str:
    """Say why the message with this id is not retried: it is not one WhatsApp carries, or its problem is solved."""
    stored = Message.get_or_none(Message.id == message_id)
    if stored is not None and not (stored.origin == Origin.WHATSAPP.value and stored.conversation.is_on_whatsapp):
        return f"Not retried: {NOT_ON_WHATSAPP}"
    return "The problem is solved already (or the message is gone); please look again."
