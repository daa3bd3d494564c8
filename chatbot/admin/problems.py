"""The Problems page: spending caps reached; failed answers, undelivered and stuck messages, grouped by
cause and explained, with a retry (one, or all of a cause) and a dismissal with a reason; and the tool
calls that failed."""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import timedelta

from flask import flash, redirect, request
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm
from redis.exceptions import RedisError

from chatbot.admin.audit_log import record_here
from chatbot.admin.caps import caps_reached
from chatbot.admin.panel import (
    NOT_ON_WHATSAPP,
    LoginRequired,
    explanation_of,
    masked,
    phone_column,
    services,
    signed_in_admin,
)
from chatbot.error_explanations import NOT_ANSWERED, OUTSIDE_WINDOW_CODE, Explanation, twilio_error
from chatbot.errors import NothingToRetry
from chatbot.jobs import queueing
from chatbot.models import (
    DELIVERY_FAILURES,
    Dismissal,
    Message,
    Origin,
    ReplyPart,
    Role,
    Status,
    ToolUse,
    utcnow,
)
from chatbot.roles import Role as TeamRole
from chatbot.sanitizer import whole_number

log = logging.getLogger(__name__)


# A user message still unanswered this long after it was stored is stuck, not slow.
STUCK_AFTER = timedelta(minutes=5)
# The Problems view lists this many, newest first.
PROBLEMS_SHOWN = 200
# Failed tool calls are listed this far back: a broken endpoint shows up at once, and an old failure
# of one fixed since does not linger.
TOOL_FAILURES_SINCE = timedelta(days=7)
# A dismissal's reason is kept this long (the audit row's detail holds 2,000 characters).
REASON_LIMIT = 500
EXPIRED = "The request expired; please look again."
NOT_QUEUED = ("put back in line but not queued (Redis is unreachable); the sweeper queues it once Redis is back.")


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


def shown_status(message: Message, failed_parts) -> str:
    """The status a problem's badge shows: how its delivery ended when Twilio reported a part failed
    (a reply Twilio took is `sent`, which would read as fine), else the message's own."""
    return failed_parts[0].status if failed_parts else message.status


def customer_of(conversation) -> str:
    """The customer as the operator knows them: their WhatsApp name and number ('Ann (whatsapp:+1555•••1111)')."""
    phone = masked(conversation.user_phone)
    return f"{conversation.profile_name} ({phone})" if conversation.profile_name else phone


def named(customers: list[str], shown: int = 3) -> str:
    """'Ann, Bob and Carl', or 'Ann, Bob, Carl and 4 more'."""
    customers = list(dict.fromkeys(customers))
    if len(customers) <= shown:
        return " and ".join(filter(None, [", ".join(customers[:-1]), customers[-1]])) if customers else ""
    return f"{', '.join(customers[:shown])} and {len(customers) - shown} more"


@dataclass
class ProblemRow:
    message: Message
    customer: str
    kind: str
    status: str
    explanation: Explanation | None
    blocker: str | None


@dataclass
class ProblemGroup:
    """The problems with one cause (the same kind and the same error), newest first."""

    kind: str
    explanation: Explanation | None
    # The first row's stored error, for a cause with no explanation.
    error: str
    rows: list[ProblemRow] = field(default_factory=list)

    @property
    def id(self) -> str:
        return hashlib.sha256(cause_of(self.rows[0]).encode()).hexdigest()[:12]

    @property
    def retryable(self) -> list[ProblemRow]:
        return [row for row in self.rows if row.blocker is None]

    @property
    def customers(self) -> str:
        return named([row.customer for row in self.rows])


def cause_of(row: ProblemRow) -> str:
    """What makes two problems one: their kind and their explanation, else their error with its
    numbers left out (timings, ids), so identical failures group and different ones do not."""
    if row.explanation is not None:
        return f"{row.kind}|{row.explanation.source}|{row.explanation.meaning}"
    first_line = (row.message.error or "").partition("\n")[0]
    return f"{row.kind}|{re.sub(r'[0-9]+', '#', first_line)}"


def grouped(rows: list[ProblemRow]) -> list[ProblemGroup]:
    """Group the rows (newest first) by cause: the cause of most problems first, then the newest."""
    groups: dict[str, ProblemGroup] = {}
    for row in rows:
        group = groups.setdefault(cause_of(row), ProblemGroup(row.kind, row.explanation, row.message.error or ""))
        group.rows.append(row)
    # Stable: of causes as common, the one with the newest problem stays first.
    return sorted(groups.values(), key=lambda group: -len(group.rows))


def problem_rows(messages: list[Message]) -> list[ProblemRow]:
    """Each problem message with its customer, the status its badge shows, what went wrong and why a
    retry cannot help (None: it can)."""
    failed_parts = failed_parts_of(message.id for message in messages)
    return [
        ProblemRow(
            message=message,
            customer=customer_of(message.conversation),
            kind=problem_kind(message),
            status=shown_status(message, failed_parts.get(message.id, [])),
            explanation=(NOT_ANSWERED if message.status == Status.PENDING.value
                         else explanation_of(message, failed_parts.get(message.id, []))),
            blocker=retry_blocker(message, failed_parts.get(message.id, [])),
        )
        for message in messages
    ]


def posted_problems(limit: int = PROBLEMS_SHOWN) -> list[Message]:
    """The problems the form names by id (`message_id`, once or more), those still problems only."""
    ids = {number for number in (whole_number(text) for text in request.form.getlist("message_id")[:limit])
           if number is not None}
    if not ids:
        return []
    return list(Message.problems(utcnow() - STUCK_AFTER, len(ids)).where(Message.id.in_(ids)))


class ProblemsView(LoginRequired, BaseView):
    """What needs the operator: spending caps reached, failed answers, undelivered replies, messages
    stuck unanswered, grouped by cause and explained in plain words; a retry (one, or all of a cause)
    where a retry can help, and a dismissal with a reason where it cannot."""

    roles_needed = {"retry_view": TeamRole.AGENT, "retry_group_view": TeamRole.AGENT,
                    "dismiss_view": TeamRole.AGENT}

    @expose("/")
    def index(self):
        rows = problem_rows(list(Message.problems(utcnow() - STUCK_AFTER, PROBLEMS_SHOWN)))
        tool_failures = [
            {"use": use, "phone": phone_column(self, None, use.conversation, "user_phone")}
            for use in ToolUse.failed_since(utcnow() - TOOL_FAILURES_SINCE, PROBLEMS_SHOWN)
        ]
        return self.render("chatbot_admin/problems.html", groups=grouped(rows), problem_count=len(rows),
                           shown=PROBLEMS_SHOWN, caps=caps_reached(), reason_limit=REASON_LIMIT,
                           stuck_minutes=int(STUCK_AFTER.total_seconds() // 60), tool_failures=tool_failures,
                           tool_failure_days=TOOL_FAILURES_SINCE.days)

    @expose("/retry/<row_id:message_id>/", methods=("POST",))
    def retry_view(self, message_id):
        # Only a problem is retried: a delivered reply is never sent twice by a stale page.
        message = Message.problems(utcnow() - STUCK_AFTER, 1).where(Message.id == message_id).first()
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
            return redirect(self.get_url(".index"))
        if message is None:
            flash(not_a_problem(message_id), "error")
            return redirect(self.get_url(".index"))
        customer = customer_of(message.conversation)
        blocker = retry_blocker(message, failed_parts_of([message.id]).get(message.id, []))
        if blocker:
            flash(f"Not retried ({customer}): {blocker}", "error")
            return redirect(self.get_url(".index"))
        try:
            flash(f"{customer}: {retry_problem(message)}", "success")
        except NothingToRetry:
            flash(f"{customer}: the message is being retried already (another click, or another operator, was "
                  "first): nothing more was queued.", "warning")
        except RedisError as error:
            log.error("message_id=%s retry not queued: %s", message.id, error)
            flash(f"{customer}: {NOT_QUEUED}", "error")
        return redirect(self.get_url(".index"))

    @expose("/retry-group/", methods=("POST",))
    def retry_group_view(self):
        """Retry every problem of a cause the page listed, each as its own Retry does (so each goes
        once, however many clicks or operators)."""
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
            return redirect(self.get_url(".index"))
        queued, first_elsewhere, unqueued, blocked = [], [], [], []
        for row in problem_rows(posted_problems()):
            if row.blocker:
                blocked.append(row)
                continue
            try:
                retry_problem(row.message)
                queued.append(row.customer)
            except NothingToRetry:
                first_elsewhere.append(row.customer)
            except RedisError as error:
                log.error("message_id=%s retry not queued: %s", row.message.id, error)
                unqueued.append(row.customer)
        if queued:
            flash(f"Retried {len(queued)}: {named(queued)}.", "success")
        if first_elsewhere:
            flash(f"Being retried already (another click, or another operator, was first): {named(first_elsewhere)}.",
                  "warning")
        if unqueued:
            flash(f"{named(unqueued)}: {NOT_QUEUED}", "error")
        if blocked:
            flash(f"Not retried ({named([row.customer for row in blocked])}): {blocked[0].blocker}", "error")
        if not (queued or first_elsewhere or unqueued or blocked):
            flash("Those problems are solved already (or gone); please look again.", "error")
        return redirect(self.get_url(".index"))

    @expose("/dismiss/", methods=("POST",))
    def dismiss_view(self):
        """Take problems off the page with the reason why, in the audit log too (one, or all of a cause)."""
        reason = " ".join((request.form.get("reason") or "").split())[:REASON_LIMIT]
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
            return redirect(self.get_url(".index"))
        if not reason:
            flash("Not dismissed: say why (the team reads it in the audit log).", "error")
            return redirect(self.get_url(".index"))
        rows = problem_rows(posted_problems())
        if not rows:
            flash("Those problems are solved already (or gone); please look again.", "error")
            return redirect(self.get_url(".index"))
        customers = named([row.customer for row in rows])
        Dismissal.dismiss([row.message.id for row in rows], reason, signed_in_admin().username)
        record_here("problem_dismissed", target=customers,
                    detail=f"{len(rows)} problem(s), {rows[0].kind}: {reason}")
        flash(f"Dismissed {len(rows)} ({customers}): {reason}", "success")
        return redirect(self.get_url(".index"))


def not_a_problem(message_id: int) -> str:
    """Say why the message with this id is not retried: it is not one WhatsApp carries, or its problem is solved."""
    stored = Message.get_or_none(Message.id == message_id)
    if stored is not None and not (stored.origin == Origin.WHATSAPP.value and stored.conversation.is_on_whatsapp):
        return f"Not retried: {NOT_ON_WHATSAPP}"
    return "The problem is solved already (or the message is gone); please look again."
