"""The AI configurations page: provider settings, activation and the connection test."""
from __future__ import annotations

from flask import flash, redirect, request
from flask_admin import expose
from flask_admin.actions import action
from flask_admin.form import SecureForm
from flask_admin.model.template import TemplateLinkRowAction
from wtforms import PasswordField, SelectField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, ValidationError

from chatbot.admin.panel import ModelRule, PanelModelView, services
from chatbot.checks import openrouter_checks
from chatbot.crypto import SecretDecryptionError
from chatbot.errors import AIError
from chatbot.models import AIConfiguration, utcnow
from chatbot.roles import Role
from chatbot.sanitizer import whole_number
from config import comma_list


class WriteOnlyField(PasswordField):
    """A secret typed in and never read back: the form neither shows the stored value nor takes the
    model's attribute of the same name as its data (AIConfiguration.api_key is a method), and saving
    leaves the model to the view, which stores the key only when one was typed."""

    def process_data(self, value):
        self.data = ""

    def populate_obj(self, obj, name):
        """Leave `obj` alone: on_model_change encrypts the key into its own column."""


class AIConfigurationView(PanelModelView):
    """AI provider settings; the API key is write-only and shown only masked."""

    role_needed = Role.ADMIN

    list_template = "chatbot_admin/aiconfiguration_list.html"
    column_extra_row_actions = [TemplateLinkRowAction("chatbot_row_actions.test_connection", "Test connection")]
    column_list = ("name", "provider", "model_name", "max_tokens", "temperature", "is_active",
                   "api_key_encrypted", "updated_at")
    column_hidden_on_phone = ("provider", "max_tokens", "temperature", "updated_at")
    column_labels = {"api_key_encrypted": "API key", "model_name": "Model", "is_active": "Active"}
    column_formatters = {
        "api_key_encrypted": lambda view, context, model, name: view.masked_key(model),
    }
    column_details_exclude_list = ("api_key_encrypted",)
    column_searchable_list = ("name", "model_name")
    search_hint = "Name or model"
    form_columns = ("name", "provider", "model_name", "fallback_models", "max_tokens", "temperature", "system_prompt",
                    "cite_sources", "offer_request_human", "offer_follow_ups", "is_active")
    form_overrides = {"provider": SelectField}
    form_args = {
        "provider": {"choices": [SelectChoice("openrouter", "OpenRouter")]},
        "model_name": {
            "label": "Model",
            "description": "OpenRouter slug, e.g. openai/gpt-4o-mini or anthropic/claude-3.5-sonnet",
            "validators": [InputRequired(), ModelRule(AIConfiguration)],
        },
        "fallback_models": {
            "label": "Fallback models",
            "description": "Optional OpenRouter slugs, comma-separated, tried in order when the model fails",
            "validators": [ModelRule(AIConfiguration)],
        },
        "max_tokens": {"validators": [InputRequired(), ModelRule(AIConfiguration)]},
        "temperature": {"validators": [InputRequired(), ModelRule(AIConfiguration)]},
        "is_active": {"label": "Active", "description": "Activating this one deactivates the others."},
        "cite_sources": {"label": "Cite sources",
                         "description": "Name the knowledge sources under each answer given them "
                                        "(\"Source: Returns policy\")."},
        "offer_request_human": {"label": "Offer request_human: the model may call a person",
                                "description": "The model may hand the conversation to a person from the team "
                                               "when the customer asks for one or it cannot help (listed under "
                                               "Waiting)."},
        "offer_follow_ups": {"label": "Offer schedule_follow_up",
                             "description": "The model may promise a message later (a reminder the customer asked "
                                            "for); it is sent when due and listed on the conversation's page."},
    }
    form_extra_fields = {
        "api_key": WriteOnlyField(
            "API key", validators=[Length(max=500)],
            description="Write-only. Leave blank to keep the stored key.",
        )
    }
    # A system prompt runs to paragraphs: show a dozen lines of it at once.
    form_widget_args = {"system_prompt": {"rows": 12}}

    @staticmethod
    def masked_key(model: AIConfiguration) -> str:
        return model.masked_key(services().cipher)

    def on_model_change(self, form, model, is_created):
        typed = form.api_key.data.strip()
        if typed:  # blank (or spaces) keeps the stored key
            model.set_api_key(typed, services().cipher)
        model.updated_at = utcnow()
        errors = model.validation_errors()
        if errors:
            raise ValidationError(" ".join(errors.values()))

    def after_model_change(self, form, model, is_created):
        if model.is_active:
            model.activate()
        self.warn_of_unlisted_models(model)

    @staticmethod
    def warn_of_unlisted_models(ai_config: AIConfiguration) -> None:
        """Warn (the configuration is saved all the same) of a model OpenRouter does not list: a typo
        would otherwise surface only when that model is needed."""
        factory = services().ai_factory
        try:
            # Short: the admin waits on this page for the answer.
            adapter = factory.adapter(factory.settings_for(ai_config), attempts=1, timeout=(5.0, 10.0))
            offered = adapter.list_models()
        except AIError as error:
            flash(f"Saved, but the models could not be checked with OpenRouter: {error}", "warning")
            return
        unlisted = [slug for slug in (ai_config.model_name, *comma_list(ai_config.fallback_models))
                    if slug not in offered]
        if unlisted:
            flash(f"Saved, but OpenRouter does not list {', '.join(unlisted)}: check the spelling.", "warning")

    @action("activate", "Activate", "Make the selected configuration the only active one?")
    def action_activate(self, ids):
        chosen_id = whole_number(ids[0]) if len(ids) == 1 else None
        ai_config = AIConfiguration.get_or_none(AIConfiguration.id == chosen_id) if chosen_id else None
        if ai_config is None:
            flash("Select exactly one configuration to activate.", "error")
            return
        ai_config.activate()
        flash(f"{ai_config.name} is now the active AI configuration.", "success")

    @expose("/test/<row_id:config_id>/", methods=("POST",))
    def test_connection_view(self, config_id):
        form = SecureForm(request.form)
        ai_config = AIConfiguration.get_or_none(AIConfiguration.id == config_id)
        if not form.validate() or ai_config is None:
            flash("The request expired; please try again.", "error")
            return redirect(self.get_url(".index_view"))
        factory = services().ai_factory
        try:
            settings = factory.settings_for(ai_config)
        except (AIError, SecretDecryptionError) as error:
            flash(f"Connection failed for {ai_config.name}: {error}; enter the API key again (Edit).", "error")
            return redirect(self.get_url(".index_view"))
        # The checks of `flask ai-config test`: the key, then the model slug against OpenRouter's list.
        checks = openrouter_checks(factory, settings=settings)
        found = "; ".join(f"{check.label}: {check.detail}" for check in checks)
        if any(check.failed for check in checks):
            flash(f"Connection failed for {ai_config.name}: {found}. Correct the API key or the model (Edit).",
                  "error")
        else:
            flash(f"Connection OK for {ai_config.name}: {found}.", "success")
        return redirect(self.get_url(".index_view"))
