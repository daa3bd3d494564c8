"""The operator's admin panel (Flask-Admin on the Peewee models), behind a login."""
from __future__ import annotations

import json
import logging
import math
import uuid
from datetime import timedelta
from urllib.parse import parse_qsl

from flask import (
    abort,
    current_app,
    flash,
    g,
    get_template_attribute,
    make_response,
    redirect,
    request,
    session,
    url_for,
)
from flask_admin import Admin, AdminIndexView, BaseView, expose
from flask_admin.actions import action
from flask_admin.contrib.peewee import ModelView
from flask_admin.contrib.peewee.filters import FilterEqual, IntEqualFilter
from flask_admin.form import SecureForm
from flask_admin.model.template import TemplateLinkRowAction
from flask_admin.theme import Bootstrap4Theme
from markupsafe import Markup
from peewee import SQL, PeeweeException
from redis.exceptions import RedisError
from wtforms import PasswordField, SelectField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, ValidationError

from chatbot import auth, cli_checks, playground, tasks
from chatbot.access import MODE_KEY, NOTICE_KEY, parse_numbers
from chatbot.ai import split_slugs
from chatbot.budgets import MONTHLY_SETTING, OVERRIDES_TTL, SENDER_DAILY_SETTING, day_start, month_start
from chatbot.crypto import SecretDecryptionError
from chatbot.dashboard import DEFAULT_PERIOD, PERIODS, chart_data, compute_stats, links, queue_health
from chatbot.error_explanations import (
    NOT_ANSWERED,
    OUTSIDE_WINDOW_CODE,
    Explanation,
    explain_stored_error,
    twilio_error,
)
from chatbot.errors import AIError, SenderBusy
from chatbot.models import (
    DELIVERY_FAILURES,
    AccessEntry,
    AdminUser,
    AIConfiguration,
    Conversation,
    Message,
    OptOut,
    ReplyPart,
    Role,
    Setting,
    Status,
    WebhookLog,
    WhatsAppNumber,
    utcnow,
)
from chatbot.redact import mask_phone, mask_phones_in
from chatbot.security import DASHBOARD_CSP
from chatbot.status_callbacks import delivery_fixes
from chatbot.webhook import CHECKED_AGAINST
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
        period = request.args.get("period") if request.args.get("period") in PERIODS else DEFAULT_PERIOD
        stats = compute_stats(number=number, period=period, zone=services().config.admin_timezone)
        try:
            queue = queue_health(services().queue)
        except RedisError as failure:
            log.error("dashboard queue figures unavailable: %s", failure)
            queue = None
        figure_links = links(stats, number)
        page = self.render("chatbot_admin/dashboard.html", stats=stats, queue=queue, links=figure_links,
                           charts=chart_data(stats, figure_links), periods=PERIODS, period=period,
                           default_period=DEFAULT_PERIOD,
                           numbers=number_labels(), chosen=number)
        response = make_response(page)
        # This page runs only our own script files; Flask-Admin's list and form pages need inline ones.
        response.headers["Content-Security-Policy"] = DASHBOARD_CSP
        return response

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


def status_badge(status: str) -> Markup:
    """The status as its coloured badge: the one macro every page uses."""
    return get_template_attribute("chatbot_admin/badges.html", "status_badge")(status)


def _status_badge(view, context, model, name):
    return status_badge(getattr(model, name))


def shortened(text: str | None, limit: int = 80) -> str:
    """`text` on one line, phone numbers masked, cut to `limit` characters."""
    line = " ".join(masked(text).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def explanation_of(message: Message, failed_parts=()) -> Explanation | None:
    """Say in plain words what went wrong with `message` and the fix, or None when nothing is known."""
    if message.status == Status.OUTSIDE_WINDOW.value:
        return twilio_error(OUTSIDE_WINDOW_CODE)
    if failed_parts:
        return twilio_error(failed_parts[0].error_code)
    return explain_stored_error(message.error)


def failed_parts_of(message_ids) -> dict[int, list[ReplyPart]]:
    """Return the failed or undelivered parts of these messages by message id, in sending order."""
    parts: dict[int, list[ReplyPart]] = {}
    for part in (ReplyPart.select()
                 .where(ReplyPart.message.in_(list(message_ids)), ReplyPart.status.in_(DELIVERY_FAILURES))
                 .order_by(ReplyPart.message, ReplyPart.number)):
        parts.setdefault(part.message_id, []).append(part)
    return parts


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

    def __init__(self, column=Conversation.number):
        super().__init__(column, "Number")

    def get_options(self, view):
        # Flask-Admin asks once, when the panel is built: a number added since must show up all the same.
        return NumberChoices()

    def clean(self, value):
        return "" if value == DEFAULT_NUMBER_CHOICE else value


class MessageNumberFilter(NumberFilter):
    """Messages of conversations with one of the numbers (as the conversations' Number filter)."""

    def __init__(self):
        super().__init__(Message.conversation)

    def apply(self, query, value):
        return query.where(Message.on_number(value))


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
    # A system prompt runs to paragraphs: show a dozen lines of it at once.
    form_widget_args = {"system_prompt": {"rows": 12}}

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
        factory = services().ai_factory
        try:
            settings = factory.settings_for(ai_config)
        except (AIError, SecretDecryptionError) as error:
            flash(f"Connection failed for {ai_config.name}: {error}; enter the API key again (Edit).", "error")
            return redirect(self.get_url(".index_view"))
        # The checks of `flask ai-config test`: the key, then the model slug against OpenRouter's list.
        checks = cli_checks.openrouter_checks(factory, settings=settings)
        found = "; ".join(f"{check.label}: {check.detail}" for check in checks)
        if any(check.failed for check in checks):
            flash(f"Connection failed for {ai_config.name}: {found}. Correct the API key or the model (Edit).",
                  "error")
        else:
            flash(f"Connection OK for {ai_config.name}: {found}.", "success")
        return redirect(self.get_url(".index_view"))


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


def transcript_of(conversation: Conversation) -> dict:
    """Return the transcript's messages with, by message id, the questions each answer answers, its
    end-to-end reply time, its reply parts and what went wrong with it in plain words."""
    transcript = list(Message.select().where(Message.conversation == conversation).order_by(Message.id))
    by_id = {message.id: message for message in transcript}
    parts = ReplyPart.of_conversation(conversation)
    questions, reply_times, explanations = {}, {}, {}
    for message in transcript:
        failed = [part for part in parts.get(message.id, []) if part.status in DELIVERY_FAILURES]
        explanations[message.id] = explanation_of(message, failed)
        if message.role == Role.ASSISTANT.value and message.reply_to_id is not None:
            # A burst's answer replies to its last question and lists every one it answers.
            answered = message.metadata.get("answers") or [message.reply_to_id]
            questions[message.id] = [by_id[question_id] for question_id in answered if question_id in by_id]
            reply_times[message.id] = reply_time(message, by_id.get(message.reply_to_id))
    return {"transcript": transcript, "parts": parts, "questions": questions, "reply_times": reply_times,
            "explanations": explanations}


class ConversationView(PanelModelView):
    """Conversations, searchable by phone; a conversation's page is its transcript."""

    list_template = "chatbot_admin/conversation_list.html"
    details_template = "chatbot_admin/conversation_details.html"
    can_create = False
    can_edit = False
    can_delete = True
    can_view_details = True
    column_list = ("user_phone", "profile_name", "number", "message_count", "last_message", "failures", "is_active",
                   "paused_by", "waiting", "updated_at")
    column_labels = {"user_phone": "Phone", "profile_name": "Name", "number": "Number", "message_count": "Messages",
                     "last_message": "Last message", "failures": "Failures", "is_active": "Active",
                     "paused_by": "Taken over by", "waiting": "Waiting", "updated_at": "Last activity"}
    column_formatters = {"user_phone": _phone_with_delivery_flag, "created_at": _when, "updated_at": _when,
                         "waiting": lambda view, context, model, name: model.waiting or "",
                         "last_message": lambda view, context, model, name: shortened(model.last_message),
                         "failures": lambda view, context, model, name: failure_badge(model.failures),
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
        return Conversation.listed().order_by(Conversation.paused_at.is_null(), SQL("waiting").desc(),
                                              Conversation.updated_at.desc())

    def get_list_row_actions(self):
        # Words, not bare icons; deleting asks on a page of its own rather than in a pop-up.
        return [TemplateLinkRowAction("chatbot_row_actions.transcript", "Transcript"),
                TemplateLinkRowAction("chatbot_row_actions.confirm_delete", "Delete")]

    def render(self, template, **kwargs):
        if template == self.details_template and kwargs.get("model") is not None:
            kwargs.update(transcript_of(kwargs["model"]))
            kwargs["phone"] = _phone(self, None, kwargs["model"], "user_phone")
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
                           phone=lambda conversation: _phone(self, None, conversation, "user_phone"),
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
        return redirect(self.get_url(".details_view", id=conversation_id))

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
        "status": _status_badge,
        "latency_ms": lambda view, context, model, name: f"{model.latency_ms:.0f}" if model.latency_ms else "",
        "error": _masked_field,
        "metadata": _masked_field,
    }
    column_details_exclude_list = ("twilio_sid",)
    column_searchable_list = ("content",)
    search_hint = "Message text"
    # Linked to by the dashboard and the Problems view as flt0_status_equals=failed,
    # flt1_created_at_greater_than=2025-01-31 00:00:00 and flt2_number_equals=default.
    column_filters = (
        FilterEqual(Message.status, "Status", options=[(status.value, status.value) for status in Status]),
        "created_at",
        MessageNumberFilter(),
        FilterEqual(Message.role, "Role", options=[(role.value, role.value) for role in Role]),
        "model",
    )
    named_filter_urls = True
    column_default_sort = ("id", True)

    def get_query(self):
        # Each row shows its sender: read with the page, not one query a row.
        return Message.select(Message, Conversation).join(Conversation)


class OptOutView(PanelModelView):
    """Senders who wrote STOP; deleting one lets the bot answer them again (as their START would)."""

    can_create = False
    can_edit = False
    can_delete = True
    column_list = ("user_phone", "created_at")
    column_labels = {"user_phone": "Phone", "created_at": "Opted out at"}
    column_formatters = {"user_phone": _phone, "created_at": _when}
    column_default_sort = ("created_at", True)


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
    return sender if session.get(REVEAL_PHONES) else mask_phone(sender) if sender else ""


def checked_url(entry: WebhookLog) -> str | None:
    """The URL a refused signature was checked against, as the webhook recorded it in the error."""
    _, found, rest = (entry.error or "").partition(CHECKED_AGAINST)
    return rest.split()[0] if found and rest.split() else None


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
        "received_at": _when,
        "sender": _sender,
        "verdict": _verdict_badge,
        "processing_ms": lambda view, context, model, name: f"{model.processing_ms:.1f}",
        "error": _masked_field,
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
            kwargs.update(fields=webhook_fields(entry), checked_url=checked_url(entry))
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


# A user message still unanswered this long after it was stored is stuck, not slow.
STUCK_AFTER = timedelta(minutes=5)
# The Problems view lists this many, newest first.
PROBLEMS_SHOWN = 200


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

    Raises RedisError when the job could not be queued (the message is back in line all the same).
    """
    queue, phone = services().queue, message.conversation.user_phone
    if message.role == Role.USER.value and message.status == Status.FAILED.value:
        Message.put_back_in_line([message.id])
        tasks.enqueue_processing(queue, message.id, phone)
        return "Queued for another answer."
    if message.role == Role.USER.value:
        if tasks.job_is_active(services().redis, tasks.job_id_for(message.id)):
            return "Already in line: its job is waiting for a worker. Check the dashboard's workers."
        tasks.enqueue_processing(queue, message.id, phone)
        return "Queued for an answer."
    Message.put_back_unsent(message)
    if message.operator is not None:
        tasks.enqueue_operator_reply(queue, message.id)
    else:
        tasks.enqueue_processing(queue, message.reply_to_id, phone)
    return "Queued for sending again."


def problem_kind(message: Message) -> str:
    if message.role == Role.ASSISTANT.value:
        return "not delivered"
    return "not answered" if message.status == Status.PENDING.value else "AI failed"


class ProblemsView(LoginRequired, BaseView):
    """What needs the operator: failed answers, undelivered replies, messages stuck unanswered; each
    explained in plain words, with a one-click retry where a retry can help."""

    @expose("/")
    def index(self):
        problems = list(Message.problems(utcnow() - STUCK_AFTER, PROBLEMS_SHOWN))
        failed_parts = failed_parts_of(message.id for message in problems)
        rows = [
            {
                "message": message,
                "phone": _phone(self, None, message.conversation, "user_phone"),
                "kind": problem_kind(message),
                "explanation": (NOT_ANSWERED if message.status == Status.PENDING.value
                                else explanation_of(message, failed_parts.get(message.id, []))),
                "blocker": retry_blocker(message, failed_parts.get(message.id, [])),
            }
            for message in problems
        ]
        return self.render("chatbot_admin/problems.html", rows=rows, shown=PROBLEMS_SHOWN,
                           stuck_minutes=int(STUCK_AFTER.total_seconds() // 60))

    @expose("/retry/<int:message_id>/", methods=("POST",))
    def retry_view(self, message_id):
        # Only a problem is retried: a delivered reply is never sent twice by a stale page.
        message = Message.problems(utcnow() - STUCK_AFTER, 1).where(Message.id == message_id).first()
        if not SecureForm(request.form).validate() or message is None:
            flash("The request expired, or the problem is solved already; please look again.", "error")
            return redirect(self.get_url(".index"))
        blocker = retry_blocker(message, failed_parts_of([message.id]).get(message.id, []))
        if blocker:
            flash(f"Not retried: {blocker}", "error")
            return redirect(self.get_url(".index"))
        try:
            flash(f"Message {message.id}: {retry_problem(message)}", "success")
        except RedisError as error:
            log.error("message_id=%s retry not queued: %s", message.id, error)
            flash("Put back in line but not queued (Redis is unreachable); the sweeper queues it once Redis "
                  "is back.", "error")
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
    admin.add_view(ProblemsView(name="Problems", endpoint="problems", url="/admin/problems"))
    admin.add_view(PlaygroundView(name="Playground", endpoint="playground", url="/admin/playground"))
    admin.add_view(OptOutView(OptOut, name="Opted out", endpoint="optout"))
    admin.add_view(SpendingView(name="Spending", endpoint="spending", url="/admin/spending"))
    admin.add_view(AccessView(name="Access", endpoint="access", url="/admin/access"))
    admin.add_view(WebhookLogView(WebhookLog, name="Webhook log", endpoint="webhooklog"))
    return admin

