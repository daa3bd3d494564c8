"""The WhatsApp numbers page: how the assistant answers on each number."""
from __future__ import annotations

from flask import flash
from markupsafe import Markup
from wtforms.validators import ValidationError

from chatbot.admin.caps import reached_badge, reached_for_number
from chatbot.admin.panel import ModelRule, PanelModelView, services
from chatbot.models import WhatsAppNumber, utcnow
from chatbot.numbers import SWITCHED_OFF
from chatbot.roles import Role
from config import whatsapp_address


def _whatsapp_address(text):
    """Take +E.164 for whatsapp:+E.164, as the CLI does."""
    return whatsapp_address(text or "")


def _budget_column(number: WhatsAppNumber):
    """The number's monthly budget, and when it was reached this month if it is."""
    if number.monthly_budget is None:
        return ""
    key = "" if number.address == services().config.twilio_whatsapp_number else number.address
    return Markup("${:g} {}").format(number.monthly_budget, reached_badge(reached_for_number(key)))


class NumbersView(PanelModelView):
    """The WhatsApp numbers the assistant answers on, and how it answers on each."""

    role_needed = Role.ADMIN

    list_template = "chatbot_admin/whatsappnumber_list.html"
    column_list = ("address", "label", "ai_configuration", "greeting", "template_sid", "monthly_budget", "is_active",
                   "updated_at")
    column_hidden_on_phone = ("greeting", "template_sid", "updated_at")
    column_labels = {"ai_configuration": "AI configuration", "template_sid": "Template",
                     "monthly_budget": "Monthly budget", "is_active": "Active", "updated_at": "Last changed"}
    column_formatters = {
        "ai_configuration": lambda view, context, model, name: (
            model.ai_configuration.name if model.ai_configuration else "active configuration"),
        "greeting": lambda view, context, model, name: (
            model.greeting if len(model.greeting) <= 60 else model.greeting[:59] + "…"),
        "monthly_budget": lambda view, context, model, name: _budget_column(model),
    }
    column_searchable_list = ("address", "label")
    search_hint = "Address or label"
    column_default_sort = "address"
    form_columns = ("address", "label", "ai_configuration", "greeting", "template_sid", "monthly_budget", "is_active")
    form_args = {
        "address": {
            "description": "The number people write to, e.g. whatsapp:+14155238886 (+14155238886 will do)",
            "filters": [_whatsapp_address],
            "validators": [ModelRule(WhatsAppNumber)],
        },
        "label": {"description": "How the panel names it", "validators": [ModelRule(WhatsAppNumber)]},
        "ai_configuration": {"label": "AI configuration", "get_label": "name",
                             "blank_text": "The active configuration"},
        "greeting": {"description": "Sent once, before a sender's first answer from this number (empty: none)",
                     "validators": [ModelRule(WhatsAppNumber)]},
        "template_sid": {
            "label": "Template",
            "description": "Content SID (HX…) of an approved template that carries replies past WhatsApp's "
                           "24-hour window (empty: such replies are kept for you as outside_window)",
            "filters": [lambda text: (text or "").strip()],
            "validators": [ModelRule(WhatsAppNumber)],
        },
        "monthly_budget": {
            "label": "Monthly budget (USD)",
            "description": "The most this number's answers may cost a month (empty: no cap of its own; "
                           "BUDGET_MONTHLY still holds over all numbers)",
            "validators": [ModelRule(WhatsAppNumber)],
        },
        "is_active": {"label": "Active", "description": SWITCHED_OFF},
    }

    def render(self, template, **kwargs):
        if template == self.list_template:
            kwargs["default_address"] = services().config.twilio_whatsapp_number
        return super().render(template, **kwargs)

    def on_model_change(self, form, model, is_created):
        taken = WhatsAppNumber.select().where(WhatsAppNumber.address == model.address)
        if model.id is not None:
            taken = taken.where(WhatsAppNumber.id != model.id)
        if taken.exists():
            raise ValidationError(f"{model.address} is one of the numbers already.")
        model.updated_at = utcnow()
        errors = model.validation_errors()
        if errors:
            raise ValidationError(" ".join(errors.values()))

    def after_model_change(self, form, model, is_created):
        # This process answers with the change at once; the others read the table again within seconds.
        services().numbers.forget()

    def after_model_delete(self, model):
        services().numbers.forget()
        if model.address == services().config.twilio_whatsapp_number:
            flash("That was the default number's settings: it answers with the defaults again.", "success")
