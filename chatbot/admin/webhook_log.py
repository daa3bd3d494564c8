"""The webhook log page: every request the webhook received, with its verdict."""
from __future__ import annotations

import json
from urllib.parse import parse_qsl

from flask_admin.contrib.peewee.filters import FilterEqual, IntEqualFilter
from markupsafe import Markup

from chatbot.admin.panel import PanelModelView, masked_column, numbers_revealed
from chatbot.models import WebhookLog
from chatbot.redact import mask_phone


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


def _sender(view, context, model, name):
    sender = dict(webhook_fields(model) or ()).get("From", "")
    return sender if numbers_revealed() else mask_phone(sender) if sender else ""


class WebhookLogView(PanelModelView):
    """The webhook audit log (secrets redacted when stored); read-only."""

    details_template = "chatbot_admin/webhooklog_details.html"
    can_create = False
    can_edit = False
    can_delete = False
    can_view_details = True
    column_list = ("received_at", "sender", "verdict", "response_status", "signature_valid", "processing_ms",
                   "message_sid", "error")
    column_labels = {"response_status": "Status", "signature_valid": "Signature valid",
                     "processing_ms": "Processing (ms)", "remote_addr": "Remote address"}
    column_formatters = {
        "sender": _sender,
        "verdict": _verdict_badge,
        "processing_ms": lambda view, context, model, name: f"{model.processing_ms:.1f}",
        "error": masked_column,
    }
    # Headers and body are shown once each, below the table, as tables of their own.
    column_details_list = ("received_at", "verdict", "response_status", "signature_valid", "processing_ms",
                           "message_sid", "error", "method", "path", "remote_addr")
    column_filters = (VerdictFilter(), ResponseStatusFilter(), "signature_valid", "received_at")
    # Filters named in the URL (flt0_verdict_equals=duplicate), not numbered: a link survives a new filter.
    named_filter_urls = True
    column_default_sort = ("id", True)

    def render(self, template, **kwargs):
        entry = kwargs.get("model")
        if template == self.details_template and entry is not None:
            kwargs.update(fields=webhook_fields(entry), checked_url=entry.checked_url)
        return super().render(template, **kwargs)
