"""The operator's admin panel (Flask-Admin on the Peewee models), behind a login."""
from __future__ import annotations

import json
import logging
import math
import uuid

from flask import abort, current_app, flash, g, redirect, request, session, url_for
from flask_admin import Admin, AdminIndexView, BaseView, expose
from flask_admin.actions import action
from flask_admin.contrib.peewee import ModelView
from flask_admin.contrib.peewee.filters import FilterEqual
from flask_admin.form import SecureForm
from flask_admin.model.template import TemplateLinkRowAction
from flask_admin.theme import Bootstrap4Theme
from markupsafe import Markup
from peewee import SQL, PeeweeException, fn
from redis.exceptions import RedisError
from wtforms import PasswordField, SelectField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, ValidationError

from chatbot import auth, playground, tasks
from chatbot.access import MODE_KEY, NOTICE_KEY, parse_numbers
from chatbot.ai import split_slugs
from chatbot.budgets import MONTHLY_SETTING, OVERRIDES_TTL, SENDER_DAILY_SETTING, day_start, month_start
from chatbot.crypto import SecretDecryptionError
from chatbot.dashboard import compute_stats
from chatbot.errors import AIError, SenderBusy
from chatbot.models import (
    AccessEntry,
    AdminUser,
    AIConfiguration,
    Conversation,
    Message,
    OptOut,
    ReplyPart,
    Setting,
    Status,
    WebhookLog,
    WhatsAppNumber,
    utcnow,
)
from chatbot.redact import mask_phone, mask_phones_in
from chatbot.status_callbacks import delivery_fixes
from config import ACCESS_MODES, amount_problem, whatsapp_address

log = logging.getLogger(__name__)

REVEAL_PHONES = "reveal_phones"


def services():
    return current_app.extensions["chatbot"]


SESSIONS_DOWN = ("Logging in is unavailable: Redis, which keeps the admin sessions, cannot be reached. "
                 "Try again once it is back.")


def admin_sessions() -> auth.AdminSessions:
    return auth.AdminSessions(services().redis)


def signed_in_admin() -> AdminUser | None:
    """Return this request's logged-in admin, looked up once; None (fail closed) when Redis is down."""
    if "admin_user" not in g:
        g.sessions_down = False
        try:
            g.admin_user = auth.current_admin(admin_sessions())
        except RedisError as error:
            log.error("admin sessions unavailable: %s", error)
            g.admin_user, g.sessions_down = None, True
    return g.admin_user


class LoginRequired:
    """Every admin page needs a logged-in operator; others are sent to the login page."""

    def is_accessible(self) -> bool:
        return signed_in_admin() is not None

    def inaccessible_callback(self, name, **kwargs):
        return redirect(url_for("admin.login_view", next=request.full_path.rstrip("?")))


class PanelIndexView(LoginRequired, AdminIndexView):
    """The dashboard, plus the login and logout pages (the only pages open without a session)."""

    def _handle_view(self, name, **kwargs):
        if name in ("login_view", "logout_view"):
            return None
        return super()._handle_view(name, **kwargs)

    @expose("/")
    def index(self):
        # ?number=<conversation key> shows one number's figures ("" is the default number's); none, all.
        number = request.args.get("number")
        return self.render("chatbot_admin/dashboard.html", stats=compute_stats(number=number),
                           numbers=number_labels(), chosen=number)

    @expose("/login/", methods=("GET", "POST"))
    def login_view(self):
        form = auth.LoginForm(request.form)
        error, status = None, 200
        if request.method == "POST" and form.validate():
            try:
                error, status = self._try_login(form)
            except RedisError as failure:
                log.error("admin login unavailable: %s", failure)
                error, status = SESSIONS_DOWN, 503
            if error is None:
                return redirect(auth.safe_next(request.args.get("next"), url_for("admin.index")))
        elif request.method == "POST":
            error, status = "The form expired or was incomplete; please try again.", 400
        elif signed_in_admin() is None and g.sessions_down:
            error, status = SESSIONS_DOWN, 503
        return self.render("chatbot_admin/login.html", form=form, error=error), status

    @staticmethod
    def _try_login(form) -> tuple[str | None, int]:
        """Check the credentials under the throttle; start a session and return (None, 302) on success."""
        throttle = auth.LoginThrottle(services().redis)
        address = request.remote_addr or "unknown"
        wait = throttle.claim(form.username.data, address)
        if wait:
            return f"Too many failed attempts. Try again in {math.ceil(wait / 60)} minute(s).", 429
        user = auth.authenticate(form.username.data, form.password.data)
        if user is None:
            log.warning("admin login failed addr=%s", address)
            return "Wrong username or password.", 401
        throttle.forgive(form.username.data, address)
        auth.log_in(user, admin_sessions())
        return None, 302

    @expose("/logout/", methods=("POST",))
    def logout_view(self):
        form = SecureForm(request.form)
        if form.validate():
            try:
                auth.log_out(admin_sessions())
            except RedisError as error:
                # The cookie is cleared already; the server-side session ends at its idle timeout.
                log.error("admin logout could not end the session in Redis: %s", error)
        return redirect(url_for("admin.login_view"))


class PanelModelView(LoginRequired, ModelView):
    form_base_class = SecureForm
    page_size = 50
    can_set_page_size = True
    search_hint = "Search"

    def search_placeholder(self) -> str:
        return self.search_hint


def _phone(view, context, model, name):
    phone = getattr(model, name)
    return phone if session.get(REVEAL_PHONES) else mask_phone(phone)


def masked(text) -> str:
    """`text` with every phone number in it masked, unless this operator chose to reveal numbers:
    stored errors, raw request bodies and metadata quote numbers too."""
    text = "" if text is None else str(text)
    return text if session.get(REVEAL_PHONES) else mask_phones_in(text)


def _masked_field(view, context, model, name):
    value = getattr(model, name)
    return masked(json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value)


def _phone_with_delivery_flag(view, context, model, name):
    """The phone, marked when the latest reply to it failed for good; the fix is in the tooltip."""
    phone = _phone(view, context, model, name)
    fix = context.get("delivery_fixes", {}).get(model.id)
    if not fix:
        return phone
    return Markup('{} <span class="badge badge-danger delivery-flag" title="{}">not delivered</span>').format(
        phone, fix)


def _when(view, context, model, name):
    value = getattr(model, name)
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


class ModelRule:
    """A form field validated by its model's own rule for it (`field_problem`), with the same message."""

    def __init__(self, model):
        self.model = model

    def __call__(self, form, field):
        problem = self.model.field_problem(field.name, field.data)
        if problem:
            raise ValidationError(problem)


# How filter URLs name the default number, whose conversations store "" as their number.
DEFAULT_NUMBER_CHOICE = "default"


def number_labels() -> dict[str, str]:
    """Return each number's label by its conversation key, the default number ("") first."""
    default_address = services().config.twilio_whatsapp_number
    labels = {"": "default"}
    for number in WhatsAppNumber.select().order_by(WhatsAppNumber.label, WhatsAppNumber.address):
        if number.address == default_address:
            labels[""] = f"{number.label} (default)"
        else:
            labels[number.address] = number.label
    return labels


class NumberChoices:
    """The number filter's (value, label) pairs, read again each time a page lists them."""

    def __iter__(self):
        return iter([(key or DEFAULT_NUMBER_CHOICE, label) for key, label in number_labels().items()])


class NumberFilter(FilterEqual):
    """Conversations with one of the numbers, chosen by its label."""

    def __init__(self):
        super().__init__(Conversation.number, "Number")

    def get_options(self, view):
        # Flask-Admin asks once, when the panel is built: a number added since must show up all the same.
        return NumberChoices()

    def clean(self, value):
        return "" if value == DEFAULT_NUMBER_CHOICE else value


class AIConfigurationView(PanelModelView):
    """AI provider settings; the API key is write-only and shown only masked."""

    list_template = "chatbot_admin/aiconfiguration_list.html"
    column_extra_row_actions = [TemplateLinkRowAction("chatbot_row_actions.test_connection", "Test connection")]
    column_list = ("name", "provider", "model_name", "max_tokens", "temperature", "is_active",
                   "api_key_encrypted", "updated_at")
    column_labels = {"api_key_encrypted": "API key", "model_name": "Model", "is_active": "Active"}
    column_formatters = {
        "api_key_encrypted": lambda view, context, model, name: view.masked_key(model),
        "updated_at": _when,
    }
    column_details_exclude_list = ("api_key_encrypted",)
    column_searchable_list = ("name", "model_name")
    search_hint = "Name or model"
    form_columns = ("name", "provider", "model_name", "fallback_models", "max_tokens", "temperature", "system_prompt",
                    "is_active")
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
    }
    form_extra_fields = {
        "api_key": PasswordField(
            "API key", validators=[Length(max=500)],
            description="Write-only. Leave blank to keep the stored key.",
        )
    }

    @staticmethod
    def masked_key(model: AIConfiguration) -> str:
        return model.masked_key(services().cipher)

    def on_model_change(self, form, model, is_created):
        if form.api_key.data:
            model.set_api_key(form.api_key.data.strip(), services().cipher)
        model.updated_at = utcnow()
        errors = model.validation_errors()
        if errors:
            raise ValidationError(" ".join(errors.values()))

    def after_model_change(self, form, model, is_created):
        if model.is_active:
            model.activate()
        # Read back: the form's api_key field has shadowed the model's api_key() on this instance.
        self.warn_of_unlisted_models(AIConfiguration.get_by_id(model.id))

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
        unlisted = [slug for slug in (ai_config.model_name, *split_slugs(ai_config.fallback_models))
                    if slug not in offered]
        if unlisted:
            flash(f"Saved, but OpenRouter does not list {', '.join(unlisted)}: check the spelling.", "warning")

    @action("activate", "Activate", "Make the selected configuration the only active one?")
    def action_activate(self, ids):
        if len(ids) != 1:
            flash("Select exactly one configuration to activate.", "error")
            return
        ai_config = AIConfiguration.get_by_id(int(ids[0]))
        ai_config.activate()
        flash(f"{ai_config.name} is now the active AI configuration.", "success")

    @expose("/test/<int:config_id>/", methods=("POST",))
    def test_connection_view(self, config_id):
        form = SecureForm(request.form)
        ai_config = AIConfiguration.get_or_none(AIConfiguration.id == config_id)
        if not form.validate() or ai_config is None:
            flash("The request expired; please try again.", "error")
            return redirect(self.get_url(".index_view"))
        try:
            factory = services().ai_factory
            details = factory.adapter(factory.settings_for(ai_config), attempts=1).validate_credentials()
            label = details.get("label") or "key"
            flash(f"Connection OK for {ai_config.name}: {label} accepted by OpenRouter.", "success")
        except (AIError, SecretDecryptionError) as error:
            flash(f"Connection failed for {ai_config.name}: {error}", "error")
        return redirect(self.get_url(".index_view"))


class ConversationView(PanelModelView):
    """Conversations, searchable by phone; a conversation's page is its transcript."""

    list_template = "chatbot_admin/conversation_list.html"
    details_template = "chatbot_admin/conversation_details.html"
    can_create = False
    can_edit = False
    can_delete = True
    can_view_details = True
    column_list = ("user_phone", "profile_name", "number", "is_active", "paused_by", "waiting", "created_at",
                   "updated_at")
    column_labels = {"user_phone": "Phone", "profile_name": "Name", "number": "Number", "is_active": "Active",
                     "paused_by": "Taken over by", "waiting": "Waiting", "updated_at": "Last activity"}
    column_formatters = {"user_phone": _phone_with_delivery_flag, "created_at": _when, "updated_at": _when,
                         "waiting": lambda view, context, model, name: model.waiting or "",
                         # A number removed since is shown by its address.
                         "number": lambda view, context, model, name: context.get("number_labels", {}).get(
                             model.number, model.number)}
    column_searchable_list = ("user_phone", "profile_name")
    search_hint = "Phone number or name"
    column_filters = ("is_active", NumberFilter(), "created_at", "updated_at")
    # Filters named in the URL (flt0_number_equals=default), not numbered: a link survives a new filter.
    named_filter_urls = True

    def get_query(self):
        """Conversations an operator has taken over first, then those with messages waiting for a
        person, then the most recently active (a column the operator sorts by replaces this order)."""
        waiting = (
            Message.select(fn.COUNT(Message.id))
            .where(Message.conversation == Conversation.id, Message.status == Status.WAITING.value)
        )
        return (
            Conversation.select(Conversation, waiting.alias("waiting"))
            .order_by(Conversation.paused_at.is_null(), SQL("waiting").desc(), Conversation.updated_at.desc())
        )

    def render(self, template, **kwargs):
        if template == self.details_template and kwargs.get("model") is not None:
            kwargs["transcript"] = (
                Message.select().where(Message.conversation == kwargs["model"]).order_by(Message.id)
            )
            kwargs["phone"] = _phone(self, None, kwargs["model"], "user_phone")
            kwargs["parts"] = ReplyPart.of_conversation(kwargs["model"])
            kwargs["delivery_fix"] = delivery_fixes([kwargs["model"].id]).get(kwargs["model"].id)
        if template == self.list_template and kwargs.get("data"):
            kwargs["delivery_fixes"] = delivery_fixes([conversation.id for conversation in kwargs["data"]])
            kwargs["number_labels"] = number_labels()
        return super().render(template, **kwargs)

    @expose("/reveal/", methods=("POST",))
    def reveal_view(self):
        if SecureForm(request.form).validate():
            session[REVEAL_PHONES] = not session.get(REVEAL_PHONES)
        return redirect(auth.safe_next(request.form.get("next"), self.get_url(".index_view")))

    @expose("/takeover/<conversation_id>/", methods=("POST",))
    def take_over_view(self, conversation_id):
        if SecureForm(request.form).validate():
            if tasks.take_over(conversation_id, signed_in_admin().username):
                flash("You have taken this conversation over: the bot answers nothing until you hand it back.",
                      "success")
            else:
                flash("Not taken over: the conversation has ended or someone already took it over.", "error")
        return self._back_to(conversation_id)

    @expose("/handback/<conversation_id>/", methods=("POST",))
    def hand_back_view(self, conversation_id):
        if SecureForm(request.form).validate() and tasks.hand_back(Conversation.id == conversation_id):
            flash("Handed back: the bot answers the next message.", "success")
        return self._back_to(conversation_id)

    @expose("/reply/<conversation_id>/", methods=("POST",))
    def reply_view(self, conversation_id):
        text = (request.form.get("reply") or "").strip()
        conversation = Conversation.get_or_none(Conversation.id == conversation_id)
        if not SecureForm(request.form).validate() or conversation is None:
            flash("The request expired; please try again.", "error")
        elif conversation.paused_at is None:
            flash("Take the conversation over before replying: the bot is answering it.", "error")
        elif not text:
            flash("Write a reply first.", "error")
        else:
            reply = tasks.store_operator_reply(conversation, text, signed_in_admin().username)
            try:
                tasks.enqueue_operator_reply(services().queue, reply.id)
                flash("Reply queued for sending.", "success")
            except RedisError as error:
                log.error("message_id=%s operator reply not queued: %s", reply.id, error)
                flash("The reply is stored but could not be queued (Redis is unreachable); the sweeper "
                      "sends it once Redis is back.", "error")
        return self._back_to(conversation_id)

    def _back_to(self, conversation_id):
        return redirect(self.get_url(".details_view", id=conversation_id))

    def _handle_view(self, name, **kwargs):
        refused = super()._handle_view(name, **kwargs)
        if refused is None and kwargs.get("conversation_id") is not None:
            # A malformed id in a takeover URL is a 404, not a database error.
            try:
                uuid.UUID(kwargs["conversation_id"])
            except ValueError:
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

    @action("delete", "Delete", "Delete the selected conversations, their messages and webhook log entries?")
    def action_delete(self, ids):
        if self._delete_with_history(ids):
            flash(f"Deleted {len(ids)} conversation(s) with their messages and webhook log entries.", "success")

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


def _whatsapp_address(text):
    """Take +E.164 for whatsapp:+E.164, as the CLI does."""
    return whatsapp_address(text or "")


class NumbersView(PanelModelView):
    """The WhatsApp numbers the assistant answers on, and how it answers on each."""

    list_template = "chatbot_admin/whatsappnumber_list.html"
    column_list = ("address", "label", "ai_configuration", "greeting", "template_sid", "monthly_budget", "is_active",
                   "updated_at")
    column_labels = {"ai_configuration": "AI configuration", "template_sid": "Template",
                     "monthly_budget": "Monthly budget", "is_active": "Active", "updated_at": "Last changed"}
    column_formatters = {
        "ai_configuration": lambda view, context, model, name: (
            model.ai_configuration.name if model.ai_configuration else "active configuration"),
        "greeting": lambda view, context, model, name: (
            model.greeting if len(model.greeting) <= 60 else model.greeting[:59] + "…"),
        "monthly_budget": lambda view, context, model, name: (
            f"${model.monthly_budget:g}" if model.monthly_budget is not None else ""),
        "updated_at": _when,
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
        "is_active": {"label": "Active", "description": "Off: its messages are recorded, never answered."},
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


class MessageView(PanelModelView):
    """Every stored message; read-only."""

    can_create = False
    can_edit = False
    can_delete = False
    can_view_details = True
    column_list = ("created_at", "conversation", "role", "content", "status", "model", "total_tokens",
                   "latency_ms")
    column_labels = {"total_tokens": "Tokens", "latency_ms": "Latency (ms)", "conversation": "Phone"}
    column_formatters = {
        "created_at": _when,
        "conversation": lambda view, context, model, name: _phone(view, context, model.conversation, "user_phone"),
        "content": lambda view, context, model, name: (
            model.content if len(model.content) <= 120 else model.content[:117] + "…"
        ),
        "latency_ms": lambda view, context, model, name: f"{model.latency_ms:.0f}" if model.latency_ms else "",
        "error": _masked_field,
        "metadata": _masked_field,
    }
    column_details_exclude_list = ("twilio_sid",)
    column_searchable_list = ("content",)
    search_hint = "Message text"
    column_filters = ("role", "status", "created_at", "model")
    column_default_sort = ("id", True)


class OptOutView(PanelModelView):
    """Senders who wrote STOP; deleting one lets the bot answer them again (as their START would)."""

    can_create = False
    can_edit = False
    can_delete = True
    column_list = ("user_phone", "created_at")
    column_labels = {"user_phone": "Phone", "created_at": "Opted out at"}
    column_formatters = {"user_phone": _phone, "created_at": _when}
    column_default_sort = ("created_at", True)


class WebhookLogView(PanelModelView):
    """The webhook audit log (secrets redacted when stored); read-only."""

    details_template = "chatbot_admin/webhooklog_details.html"
    can_create = False
    can_edit = False
    can_delete = False
    can_view_details = True
    column_list = ("received_at", "method", "path", "response_status", "signature_valid", "processing_ms",
                   "message_sid", "error")
    column_labels = {"response_status": "Status", "signature_valid": "Signature valid",
                     "processing_ms": "Processing (ms)"}
    column_formatters = {
        "received_at": _when,
        "processing_ms": lambda view, context, model, name: f"{model.processing_ms:.1f}",
        "error": _masked_field,
        "body": _masked_field,
        "headers": _masked_field,
    }
    column_filters = ("response_status", "signature_valid", "received_at")
    # Filters named in the URL (flt0_status_equals=403), not numbered: a link survives a new filter.
    named_filter_urls = True
    column_default_sort = ("id", True)

    def render(self, template, **kwargs):
        if template == self.details_template and kwargs.get("model") is not None:
            kwargs["headers_text"] = json.dumps(kwargs["model"].headers, indent=2, ensure_ascii=False)
        return super().render(template, **kwargs)


class PlaygroundView(LoginRequired, BaseView):
    """Chat with the bot as a test user, with any stored AI configuration; nothing goes to WhatsApp."""

    @expose("/")
    def index(self):
        username = signed_in_admin().username
        conversation = playground.current_conversation(username)
        transcript = (
            Message.select().where(Message.conversation == conversation).order_by(Message.id)
            if conversation is not None else []
        )
        active = AIConfiguration.active()
        return self.render(
            "chatbot_admin/playground.html",
            configurations=AIConfiguration.select().order_by(AIConfiguration.name),
            chosen=request.args.get("configuration", str(active.id) if active else ""),
            environment_model=services().config.ai_model,
            transcript=transcript,
        )

    @expose("/send/", methods=("POST",))
    def send_view(self):
        choice = request.form.get("configuration", "")
        text = (request.form.get("text") or "").strip()
        configuration = AIConfiguration.get_or_none(AIConfiguration.id == int(choice)) if choice.isdigit() else None
        if not SecureForm(request.form).validate():
            flash("The request expired; please try again.", "error")
        elif choice and configuration is None:
            flash("That AI configuration no longer exists.", "error")
        elif not text:
            flash("Write a message first.", "error")
        else:
            # An operator tool, not the webhook's path: the answer is awaited here, within AI_DEADLINE.
            try:
                playground.ask(services(), signed_in_admin().username, text, configuration)
            except SenderBusy:
                flash("Your playground is still answering another message (another tab?); this one is "
                      "answered with the next.", "error")
        return redirect(self.get_url(".index", configuration=choice))

    @expose("/reset/", methods=("POST",))
    def reset_view(self):
        if SecureForm(request.form).validate():
            playground.reset(signed_in_admin().username, services().context)
            flash("Playground reset: the next message starts a new conversation.", "success")
        return redirect(self.get_url(".index", configuration=request.form.get("configuration", "")))


class AccessView(LoginRequired, BaseView):
    """Who may talk to the bot: the mode, the notice, and the admin's lists (ACCESS_LIST shown, not editable)."""

    @expose("/")
    def index(self):
        policy = services().access
        return self.render(
            "chatbot_admin/access.html",
            rules=policy.rules(),
            modes=ACCESS_MODES,
            environment_mode=policy.mode,
            environment_numbers=sorted(policy.listed),
            lists={kind: list(AccessEntry.of_kind(kind)) for kind in ("allow", "block")},
            phone=lambda number: number if session.get(REVEAL_PHONES) else mask_phone(number),
            revealed=session.get(REVEAL_PHONES, False),
        )

    @expose("/mode/", methods=("POST",))
    def mode_view(self):
        mode = request.form.get("mode", "")
        if not SecureForm(request.form).validate():
            flash("The request expired; please try again.", "error")
        elif mode == "environment":
            Setting.forget(MODE_KEY)
            flash(f"Access follows ACCESS_MODE again ({services().access.mode}).", "success")
        elif mode in ACCESS_MODES:
            Setting.put(MODE_KEY, mode)
            flash(f"Access is now {mode}, from the next message on.", "success")
        else:
            flash(f"Choose one of {', '.join(ACCESS_MODES)}.", "error")
        return redirect(self.get_url(".index"))

    @expose("/notice/", methods=("POST",))
    def notice_view(self):
        notice = (request.form.get("notice") or "").strip()
        if not SecureForm(request.form).validate():
            flash("The request expired; please try again.", "error")
        elif request.form.get("action") == "environment":
            Setting.forget(NOTICE_KEY)
            flash("The notice is ACCESS_NOTICE's again.", "success")
        else:
            Setting.put(NOTICE_KEY, notice)
            flash("Notice saved." if notice else "No notice: a sender who is kept out gets no answer at all.",
                  "success")
        return redirect(self.get_url(".index"))

    @expose("/add/", methods=("POST",))
    def add_numbers_view(self):
        kind = request.form.get("kind", "")
        if not SecureForm(request.form).validate():
            flash("The request expired; please try again.", "error")
        elif kind not in ("allow", "block"):
            flash("Choose the allowlist or the blocklist.", "error")
        else:
            numbers, invalid = parse_numbers(request.form.get("numbers", ""))
            added = AccessEntry.add_many(numbers, kind)
            listed = len(numbers) - len(added)
            flash(f"Added {len(added)} number(s) to the {kind}list"
                  + (f"; {listed} already on it." if listed else "."), "success")
            if invalid:
                flash(f"Skipped {len(invalid)} that are not phone numbers in E.164 form (+ and 7–15 digits, e.g. "
                      f"+15551234567): {masked(', '.join(invalid))}", "error")
        return redirect(self.get_url(".index"))

    @expose("/delete/<int:entry_id>/", methods=("POST",))
    def delete_view(self, entry_id):
        if SecureForm(request.form).validate():
            AccessEntry.delete().where(AccessEntry.id == entry_id).execute()
            flash("Number removed.", "success")
        return redirect(self.get_url(".index"))


class SpendingView(LoginRequired, BaseView):
    """What answers cost against each spending cap, and the operator's overrides of the caps."""

    CAPS = {SENDER_DAILY_SETTING: "Daily budget per sender", MONTHLY_SETTING: "Monthly budget"}

    @expose("/")
    def index(self):
        budgets, now = services().budgets, utcnow()
        costliest = Message.top_spenders(day_start(now), 1)
        return self.render("chatbot_admin/spending.html", caps=budgets.caps(fresh=True),
                           environment=budgets.environment, month=Message.spend(month_start(now)),
                           costliest_today=costliest[0] if costliest else None,
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


def build_admin(app) -> Admin:
    """Attach the admin panel at /admin (built per app: a module-level Admin breaks a second app)."""
    admin = Admin(
        app,
        name="WhatsApp AI Assistant",
        url="/admin",
        index_view=PanelIndexView(name="Dashboard", url="/admin", endpoint="admin"),
        theme=Bootstrap4Theme(base_template="chatbot_admin/base.html", fluid=True),
    )
    app.jinja_env.globals["admin_secure_form"] = SecureForm
    app.jinja_env.filters["masked"] = masked
    app.context_processor(
        lambda: {"current_admin": signed_in_admin() if request.path.startswith("/admin") else None})
    admin.add_view(AIConfigurationView(AIConfiguration, name="AI configurations", endpoint="aiconfiguration"))
    admin.add_view(ConversationView(Conversation, name="Conversations", endpoint="conversation"))
    admin.add_view(NumbersView(WhatsAppNumber, name="Numbers", endpoint="whatsappnumber"))
    admin.add_view(MessageView(Message, name="Messages", endpoint="message"))
    admin.add_view(PlaygroundView(name="Playground", endpoint="playground", url="/admin/playground"))
    admin.add_view(OptOutView(OptOut, name="Opted out", endpoint="optout"))
    admin.add_view(SpendingView(name="Spending", endpoint="spending", url="/admin/spending"))
    admin.add_view(AccessView(name="Access", endpoint="access", url="/admin/access"))
    admin.add_view(WebhookLogView(WebhookLog, name="Webhook log", endpoint="webhooklog"))
    return admin

