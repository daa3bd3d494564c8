"""The webhook log page: every request the webhook received, with its verdict.

Most of a busy log is Twilio's delivery receipts (one per reply part and status), so the page opens
on the messages, with the receipts a tab of their own; a MessageSid finds an entry in either, and
each entry links to the message it brought or reported on and to that message's conversation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import parse_qsl

from flask import request, url_for
from flask_admin.contrib.peewee.filters import FilterEqual, IntEqualFilter
from markupsafe import Markup

from chatbot.admin.panel import PanelModelView, masked_column, numbers_revealed
from chatbot.models import Message, ReplyPart, WebhookLog
from chatbot.redact import mask_phone
from chatbot.whatsapp import STATUS_CALLBACK_PATH


class LoggedValues:
    """A webhook log column's distinct values as drop-down (value, label) pairs, read again each time
    a page lists them: the log gains verdicts and statuses as requests arrive."""

    def __init__(self, column):
        self.column = column

    def __iter__(self):
        values = (
            WebhookLog.select(self.column)
            .where(self.column.is_null(False))
            .distinct()
            .order_by(self.column)
            .tuples()
        )
        return iter([(str(value), str(value)) for (value,) in values])


class LoggedValueFilter:
    """A filter whose drop-down offers the values the log holds (Flask-Admin asks for options once)."""

    def get_options(self, view):
        return LoggedValues(self.column)


class VerdictFilter(LoggedValueFilter, FilterEqual):
    def __init__(self):
        super().__init__(WebhookLog.verdict, "Verdict")


class ResponseStatusFilter(LoggedValueFilter, IntEqualFilter):
    def __init__(self):
        super().__init__(WebhookLog.response_status, "Status")


# A verdict's badge colour: green answered or acknowledged, amber held back, red refused or broken.
VERDICT_BADGES = {
    "allowed": "success", "status_callback": "success",
    "sender_limited": "warning", "global_limited": "warning", "not_our_number": "warning",
    "number_inactive": "warning", "from_ourselves": "warning",
    "duplicate": "secondary", "redirected_to_https": "secondary",
}


def _verdict_badge(view, context, model, name):
    if not model.verdict:
        return ""
    return Markup('<span class="badge badge-{}">{}</span>').format(
        VERDICT_BADGES.get(model.verdict, "danger"), model.verdict)


def webhook_fields(entry: WebhookLog) -> list[tuple[str, str]] | None:
    """The fields of a logged request's body (Twilio's form, or its JSON variant), or None when the
    body is neither."""
    content_type = next((value for name, value in (entry.headers or {}).items()
                         if name.lower() == "content-type"), "")
    if "application/x-www-form-urlencoded" in content_type:
        return parse_qsl(entry.body, keep_blank_values=True)
    if "json" in content_type:
        try:
            payload = json.loads(entry.body)
        except ValueError:
            return None
        if isinstance(payload, dict):
            return [(name, value if isinstance(value, str) else json.dumps(value)) for name, value in payload.items()]
    return None


def is_receipt(entry: WebhookLog) -> bool:
    """Whether `entry` is a delivery receipt (to /whatsapp/status, or one Twilio posted to the webhook)."""
    return entry.verdict == "status_callback" or entry.path == STATUS_CALLBACK_PATH


RECEIPTS = (WebhookLog.verdict == "status_callback") | (WebhookLog.path == STATUS_CALLBACK_PATH)


@dataclass(frozen=True)
class LogKind:
    """A tab of the log: its label and which entries it holds (None: all)."""

    label: str
    scope: object = None


KINDS = {"messages": LogKind("Messages", ~RECEIPTS), "receipts": LogKind("Delivery receipts", RECEIPTS),
         "all": LogKind("All")}


def chosen_kind() -> str:
    """The tab this request shows: every entry for a search (the MessageSid looked for may be a
    receipt's or a message's); else the tab asked for; else every entry when filtered (a link to a
    verdict) and the messages when not."""
    asked = request.args.get("kind", "")
    if request.args.get("search"):
        return "all"
    if asked in KINDS:
        return asked
    return "all" if any(name.startswith("flt") for name in request.args) else "messages"


def _customer(view, context, model, name):
    """The customer's address: who sent a message, or whom a receipt's reply went to (its From is ours)."""
    customer = dict(webhook_fields(model) or ()).get("To" if is_receipt(model) else "From", "")
    return customer if numbers_revealed() else mask_phone(customer) if customer else ""


def linked_messages(sids) -> dict[str, Message]:
    """The stored message each MessageSid brought (an inbound one) or reported on (a reply part's), by sid."""
    sids = [sid for sid in set(sids) if sid]
    if not sids:
        return {}
    found = {message.twilio_sid: message for message in Message.select().where(Message.twilio_sid.in_(sids))}
    for part in ReplyPart.select(ReplyPart, Message).join(Message).where(ReplyPart.twilio_sid.in_(sids)):
        found[part.twilio_sid] = part.message
    return found


def links_to(message: Message | None) -> Markup | str:
    """Links to `message` and to its place in its conversation's transcript."""
    if message is None:
        return ""
    return Markup('<a class="log-message" href="{}">message</a> · <a class="log-conversation" href="{}">'
                  'conversation</a>').format(
        url_for("message.details_view", id=message.id),
        url_for("conversation.details_view", id=message.conversation_id) + f"#message-{message.id}")


def _links(view, context, model, name):
    return links_to(context.get("linked", {}).get(model.message_sid))


class WebhookLogView(PanelModelView):
    """The webhook audit log (secrets redacted when stored); read-only."""

    details_template = "chatbot_admin/webhooklog_details.html"
    can_create = False
    can_edit = False
    can_delete = False
    can_view_details = True
    list_template = "chatbot_admin/webhooklog_list.html"
    column_list = ("received_at", "sender", "verdict", "response_status", "signature_valid", "processing_ms",
                   "message_sid", "links", "error")
    column_labels = {"response_status": "Status", "signature_valid": "Signature valid",
                     "processing_ms": "Processing (ms)", "remote_addr": "Remote address", "sender": "Customer",
                     "message_sid": "MessageSid", "links": "Stored as"}
    column_formatters = {
        "sender": _customer,
        "links": _links,
        "verdict": _verdict_badge,
        "processing_ms": lambda view, context, model, name: f"{model.processing_ms:.1f}",
        "error": masked_column,
    }
    # Headers and body are shown once each, below the table, as tables of their own.
    column_details_list = ("received_at", "verdict", "response_status", "signature_valid", "processing_ms",
                           "message_sid", "error", "method", "path", "remote_addr")
    column_filters = (VerdictFilter(), ResponseStatusFilter(), "signature_valid", "received_at")
    column_searchable_list = ("message_sid",)
    search_hint = "MessageSid (SM…, MM…)"
    # Filters named in the URL (flt0_verdict_equals=duplicate), not numbered: a link survives a new filter.
    named_filter_urls = True
    column_default_sort = ("id", True)

    def get_query(self):
        scope = KINDS[chosen_kind()].scope
        return WebhookLog.select() if scope is None else WebhookLog.select().where(scope)

    def render(self, template, **kwargs):
        entry = kwargs.get("model")
        if template == self.details_template and entry is not None:
            message = linked_messages([entry.message_sid]).get(entry.message_sid)
            kwargs.update(fields=webhook_fields(entry), checked_url=entry.checked_url, links=links_to(message))
        if template == self.list_template:
            kwargs.update(kinds=KINDS, kind=chosen_kind(),
                          linked=linked_messages(entry.message_sid for entry in kwargs.get("data") or ()))
        return super().render(template, **kwargs)
