"""The Spending page: what answers cost against each cap (every number's, each number's own, each
sender's day), which caps are reached, and the operator's overrides."""
from __future__ import annotations

from flask import flash, redirect, request
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm

from chatbot.admin.caps import caps_reached, reached_badge, reached_for_number, reached_over_all
from chatbot.admin.panel import LoginRequired, services
from chatbot.clock import day_start, month_start
from chatbot.models import Message, WhatsAppNumber, utcnow
from chatbot.reports import spend_since
from chatbot.roles import Role
from chatbot.stages.budget import MONTHLY_SETTING, OVERRIDES_TTL, SENDER_DAILY_SETTING, Cap
from config import amount_problem


def number_caps(now, zone: str) -> list[dict]:
    """Each number with a monthly budget of its own: what it spent this month, and when the budget was reached."""
    default_address = services().config.twilio_whatsapp_number
    rows = []
    for number in (WhatsAppNumber.select().where(WhatsAppNumber.monthly_budget.is_null(False))
                   .order_by(WhatsAppNumber.label)):
        key = "" if number.address == default_address else number.address
        rows.append({"number": number, "spent": spend_since(month_start(now, zone), key),
                     "reached": reached_badge(reached_for_number(key))})
    return rows


class SpendingView(LoginRequired, BaseView):
    """What answers cost against each spending cap, and the operator's overrides of the caps."""

    roles_needed = {"set_view": Role.ADMIN}
    CAPS = {SENDER_DAILY_SETTING: "Daily budget per sender", MONTHLY_SETTING: "Monthly budget"}

    @expose("/")
    def index(self):
        budgets, now, zone = services().budgets, utcnow(), services().config.admin_timezone
        costliest = Message.top_spenders(day_start(now, zone), 1)
        return self.render("chatbot_admin/spending.html", caps=budgets.caps(fresh=True), zone=zone,
                           environment=budgets.environment, month=spend_since(month_start(now, zone)),
                           costliest_today=costliest[0] if costliest else None,
                           monthly_reached=reached_badge(reached_over_all()), number_caps=number_caps(now, zone),
                           cut_off=[shown for shown in caps_reached() if shown.reached.cap is Cap.SENDER_DAILY],
                           sender_daily_setting=SENDER_DAILY_SETTING, monthly_setting=MONTHLY_SETTING)

    @expose("/set/", methods=("POST",))
    def set_view(self):
        key, amount = request.form.get("key", ""), (request.form.get("value") or "").strip()
        label = self.CAPS.get(key)
        if not SecureForm(request.form).validate() or label is None:
            flash("The request expired; please try again.", "error")
        elif "clear" in request.form:
            services().budgets.override(key, None)
            flash(f"{label}: override cleared, the environment's setting applies.", "success")
        elif amount_problem(amount):
            flash(f"{label} {amount_problem(amount)}.", "error")
        else:
            services().budgets.override(key, float(amount))
            flash(f"{label} set to ${float(amount):g}; workers apply it within {OVERRIDES_TTL:g} seconds.",
                  "success")
        return redirect(self.get_url(".index"))
