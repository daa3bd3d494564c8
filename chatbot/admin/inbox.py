"""The handoff inbox: the customers waiting for a person, oldest wait first, with claiming and
resolving; the conversation page's poll for new messages; the team's canned replies.

Claiming and resolving go through chatbot.handoff, as every other caller does; replies still go
through the conversation page's takeover reply (chatbot.takeover and its job).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from flask import abort, flash, g, has_request_context, jsonify, make_response, redirect, request
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm
from markupsafe import escape
from peewee import fn

from chatbot import auth, handoff
from chatbot.admin.conversations import is_uuid, shortened
from chatbot.admin.media import shown_besides_text
from chatbot.admin.panel import (
    LoginRequired,
    PanelModelView,
    local_time,
    masked,
    number_labels,
    phone_column,
    signed_in_admin,
)
from chatbot.models import Handoff, Message, Role, utcnow
from chatbot.roles import Role as TeamRole
from chatbot.sanitizer import MAX_STORED_INT
from chatbot.web.security import DASHBOARD_CSP

EXPIRED = "The request expired; please try again."
CATEGORY = "Inbox"


def waiting_now() -> int:
    """How many handoffs are open, counted once per request (the menu names it twice)."""
    if "handoffs_waiting" not in g:
        g.handoffs_waiting = Handoff.waiting_count()
    return g.handoffs_waiting


class CountedLabel:
    """A menu label that shows a count read when a page is drawn (the open handoffs by default:
    "Waiting (3)"; "Waiting" when none): Flask-Admin renders a view's name with str(), as it does its
    lazy labels."""

    def __init__(self, words: str, count: Callable[[], int] = waiting_now):
        self.words = words
        self.count = count

    def __str__(self) -> str:
        # The panel is built outside any request: the label is then the plain words, its menu key.
        count = self.count() if has_request_context() and signed_in_admin() is not None else 0
        return f"{self.words} ({count})" if count else self.words

    def __html__(self) -> str:
        return str(escape(str(self)))


def waited(since: datetime, now: datetime) -> str:
    """How long ago `since` was, in the two largest units ("4 min", "2 h 5 min", "3 d 1 h")."""
    minutes = max(0, int((now - since).total_seconds() // 60))
    days, hours, minutes = minutes // 1440, minutes % 1440 // 60, minutes % 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"


def last_customer_messages(conversation_ids) -> dict:
    """Return each conversation's newest customer message by conversation id, in two queries."""
    if not conversation_ids:
        return {}
    newest = (Message.select(fn.MAX(Message.id))
              .where(Message.conversation.in_(conversation_ids), Message.role == Role.USER.value)
              .group_by(Message.conversation))
    return {message.conversation_id: message for message in Message.select().where(Message.id.in_(newest))}


def strict(page):
    """Serve a page under the dashboard's policy: scripts from this origin only, none inline."""
    response = make_response(page)
    response.headers["Content-Security-Policy"] = DASHBOARD_CSP
    return response


class InboxView(LoginRequired, BaseView):
    """The open handoffs, the longest waiting first, with Claim, Open and Resolve."""

    roles_needed = {"claim_view": TeamRole.AGENT, "resolve_view": TeamRole.AGENT}

    @expose("/")
    def index(self):
        handoffs = list(Handoff.open_ones())
        return strict(self.render(
            "chatbot_admin/inbox.html", handoffs=handoffs, now=utcnow(), waited=waited, labels=number_labels(),
            last_messages=last_customer_messages([waiting.conversation_id for waiting in handoffs]),
            phone=lambda conversation: phone_column(self, None, conversation, "user_phone"),
            shortened=shortened))

    @expose("/<row_id:handoff_id>/claim/", methods=("POST",))
    def claim_view(self, handoff_id):
        waiting = Handoff.get_or_none(Handoff.id == handoff_id)
        operator = signed_in_admin().username
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
        elif waiting is None or waiting.resolved_at is not None:
            flash("Not claimed: that handoff is resolved already.", "error")
        elif handoff.claim(handoff_id, operator):
            flash("Claimed: the customer is yours to answer.", "success")
        else:
            taker = Handoff.get_by_id(handoff_id).claimed_by
            flash(f"Not claimed: {taker} has claimed it already." if taker != operator
                  else "You have claimed it already.", "error")
        return self._back()

    @expose("/<row_id:handoff_id>/resolve/", methods=("POST",))
    def resolve_view(self, handoff_id):
        waiting = Handoff.get_or_none(Handoff.id == handoff_id)
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
        elif waiting is None or waiting.resolved_at is not None:
            flash("That handoff is resolved already.", "error")
        elif handoff.resolve(waiting.conversation_id, signed_in_admin().username):
            flash("Resolved: the conversation is the bot's again; it answers the next message.", "success")
        return self._back()

    @expose("/<conversation_id>/since/<int:message_id>.json")
    def since_view(self, conversation_id, message_id):
        """Return the conversation's messages stored after `message_id`, numbers masked, for the
        conversation page's poll."""
        if message_id > MAX_STORED_INT:
            abort(404)
        newer = (Message.select()
                 .where(Message.conversation == conversation_id, Message.id > message_id)
                 .order_by(Message.id)
                 .limit(100))
        return jsonify(messages=[{"id": message.id, "role": message.role, "text": masked(message.content),
                                  "time": local_time(message.created_at, seconds=True),
                                  **shown_besides_text(message)}
                                 for message in newer])

    def inaccessible_callback(self, name, **kwargs):
        if name == "since_view":
            # A poll from a page whose session ended: an answer its script understands, not the login page.
            return jsonify(error="signed out"), 401
        return super().inaccessible_callback(name, **kwargs)

    def _handle_view(self, name, **kwargs):
        refused = super()._handle_view(name, **kwargs)
        if refused is None and kwargs.get("conversation_id") is not None and not is_uuid(kwargs["conversation_id"]):
            abort(404)
        return refused

    def _back(self):
        return redirect(auth.safe_next(request.form.get("next"), self.get_url(".index")))


class CannedReplyView(PanelModelView):
    """The replies the team sends often: picked on a conversation page to fill the reply box."""

    role_needed = TeamRole.ADMIN

    column_list = ("title", "text")
    column_searchable_list = ("title", "text")
    search_hint = "Title or text"
    form_columns = ("title", "text")
    column_default_sort = "title"
    column_formatters = {"text": lambda view, context, model, name: shortened(model.text, 120)}
