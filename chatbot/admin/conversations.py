"""Conversations with their transcripts and takeover, every message, and who opted out."""
from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

from flask import Response, abort, flash, g, make_response, redirect, request, session, stream_with_context, url_for
from flask_admin import expose
from flask_admin.actions import action
from flask_admin.contrib.peewee.filters import FilterEqual
from flask_admin.form import SecureForm
from flask_admin.model.template import TemplateLinkRowAction
from markupsafe import Markup
from peewee import SQL, PeeweeException
from redis.exceptions import RedisError

from chatbot import auth, exports, handoff, takeover
from chatbot.admin.audit_log import record_here
from chatbot.admin.caps import cap_badge
from chatbot.admin.drilldowns import ConversationFigureFilter, MessageFigureFilter
from chatbot.admin.media import attachments_of, place_of
from chatbot.admin.panel import (
    NOT_ON_WHATSAPP,
    REVEAL_PHONES,
    MessageNumberFilter,
    NumberFilter,
    PanelModelView,
    explanation_of,
    local_time,
    masked,
    masked_column,
    may_do,
    number_labels,
    phone_column,
    services,
    signed_in_admin,
    status_badge_column,
)
from chatbot.jobs import queueing
from chatbot.models import (
    DELIVERY_FAILURES,
    CannedReply,
    Conversation,
    FollowUp,
    Handoff,
    Message,
    Note,
    OptOut,
    ReplyPart,
    Role,
    Status,
    ToolUse,
    utcnow,
)
from chatbot.roles import Role as TeamRole
from chatbot.sanitizer import whole_number
from chatbot.web.security import DASHBOARD_CSP
from chatbot.web.status import delivery_fixes

log = logging.getLogger(__name__)

NOTE_LIMIT = 4000
# A tool's answer is shown this far in the transcript (the model read up to a few KB of it).
TOOL_RESULT_SHOWN = 300


def _phone_with_delivery_flag(view, context, model, name):
    """The phone, marked when the latest reply to it failed for good; the fix is in the tooltip."""
    phone = phone_column(view, context, model, name)
    fix = context.get("delivery_fixes", {}).get(model.id)
    if not fix:
        return phone
    return Markup('{} <span class="badge badge-danger delivery-flag" title="{}">not delivered</span>').format(
        phone, fix)


def shortened(text: str | None, limit: int = 80) -> str:
    """`text` on one line, phone numbers masked, cut to `limit` characters."""
    line = " ".join(masked(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def failure_badge(failures: int) -> Markup | str:
    if not failures:
        return ""
    return Markup('<span class="badge badge-danger failure-badge">{} failed</span>').format(failures)


def reply_time(answer: Message, question: Message | None) -> str:
    """How long the user waited for `answer`: from their question stored to its last part taken by Twilio."""
    if question is None or answer.sent_at is None:
        return "—"
    return f"{(answer.sent_at - question.created_at).total_seconds():.1f} s"


def timeline_events(conversation: Conversation) -> list[tuple[datetime, str, object]]:
    """Return the conversation's handoffs (opened, resolved) and internal notes as (when, kind, row),
    in time order, for the transcript to show between its messages."""
    events = []
    for opened in conversation.handoffs.order_by(Handoff.opened_at):
        events.append((opened.opened_at, "handoff", opened))
        if opened.resolved_at is not None:
            events.append((opened.resolved_at, "resolved", opened))
    for note in conversation.notes:
        events.append((note.created_at, "note", note))
    return sorted(events, key=lambda event: event[0])


def interleaved(messages: list[Message], events: list) -> list[tuple[str, object]]:
    """Merge `events` into the messages (kept in id order) by time: each event comes after the
    messages stored before it."""
    timeline, pending = [], list(events)
    for message in messages:
        while pending and pending[0][0] < message.created_at:
            _, kind, row = pending.pop(0)
            timeline.append((kind, row))
        timeline.append(("message", message))
    timeline.extend((kind, row) for _, kind, row in pending)
    return timeline


def tool_uses_of(conversation: Conversation, message_ids) -> tuple[dict[int, list[ToolUse]], list[ToolUse]]:
    """Return the conversation's tool calls by the customer message they answered, and those whose
    message is gone (deleted since), each in the order they were made."""
    by_message, unattached = {}, []
    for use in ToolUse.select().where(ToolUse.conversation == conversation).order_by(ToolUse.id):
        if use.message_id in message_ids:
            by_message.setdefault(use.message_id, []).append(use)
        else:
            unattached.append(use)
    return by_message, unattached


def arguments_shown(use: ToolUse) -> str:
    """A tool call's arguments as stored (secrets masked when written), phone numbers masked for this operator."""
    return masked(json.dumps(use.arguments, ensure_ascii=False))


def transcript_of(conversation: Conversation) -> dict:
    """Return the transcript's messages with, by message id, the questions each answer answers, its
    end-to-end reply time, its reply parts, the knowledge it was given, the tool calls made for it and
    what went wrong with it in plain words; and the follow-ups promised in the conversation."""
    transcript = list(Message.select().where(Message.conversation == conversation).order_by(Message.id))
    by_id = {message.id: message for message in transcript}
    parts = ReplyPart.of_conversation(conversation)
    questions, reply_times, explanations, knowledge = {}, {}, {}, {}
    for message in transcript:
        if message.role == Role.ASSISTANT.value and isinstance(message.metadata.get("knowledge"), dict):
            knowledge[message.id] = message.metadata["knowledge"]
        failed = [part for part in parts.get(message.id, []) if part.status in DELIVERY_FAILURES]
        explanations[message.id] = explanation_of(message, failed)
        if message.role == Role.ASSISTANT.value and message.reply_to_id is not None:
            # A burst's answer replies to its last question and lists every one it answers.
            answered = message.metadata.get("answers") or [message.reply_to_id]
            questions[message.id] = [by_id[question_id] for question_id in answered if question_id in by_id]
            reply_times[message.id] = reply_time(message, by_id.get(message.reply_to_id))
    tool_uses, unattached_tool_uses = tool_uses_of(conversation, by_id)
    return {"transcript": transcript, "timeline": interleaved(transcript, timeline_events(conversation)),
            "parts": parts, "questions": questions, "reply_times": reply_times, "explanations": explanations,
            "knowledge": knowledge, "tool_uses": tool_uses, "unattached_tool_uses": unattached_tool_uses,
            "follow_ups": list(FollowUp.select().where(FollowUp.conversation == conversation)
                               .order_by(FollowUp.due_at, FollowUp.id))}


def handoff_desk(conversation: Conversation) -> dict:
    """Return what the conversation page needs beside the transcript: the open handoff, the canned
    replies, the reply box's text (a canned reply chosen by ?canned=<id>) and the new messages' poll."""
    chosen = whole_number(request.args.get("canned", ""))
    canned = CannedReply.get_or_none(CannedReply.id == chosen) if chosen else None
    return {"handoff": Handoff.open_for(conversation.id),
            "canned_replies": list(CannedReply.select().order_by(CannedReply.title)),
            "canned": canned, "reply_text": canned.text if canned else "",
            "poll_url": url_for("inbox.since_view", conversation_id=conversation.id, message_id=0)}


class ConversationView(PanelModelView):
    """Conversations, searchable by phone; a conversation's page is its transcript."""

    list_template = "chatbot_admin/conversation_list.html"
    details_template = "chatbot_admin/conversation_details.html"
    can_create = False
    can_edit = False
    can_view_details = True
    roles_needed = {
        "note_view": TeamRole.AGENT, "take_over_view": TeamRole.AGENT, "hand_back_view": TeamRole.AGENT,
        "reply_view": TeamRole.AGENT, "reset_context_view": TeamRole.AGENT, "deactivate_view": TeamRole.AGENT,
        "reset_context": TeamRole.AGENT, "deactivate": TeamRole.AGENT, "cancel_follow_up_view": TeamRole.AGENT,
        "confirm_delete_view": TeamRole.ADMIN, "delete_confirmed_view": TeamRole.ADMIN,
        "reveal_view": TeamRole.OWNER, "export_view": TeamRole.ADMIN,
    }
    column_list = ("user_phone", "profile_name", "number", "message_count", "last_message", "failures", "is_active",
                   "paused_by", "waiting", "updated_at")
    column_hidden_on_phone = ("message_count", "is_active")
    column_labels = {"user_phone": "Phone", "profile_name": "Name", "number": "Number", "message_count": "Messages",
                     "last_message": "Last message", "failures": "Failures", "is_active": "Active",
                     "paused_by": "Taken over by", "waiting": "Waiting", "updated_at": "Last activity"}
    column_formatters = {"user_phone": _phone_with_delivery_flag,
                         "waiting": lambda view, context, model, name: model.waiting or "",
                         "last_message": lambda view, context, model, name: shortened(model.last_message),
                         "failures": lambda view, context, model, name: (
                             failure_badge(model.failures) + cap_badge(model.user_phone, model.number)),
                         # A number removed since is shown by its address.
                         "number": lambda view, context, model, name: context.get("number_labels", {}).get(
                             model.number, model.number)}
    column_searchable_list = ("user_phone", "profile_name")
    search_hint = "Phone number or name"
    column_filters = ("is_active", NumberFilter(), "created_at", "updated_at", ConversationFigureFilter())
    # Filters named in the URL (flt0_number_equals=default), not numbered: a link survives a new filter.
    named_filter_urls = True

    def get_query(self):
        """Conversations an operator has taken over first, then those with messages waiting for a
        person, then the most recently active (a column the operator sorts by replaces this order)."""
        return Conversation.listed().order_by(Conversation.paused_at.is_null(), SQL("waiting").desc(),
                                              Conversation.updated_at.desc())

    def get_list_row_actions(self):
        # Words, not bare icons; deleting asks on a page of its own rather than in a pop-up.
        actions = [TemplateLinkRowAction("chatbot_row_actions.transcript", "Transcript")]
        if self.can_delete:
            actions.append(TemplateLinkRowAction("chatbot_row_actions.confirm_delete", "Delete"))
        return actions

    def render(self, template, **kwargs):
        if template == self.details_template and kwargs.get("model") is not None:
            kwargs.update(transcript_of(kwargs["model"]))
            kwargs.update(handoff_desk(kwargs["model"]))
            kwargs["phone"] = phone_column(self, None, kwargs["model"], "user_phone")
            kwargs["delivery_fix"] = delivery_fixes([kwargs["model"].id]).get(kwargs["model"].id)
            zone_name = services().config.admin_timezone
            # Follow-ups are promised in the business's time zone (the model is told it), so they show in it.
            kwargs.update(zone_name=zone_name, arguments_shown=arguments_shown, tool_result_shown=TOOL_RESULT_SHOWN,
                          attachments_of=attachments_of, place_of=place_of)
        if template == self.list_template and kwargs.get("data"):
            kwargs["delivery_fixes"] = delivery_fixes([conversation.id for conversation in kwargs["data"]])
            kwargs["number_labels"] = number_labels()
        return super().render(template, **kwargs)

    @expose("/details/")
    def details_view(self):
        """The transcript, under the dashboard's policy: it runs only our own script files."""
        response = make_response(super().details_view())
        response.headers["Content-Security-Policy"] = DASHBOARD_CSP
        return response

    @expose("/note/<conversation_id>/", methods=("POST",))
    def note_view(self, conversation_id):
        text = (request.form.get("note") or "").strip()
        conversation = Conversation.get_or_none(Conversation.id == conversation_id)
        if not SecureForm(request.form).validate() or conversation is None:
            flash("The request expired; please try again.", "error")
        elif not text:
            flash("Write the note first.", "error")
        else:
            Note.create(conversation=conversation_id, author=signed_in_admin().username, text=text[:NOTE_LIMIT])
            flash("Note added: the team sees it here; the customer never does.", "success")
        return self._back_to(conversation_id)

    @expose("/follow-up/<row_id:follow_up_id>/cancel/", methods=("POST",))
    def cancel_follow_up_view(self, follow_up_id):
        follow_up = FollowUp.get_or_none(FollowUp.id == follow_up_id)
        if follow_up is None:
            flash("That follow-up is gone.", "error")
            return redirect(self.get_url(".index_view"))
        if not SecureForm(request.form).validate():
            flash("The request expired; please try again.", "error")
        elif FollowUp.cancel(FollowUp.id == follow_up_id, by=signed_in_admin().username):
            flash("Follow-up cancelled: it will not be sent.", "success")
        else:
            flash("Not cancelled: it was sent or cancelled already.", "error")
        return redirect(self.get_url(".details_view", id=follow_up.conversation_id) + "#follow-ups")

    @expose("/reveal/", methods=("POST",))
    def reveal_view(self):
        if SecureForm(request.form).validate():
            session[REVEAL_PHONES] = not session.get(REVEAL_PHONES)
            record_here("reveal_numbers" if session[REVEAL_PHONES] else "mask_numbers", target=request.path)
        return redirect(auth.safe_next(request.form.get("next"), self.get_url(".index_view")))

    @expose("/export/")
    def export_view(self):
        """The messages of the conversations the list shows (its filters and search), as a download
        written while it is read; senders masked unless an owner asks for them with reveal=1."""
        shape = request.args.get("format", "csv")
        if shape not in exports.WRITERS:
            abort(404)
        reveal = request.args.get("reveal") == "1"
        if reveal and not may_do(TeamRole.OWNER):
            return self.refused(TeamRole.OWNER)
        config = services().config
        scope = exports.Scope(zone=ZoneInfo(config.admin_timezone), default_number=config.twilio_whatsapp_number,
                              conversations=self._listed_ids(), reveal=reveal)
        if reveal:
            # The query string says what was revealed: the format, the list's filters and search.
            record_here("export_revealed", target=request.path, detail=request.query_string.decode())
        filename = f"conversations-{utcnow():%Y%m%d-%H%M%S}.{shape}"
        return Response(stream_with_context(exports.export(scope, shape)), mimetype=exports.MEDIA_TYPES[shape],
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    def _listed_ids(self):
        # Flask-Admin's own reading of the filters and search (range checks included) on the list's own
        # query: the export holds what the list shows. It counts them too, as the list page does.
        view_args = self._get_list_extra_args()
        _, listed = self.get_list(None, None, None, view_args.search, view_args.filters, execute=False, page_size=0)
        return listed.select(Conversation.id).order_by()

    @expose("/takeover/<conversation_id>/", methods=("POST",))
    def take_over_view(self, conversation_id):
        if SecureForm(request.form).validate():
            conversation = Conversation.get_or_none(Conversation.id == conversation_id)
            if conversation is not None and not conversation.is_on_whatsapp:
                flash(f"Not taken over: {NOT_ON_WHATSAPP}", "error")
            elif takeover.take_over(conversation_id, signed_in_admin().username):
                flash("You have taken this conversation over: the bot answers nothing until you hand it back.",
                      "success")
            else:
                flash("Not taken over: the conversation has ended or someone already took it over.", "error")
        return self._back_to(conversation_id)

    @expose("/handback/<conversation_id>/", methods=("POST",))
    def hand_back_view(self, conversation_id):
        if not SecureForm(request.form).validate():
            return self._back_to(conversation_id)
        # Handing back with a handoff open resolves it: a paused conversation nobody waits on is a lie.
        if Handoff.open_for(conversation_id) is not None:
            resolved = handoff.resolve(conversation_id, signed_in_admin().username)
        else:
            resolved = takeover.hand_back(Conversation.id == conversation_id)
        if resolved:
            flash("Handed back: the bot answers the next message.", "success")
        return self._back_to(conversation_id)

    @expose("/reply/<conversation_id>/", methods=("POST",))
    def reply_view(self, conversation_id):
        text = (request.form.get("reply") or "").strip()
        conversation = Conversation.get_or_none(Conversation.id == conversation_id)
        if not SecureForm(request.form).validate() or conversation is None:
            flash("The request expired; please try again.", "error")
        elif not conversation.is_on_whatsapp:
            flash(f"Not sent: {NOT_ON_WHATSAPP}", "error")
        elif conversation.paused_at is None:
            flash("Take the conversation over before replying: the bot is answering it.", "error")
        elif not text:
            flash("Write a reply first.", "error")
        else:
            reply = takeover.store_operator_reply(conversation, text, signed_in_admin().username)
            try:
                queueing.enqueue_operator_reply(services().queue, reply.id)
                flash("Reply queued for sending.", "success")
            except RedisError as error:
                log.error("message_id=%s operator reply not queued: %s", reply.id, error)
                flash("The reply is stored but could not be queued (Redis is unreachable); the sweeper "
                      "sends it once Redis is back.", "error")
        return self._back_to(conversation_id)

    @expose("/reset/<conversation_id>/", methods=("POST",))
    def reset_context_view(self, conversation_id):
        if SecureForm(request.form).validate():
            self.action_reset_context([conversation_id])
        return self._back_to(conversation_id)

    @expose("/deactivate/<conversation_id>/", methods=("POST",))
    def deactivate_view(self, conversation_id):
        if SecureForm(request.form).validate():
            self.action_deactivate([conversation_id])
        return self._back_to(conversation_id)

    @expose("/delete/confirm/")
    def confirm_delete_view(self):
        ids = [conversation_id for conversation_id in request.args.getlist("id") if is_uuid(conversation_id)]
        conversations = list(Conversation.listed().where(Conversation.id.in_(ids)).order_by(Conversation.updated_at))
        if not conversations:
            flash("Those conversations are gone already.", "error")
            return redirect(self.get_url(".index_view"))
        return self.render("chatbot_admin/conversation_delete.html", conversations=conversations,
                           phone=lambda conversation: phone_column(self, None, conversation, "user_phone"),
                           return_url=auth.safe_next(request.args.get("url"), self.get_url(".index_view")))

    @expose("/delete/confirmed/", methods=("POST",))
    def delete_confirmed_view(self):
        ids = [conversation_id for conversation_id in request.form.getlist("id") if is_uuid(conversation_id)]
        if not SecureForm(request.form).validate():
            flash("The request expired; please try again.", "error")
        elif ids and self._delete_with_history(ids):
            flash(f"Deleted {len(ids)} conversation(s) with their messages and webhook log entries.", "success")
        return redirect(auth.safe_next(request.form.get("url"), self.get_url(".index_view")))

    def _back_to(self, conversation_id):
        # At the newest messages and the reply box (the page's messages above them), not at the top.
        return redirect(self.get_url(".details_view", id=conversation_id) + "#chat")

    def _handle_view(self, name, **kwargs):
        refused = super()._handle_view(name, **kwargs)
        if refused is None and kwargs.get("conversation_id") is not None and not is_uuid(kwargs["conversation_id"]):
            # A malformed id in a takeover URL is a 404, not a database error.
            abort(404)
        return refused

    @action("reset_context", "Reset context", "Forget the AI context of the selected conversations?")
    def action_reset_context(self, ids):
        for conversation_id in ids:
            services().context.clear_history(conversation_id)
        flash(f"Context reset for {len(ids)} conversation(s); their messages are kept.", "success")

    @action("deactivate", "Deactivate", "End the selected conversations? The next message starts a new one.")
    def action_deactivate(self, ids):
        count = Conversation.end(ids, services().context)
        flash(f"Deactivated {count} conversation(s).", "success")

    def delete_model(self, model) -> bool:
        """Delete one conversation as `flask conversations delete` does (the delete button)."""
        return self._delete_with_history([model.id])

    @action("delete", "Delete")
    def action_delete(self, ids):
        return redirect(self.get_url(".confirm_delete_view", id=ids, url=request.form.get("url")))

    def _delete_with_history(self, ids) -> bool:
        # Flask-Admin's own delete would leave the context window and the webhook log entries,
        # which hold the sender's number.
        try:
            Conversation.delete_with_history(ids, services().context)
        except (PeeweeException, RedisError) as error:
            log.error("conversation delete failed: %s", error)
            flash(f"Nothing was deleted: {error}", "error")
            return False
        return True


def _metadata_column(view, context, model, name):
    """The message's metadata without its files' Twilio addresses: the transcript shows the files
    through the panel, and an address at Twilio is for the panel alone to fetch."""
    shown = dict(model.metadata)
    if shown.get("media"):
        shown["media"] = [{key: value for key, value in item.items() if key != "url"} for item in shown["media"]]
    return masked(json.dumps(shown, ensure_ascii=False))


class MessageView(PanelModelView):
    """Every stored message; read-only."""

    can_create = False
    can_edit = False
    can_delete = False
    can_view_details = True
    column_list = ("created_at", "conversation", "role", "content", "status", "model", "total_tokens",
                   "latency_ms")
    column_hidden_on_phone = ("model", "total_tokens", "latency_ms")
    column_labels = {"total_tokens": "Tokens", "latency_ms": "Latency (ms)", "conversation": "Phone"}
    column_formatters = {
        "conversation": lambda view, context, model, name: phone_column(view, context, model.conversation,
                                                                        "user_phone"),
        "content": lambda view, context, model, name: (
            model.content if len(model.content) <= 120 else model.content[:117] + "…"
        ),
        "status": status_badge_column,
        "latency_ms": lambda view, context, model, name: f"{model.latency_ms:.0f}" if model.latency_ms else "",
        "error": masked_column,
        "metadata": _metadata_column,
    }
    column_details_exclude_list = ("twilio_sid",)
    column_searchable_list = ("content",)
    search_hint = "Message text"
    # Linked to by the dashboard as flt0_figure_equals=answered, flt1_created_at_from=2025-01-31
    # 00:00:00+01:00 (in ADMIN_TIMEZONE, the offset named) and flt3_number_equals=default.
    column_filters = (
        FilterEqual(Message.status, "Status", options=[(status.value, status.value) for status in Status]),
        "created_at",
        MessageNumberFilter(),
        FilterEqual(Message.role, "Role", options=[(role.value, role.value) for role in Role]),
        "model",
        MessageFigureFilter(),
    )
    named_filter_urls = True
    column_default_sort = ("id", True)

    def get_query(self):
        # Each row shows its sender: read with the page, not one query a row.
        return Message.select(Message, Conversation).join(Conversation)


def _opted_out_of(view, context, model, name) -> str:
    if model.number is None:
        return "every number (written before opt-outs were per number)"
    return context.get("number_labels", {}).get(model.number, model.number)


class OptOutView(PanelModelView):
    """Senders who wrote STOP to a number. Removing one lets that number message them again (as their
    START to it would): it is asked on a page of its own that names them, and audited."""

    list_template = "chatbot_admin/optout_list.html"
    can_create = False
    can_edit = False
    column_list = ("user_phone", "number", "created_at")
    column_labels = {"user_phone": "Phone", "number": "Number", "created_at": "Opted out at"}
    column_formatters = {"user_phone": phone_column, "number": _opted_out_of}
    column_default_sort = ("created_at", True)
    roles_needed = {"confirm_remove_view": TeamRole.ADMIN, "remove_confirmed_view": TeamRole.ADMIN}

    def render(self, template, **kwargs):
        if template == self.list_template and kwargs.get("data"):
            kwargs["number_labels"] = number_labels()
        return super().render(template, **kwargs)

    def get_list_row_actions(self):
        # Words, not a bare bin icon; removing asks on a page of its own rather than in a pop-up.
        return [TemplateLinkRowAction("chatbot_row_actions.confirm_remove", "Remove")] if self.can_delete else []

    @expose("/remove/confirm/")
    def confirm_remove_view(self):
        ids = [whole_number(row_id) for row_id in request.args.getlist("id")]
        opt_outs = list(OptOut.select().where(OptOut.id.in_([row_id for row_id in ids if row_id])))
        if not opt_outs:
            flash("Those opt-outs are gone already.", "error")
            return redirect(self.get_url(".index_view"))
        labels = number_labels()
        return self.render("chatbot_admin/optout_remove.html", opt_outs=opt_outs,
                           phone=lambda row: phone_column(self, None, row, "user_phone"),
                           number=lambda row: _opted_out_of(self, {"number_labels": labels}, row, "number"),
                           words=services().config.user_commands,
                           return_url=auth.safe_next(request.args.get("url"), self.get_url(".index_view")))

    @expose("/remove/confirmed/", methods=("POST",))
    def remove_confirmed_view(self):
        ids = [row_id for row_id in map(whole_number, request.form.getlist("id")) if row_id]
        if not SecureForm(request.form).validate():
            flash("The request expired; please try again.", "error")
        elif ids:
            removed = self._remove(ids)
            flash(f"Removed {removed} opt-out(s): the bot may message them again." if removed
                  else "Those opt-outs are gone already.", "success" if removed else "error")
        return redirect(auth.safe_next(request.form.get("url"), self.get_url(".index_view")))

    @expose("/delete/", methods=("POST",))
    def delete_view(self):
        """Flask-Admin's one-click delete asks first, like the row's Remove."""
        return self._ask_first(request.form.getlist("id"))

    @action("delete", "Remove")
    def action_delete(self, ids):
        return self._ask_first(ids)

    def _ask_first(self, ids):
        # Only a question so far: the audit row is written when the removal is confirmed.
        g.audit_recorded = True
        return redirect(self.get_url(".confirm_remove_view", id=ids, url=request.form.get("url")))

    def _remove(self, ids) -> int:
        """Delete the opt-outs `ids`, each audited with whom it let the bot message again; return how many."""
        labels = number_labels()
        removed = 0
        for opt_out in OptOut.select().where(OptOut.id.in_(ids)):
            if OptOut.delete().where(OptOut.id == opt_out.id).execute():
                removed += 1
                record_here("opt_out_removed", target=opt_out.user_phone,
                            detail=(f"number {_opted_out_of(self, {'number_labels': labels}, opt_out, 'number')}; "
                                    f"opted out at {local_time(opt_out.created_at, seconds=True)}"))
        return removed
