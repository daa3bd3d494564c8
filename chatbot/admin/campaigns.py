"""The Campaigns page: template campaigns listed with their figures and a chart, one campaign's page,
and the forms that create one (a CSV upload or recent days) and send, schedule, pause, resume or
cancel it. Everyone may look; admins and owners act. The rules are chatbot/campaigns/'s, the ones
`flask campaigns` applies too."""
from __future__ import annotations

import json

from flask import flash, make_response, redirect, request
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm
from werkzeug.exceptions import RequestEntityTooLarge

from chatbot.admin.audit_log import record_here
from chatbot.admin.panel import DEFAULT_NUMBER_CHOICE, LoginRequired, number_labels, services, signed_in_admin
from chatbot.campaigns import control, drafting, results, template
from chatbot.campaigns.audience import AudienceError, decode, from_csv, recent_writers
from chatbot.models import Campaign, CampaignResults, CampaignStatus, utcnow
from chatbot.roles import Role
from chatbot.sanitizer import whole_number
from chatbot.web.security import DASHBOARD_CSP

EXPIRED = "The request expired; please try again."
# An audience file's largest size: ten thousand lines of a number and a few columns fit many times over.
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
# The list shows this many campaigns, newest first, and charts them.
LISTED = 50
CHARTED = 12
# Each recipient once in the chart, by how far it got (the colours are campaigns.js's).
CHART_PARTS = ("read", "delivered", "sent", "failed", "queued")


def blank_form() -> dict:
    return {"name": "", "content_sid": "", "text": "", "variables": "", "number": DEFAULT_NUMBER_CHOICE,
            "audience": "file", "days": "30"}


def typed_form(form) -> dict:
    return {name: form.get(name, default) for name, default in blank_form().items()}


def chart_of(campaigns: list[Campaign], figures: dict[int, CampaignResults]) -> dict:
    """The chart's data: per campaign (oldest first), its recipients by how far they got."""
    shown = list(reversed(campaigns[:CHARTED]))
    parts = {name: [] for name in CHART_PARTS}
    for campaign in shown:
        figure = figures[campaign.id]
        parts["read"].append(figure.read)
        parts["delivered"].append(figure.delivered - figure.read)
        parts["sent"].append(figure.sent - figure.delivered - figure.undelivered)
        parts["failed"].append(figure.failed)
        parts["queued"].append(figure.queued)
    return {"labels": [f"{campaign.id} {campaign.name}"[:40] for campaign in shown], "parts": parts}


class CampaignsView(LoginRequired, BaseView):
    """Template campaigns: listed, created, looked into, and sent, paused, resumed or cancelled."""

    role_needed = Role.VIEWER
    role_to_change = Role.ADMIN

    @expose("/")
    def index(self):
        return self._list(blank_form())

    @expose("/<row_id:campaign_id>/")
    def campaign_view(self, campaign_id):
        campaign = Campaign.get_or_none(Campaign.id == campaign_id)
        if campaign is None:
            flash("That campaign is gone.", "error")
            return redirect(self.get_url(".index"))
        config = services().config
        assistant = services().numbers.for_key(campaign.number)
        return self._serve(self.render(
            "chatbot_admin/campaign.html", campaign=campaign, figures=CampaignResults.of(campaign.id),
            figure_names=results.FIGURES, number_label=f"{assistant.label} ({assistant.address})",
            variables=template.describe(campaign.variables, ()), failures=results.failures(campaign.id),
            month=results.month_count(campaign.number, config.admin_timezone),
            left_out=drafting.summary(campaign.skipped_counts), zone=config.admin_timezone,
            statuses=CampaignStatus))

    @expose("/create/", methods=("POST",))
    def create_view(self):
        request.max_content_length = MAX_UPLOAD_BYTES
        try:
            form, upload = request.form, request.files.get("file")
        except RequestEntityTooLarge:
            flash(f"Not created: the file is over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB; split it into several "
                  "campaigns.", "error")
            return redirect(self.get_url(".index"))
        if not SecureForm(form).validate():
            flash(EXPIRED, "error")
            return redirect(self.get_url(".index"))
        typed = typed_form(form)
        built = services()
        try:
            key = "" if typed["number"] == DEFAULT_NUMBER_CHOICE else typed["number"]
            if key not in number_labels():
                raise drafting.CampaignProblem("choose one of the numbers")
            assistant = built.numbers.for_key(key)
            variables = self._variables(typed["variables"])
            if typed["audience"] == "recent":
                days = whole_number(typed["days"])
                if days is None or not 1 <= days <= 3650:
                    raise drafting.CampaignProblem("recent days must be a whole number from 1 to 3650")
                audience = recent_writers(assistant.key, days, utcnow())
            elif upload is None or not upload.filename:
                raise drafting.CampaignProblem("choose the CSV file of the audience")
            else:
                audience = from_csv(decode(upload.stream.read()), upload.filename)
            draft = drafting.create(typed["name"], typed["content_sid"], typed["text"], variables, assistant,
                                    audience, built.access, built.config.campaign_max_recipients,
                                    record_actor())
        except (drafting.CampaignProblem, AudienceError) as problem:
            # Refused, nothing stored: not a 2xx, so the audit log records no change either.
            return self._list(typed, problem=str(problem), status=422)
        campaign = draft.campaign
        record_here("campaign_created", target=f"campaign {campaign.id}",
                    detail=f"{campaign.name}: {draft.recipients} recipients, {len(draft.skips)} skipped")
        left_out = f" Skipped {len(draft.skips)}: {drafting.summary(campaign.skipped_counts)}." if draft.skips else ""
        flash(f"Campaign {campaign.id} created as a draft: it will send to {draft.recipients}.{left_out} "
              "Nothing goes out until you send it.", "success")
        return redirect(self.get_url(".campaign_view", campaign_id=campaign.id))

    @expose("/<row_id:campaign_id>/send/", methods=("POST",))
    def send_view(self, campaign_id):
        at_text = request.form.get("at", "").strip()

        def send():
            zone = services().config.admin_timezone
            at = control.when_from(at_text, zone) if at_text else None
            return control.send(campaign_id, services().queue, at, zone)

        return self._act(campaign_id, "campaign_scheduled" if at_text else "campaign_sent", send)

    @expose("/<row_id:campaign_id>/pause/", methods=("POST",))
    def pause_view(self, campaign_id):
        return self._act(campaign_id, "campaign_paused", lambda: control.pause(campaign_id))

    @expose("/<row_id:campaign_id>/resume/", methods=("POST",))
    def resume_view(self, campaign_id):
        return self._act(campaign_id, "campaign_resumed",
                         lambda: control.resume(campaign_id, services().queue, services().config.admin_timezone))

    @expose("/<row_id:campaign_id>/cancel/", methods=("POST",))
    def cancel_view(self, campaign_id):
        return self._act(campaign_id, "campaign_cancelled", lambda: control.cancel(campaign_id))

    def _act(self, campaign_id: int, action: str, operation):
        """Carry out a campaign's button, audited; say the outcome on the campaign's page."""
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
        else:
            try:
                said = operation()
            except drafting.CampaignProblem as problem:
                flash(f"Not done: {problem}.", "error")
            else:
                record_here(action, target=f"campaign {campaign_id}", detail=request.form.get("at", ""))
                flash(said, "success")
        return redirect(self.get_url(".campaign_view", campaign_id=campaign_id))

    @staticmethod
    def _variables(typed: str) -> dict | None:
        if not typed.strip():
            return None
        try:
            parsed = json.loads(typed)
        except ValueError as error:
            raise drafting.CampaignProblem(f"the variables are not JSON ({error}); e.g. {template.EXAMPLE}") from error
        if not isinstance(parsed, dict):
            raise drafting.CampaignProblem(f"the variables must be a JSON object, e.g. {template.EXAMPLE}")
        return parsed

    def _list(self, filled: dict, problem: str | None = None, status: int = 200):
        campaigns = list(Campaign.select().order_by(Campaign.id.desc()).limit(LISTED))
        figures = results.results_of([campaign.id for campaign in campaigns])
        config = services().config
        labels = number_labels()
        page = self.render(
            "chatbot_admin/campaigns.html", campaigns=campaigns, figures=figures, figure_names=results.FIGURES,
            chart=chart_of(campaigns, figures), labels=labels, default_choice=DEFAULT_NUMBER_CHOICE,
            months={key: results.month_count(key, config.admin_timezone) for key in {c.number for c in campaigns}},
            filled=filled, problem=problem, max_recipients=config.campaign_max_recipients,
            rate=config.campaign_rate, example=template.EXAMPLE, zone=config.admin_timezone)
        return self._serve(page, status)

    @staticmethod
    def _serve(page: str, status: int = 200):
        response = make_response(page, status)
        # Our own script files only (the chart), none inline: the dashboard's policy.
        response.headers["Content-Security-Policy"] = DASHBOARD_CSP
        return response


def record_actor() -> str:
    """Who creates a campaign from the admin: the signed-in admin."""
    user = signed_in_admin()
    return user.username if user else ""
