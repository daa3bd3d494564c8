"""What every admin view shares: the login, the dashboard, the base view, masking and formatting."""
from __future__ import annotations

import json
import logging
import math
from datetime import datetime

from flask import (
    current_app,
    flash,
    g,
    get_template_attribute,
    has_request_context,
    make_response,
    redirect,
    request,
    session,
    url_for,
)
from flask_admin import AdminIndexView, expose
from flask_admin.contrib.peewee import ModelView
from flask_admin.contrib.peewee.filters import FilterEqual
from flask_admin.form import SecureForm
from flask_admin.model.filters import BaseIntFilter
from markupsafe import Markup
from peewee import AutoField
from redis.exceptions import RedisError
from werkzeug.routing import IntegerConverter
from wtforms.validators import ValidationError

from chatbot import audit, auth, clock
from chatbot.admin.drilldowns import chart_data, links
from chatbot.admin.times import DETAIL_FORMATTERS, LIST_FORMATTERS, FilterConverter
from chatbot.error_explanations import OUTSIDE_WINDOW_CODE, Explanation, explain_stored_error, twilio_error
from chatbot.jobs.queueing import queue_health
from chatbot.models import AdminUser, Conversation, Message, Status, WhatsAppNumber
from chatbot.models.handoff import reason_in_words
from chatbot.redact import mask_phone, mask_phones_in
from chatbot.reports import DEFAULT_PERIOD, PERIODS, compute_stats
from chatbot.roles import Role, may
from chatbot.sanitizer import MAX_STORED_INT, whole_number
from chatbot.web.security import DASHBOARD_CSP

log = logging.getLogger(__name__)

REVEAL_PHONES = "reveal_phones"
# Why a playground's or the console's conversation is never taken over, replied to or retried.
NOT_ON_WHATSAPP = ("this is a playground or console conversation, with nobody on WhatsApp at the other end: "
                   "nothing of it is ever sent through Twilio.")


def minutes(value: float | None) -> str:
    """Say a wait in minutes for people: `45 s`, `12 min`, `3.5 h`."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 60:.0f} s"
    return f"{value:.0f} min" if value < 90 else f"{value / 60:.1f} h"


def services():
    return current_app.extensions["chatbot"]


SESSIONS_DOWN = ("Logging in is unavailable: Redis, which keeps the admin sessions, cannot be reached. "
                 "Try again once it is back.")


def admin_sessions() -> auth.AdminSessions:
    return auth.AdminSessions(services().redis)


def session_admin() -> AdminUser | None:
    """Return this request's logged-in user, looked up once, even one who still has to enrol in
    two-factor login; None (fail closed) when Redis is down."""
    if "session_user" not in g:
        g.sessions_down = False
        try:
            g.session_user = auth.current_admin(admin_sessions())
        except RedisError as error:
            log.error("admin sessions unavailable: %s", error)
            g.session_user, g.sessions_down = None, True
    return g.session_user


def enrolment_due(user: AdminUser) -> bool:
    """Whether REQUIRE_2FA keeps `user` on the two-factor enrolment page until they enrol."""
    return services().config.require_2fa and not user.has_two_factor


def signed_in_admin() -> AdminUser | None:
    """Return this request's logged-in admin; None when logged out, or while their enrolment is due."""
    if "admin_user" not in g:
        user = session_admin()
        g.enrolment_due = user is not None and enrolment_due(user)
        g.admin_user = None if g.enrolment_due else user
    return g.admin_user


def signed_in_role() -> str | None:
    """The logged-in admin's role, or None when nobody is logged in (or outside a request)."""
    user = signed_in_admin() if has_request_context() else None
    return user.role if user is not None else None


def may_do(needed: Role | str) -> bool:
    """Whether the logged-in admin's role may do what needs `needed` (templates ask it to hide buttons)."""
    role = signed_in_role()
    return role is not None and may(role, Role(needed))


class LoginRequired:
    """Every admin page needs a logged-in operator (others are sent to the login page) whose role
    may use it: `role_needed` for the view, `roles_needed` for an endpoint (by its method name) or an
    action (by its name) that needs more, and `role_to_change` for any other request that is not a
    GET, so a new form posts for the cautious role until someone says otherwise. A logged-in
    operator whose role is too low gets 403 and a page that names the role needed."""

    role_needed: Role = Role.VIEWER
    role_to_change: Role = Role.ADMIN
    roles_needed: dict[str, Role] = {}

    def is_accessible(self) -> bool:
        return may_do(self.role_needed)

    def inaccessible_callback(self, name, **kwargs):
        if signed_in_admin() is None:
            if g.get("enrolment_due"):
                return redirect(url_for("two_factor.index"))
            return redirect(url_for("admin.login_view", next=request.full_path.rstrip("?")))
        return self.refused(self.role_needed)

    def role_for(self, name: str) -> Role:
        """The role the endpoint `name` needs for this request."""
        if name in self.roles_needed:
            return self.roles_needed[name]
        return self.role_needed if request.method in ("GET", "HEAD") else max_role(self.role_needed,
                                                                                 self.role_to_change)

    def _handle_view(self, name, **kwargs):
        refused = super()._handle_view(name, **kwargs)
        if refused is None and not may_do(self.role_for(name)):
            return self.refused(self.role_for(name))
        return refused

    def refused(self, needed: Role):
        """The 403 page for a logged-in operator whose role is below `needed`."""
        log.warning("admin %s refused: role %s below %s", mask_phones_in(request.path), signed_in_role(), needed)
        return self.render("chatbot_admin/forbidden.html", needed=needed, role=signed_in_role()), 403


def max_role(first: Role, second: Role) -> Role:
    """The higher of two roles."""
    return first if may(first, second) else second


class PanelIndexView(LoginRequired, AdminIndexView):
    """The dashboard, plus the login and logout pages (the only pages open without a session).

    A right password logs in a user without two-factor login; one with it gets a half-login, which
    opens only the code page (chatbot/admin/two_factor.py).
    """

    # Its forms are the operator's own session and account: any role may post them.
    role_to_change = Role.VIEWER

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
                           charts=chart_data(stats, figure_links, number), periods=PERIODS, period=period,
                           default_period=DEFAULT_PERIOD,
                           numbers=number_labels(), chosen=number, reason_words=reason_in_words, minutes=minutes,
                           config_rating_minutes=services().config.rating_after_minutes)
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
                error, status, then = self._try_login(form)
            except RedisError as failure:
                log.error("admin login unavailable: %s", failure)
                error, status = SESSIONS_DOWN, 503
            if error is None:
                return redirect(then)
        elif request.method == "POST":
            error, status = "The form expired or was incomplete; please try again.", 400
        elif signed_in_admin() is None and g.sessions_down:
            error, status = SESSIONS_DOWN, 503
        elif g.enrolment_due:
            return redirect(url_for("two_factor.index"))
        return self.render("chatbot_admin/login.html", form=form, error=error), status

    @staticmethod
    def _try_login(form) -> tuple[str | None, int, str | None]:
        """Check the credentials under the throttle; on success return (None, 302, where to go next)."""
        throttle = auth.LoginThrottle(services().redis)
        address = request.remote_addr or "unknown"
        typed = form.username.data
        next_page = auth.safe_next(request.args.get("next"), url_for("admin.index"))
        wait = auth.claim_attempt(throttle, typed, address)
        if wait:
            audit.record("login_failed", target=typed, detail="throttled", address=address)
            return f"Too many failed attempts. Try again in {math.ceil(wait / 60)} minute(s).", 429, None
        user = auth.authenticate(typed, form.password.data)
        if user is None:
            log.warning("admin login failed addr=%s", address)
            audit.record("login_failed", target=typed, detail="password", address=address)
            return "Wrong username or password.", 401, None
        if user.has_two_factor:
            # The pair's record is cleared only once the code is right too: a known password alone
            # must not buy fresh attempts at the code.
            auth.start_half_login(user, admin_sessions())
            return None, 302, url_for("two_factor.verify_view", next=next_page)
        throttle.forgive(typed, address)
        throttle.remember(typed, address)
        auth.log_in(user, admin_sessions())
        audit.record("login", actor=user.username, target=user.username, detail="password", address=address)
        return None, 302, url_for("two_factor.index") if enrolment_due(user) else next_page

    @expose("/logout/", methods=("POST",))
    def logout_view(self):
        form = SecureForm(request.form)
        if form.validate():
            try:
                user = session_admin()
                auth.log_out(admin_sessions())
                if user is not None:
                    audit.record("logout", actor=user.username, target=user.username,
                                 address=request.remote_addr or "unknown")
            except RedisError as error:
                # The cookie is cleared already; the server-side session ends at its idle timeout.
                log.error("admin logout could not end the session in Redis: %s", error)
        return redirect(url_for("admin.login_view"))


class RowIdConverter(IntegerConverter):
    """A row id in a URL (`<row_id:message_id>`): one out of the database's range matches no route
    (404) instead of reaching the database."""

    def __init__(self, url_map):
        super().__init__(url_map, min=1, max=MAX_STORED_INT)


class PanelModelView(LoginRequired, ModelView):
    """Flask-Admin's model pages, whose numbers from the URL (an id, a page, an integer filter) are
    checked against the database's range first: out of range, they are ignored with a log line."""

    form_base_class = SecureForm
    # Every list names each cell's column, so a phone draws its rows as cards (model_list.html, panel.css);
    # the columns named in column_hidden_on_phone are left off those cards.
    list_template = "chatbot_admin/model_list.html"
    column_hidden_on_phone: tuple[str, ...] = ()
    page_size = 50
    # Times in ADMIN_TIMEZONE, the zone named, in every list, detail page and time filter.
    column_type_formatters = LIST_FORMATTERS
    column_type_formatters_detail = DETAIL_FORMATTERS
    filter_converter = FilterConverter()
    # Flask-Admin's own pages that change rows (their forms too: a GET of /new/ is refused as its POST).
    CHANGES = ("create_view", "edit_view", "delete_view", "ajax_update")
    can_set_page_size = True
    search_hint = "Search"

    def search_placeholder(self) -> str:
        return self.search_hint

    def role_for(self, name: str) -> Role:
        if name in self.CHANGES and name not in self.roles_needed:
            return max_role(self.role_needed, self.role_to_change)
        if name == "action_view":
            return self.action_role(request.form.get("action", ""))
        return super().role_for(name)

    def action_role(self, action: str) -> Role:
        """The role a list action (Delete, Deactivate, …) needs."""
        return self.roles_needed.get(action, max_role(self.role_needed, self.role_to_change))

    def is_action_allowed(self, name: str) -> bool:
        return may_do(self.action_role(name)) and super().is_action_allowed(name)

    # Flask-Admin hides the buttons of what is not allowed: read per request, for whoever asks (a view
    # serves every operator at once, so nothing per-operator is ever stored on it). A view that never
    # allows one says so with a plain `can_create = False`.
    @property
    def can_create(self) -> bool:
        return may_do(self.role_for("create_view"))

    @property
    def can_edit(self) -> bool:
        return may_do(self.role_for("edit_view"))

    @property
    def can_delete(self) -> bool:
        return may_do(self.role_for("delete_view"))

    def get_one(self, id):
        if isinstance(self.model._meta.primary_key, AutoField) and whole_number(str(id)) is None:
            log.warning("admin %s: id %r out of range, ignored", self.endpoint, str(id)[:20])
            return None
        return super().get_one(id)

    def _get_list_extra_args(self):
        view_args = super()._get_list_extra_args()
        # Flask-Admin reads ?page= as any int; its offset (page × page size) must fit the database's.
        if not 0 <= view_args.page <= MAX_STORED_INT // max(self.page_size_options):
            log.warning("admin %s: page %s out of range, the first page shown", self.endpoint, view_args.page)
            view_args.page = 0
        return view_args

    def _get_list_filter_args(self):
        filters = super()._get_list_filter_args()
        if not filters:
            return filters
        kept = []
        for index, name, value in filters:
            if isinstance(self._filters[index], BaseIntFilter) and not _in_range(self._filters[index].clean(value)):
                log.warning("admin %s: filter %s value out of range, ignored", self.endpoint, name)
                flash(f"{name}: {value[:20]} is out of range; that filter is left out.", "error")
                continue
            kept.append((index, name, value))
        return kept


def _in_range(cleaned) -> bool:
    """Whether an integer filter's value (one int, or a list for "in list" filters) fits the database."""
    return all(abs(number) <= MAX_STORED_INT for number in (cleaned if isinstance(cleaned, list) else [cleaned]))


def numbers_revealed() -> bool:
    """Whether this request shows full phone numbers: an owner chose to reveal them (a session
    that chose so before its role was lowered shows them masked)."""
    return bool(session.get(REVEAL_PHONES)) and may_do(Role.OWNER)


def phone_column(view, context, model, name):
    phone = getattr(model, name)
    return phone if numbers_revealed() else mask_phone(phone)


def masked(text) -> str:
    """`text` with every phone number in it masked, unless this operator chose to reveal numbers:
    stored errors, raw request bodies and metadata quote numbers too."""
    text = "" if text is None else str(text)
    return text if numbers_revealed() else mask_phones_in(text)


def masked_column(view, context, model, name):
    value = getattr(model, name)
    return masked(json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value)


def status_badge(status: str) -> Markup:
    """The status as its coloured badge: the one macro every page uses."""
    return get_template_attribute("chatbot_admin/badges.html", "status_badge")(status)


def status_badge_column(view, context, model, name):
    return status_badge(getattr(model, name))


def explanation_of(message: Message, failed_parts=()) -> Explanation | None:
    """Say in plain words what went wrong with `message` and the fix, or None when nothing is known."""
    if message.status == Status.OUTSIDE_WINDOW.value:
        return twilio_error(OUTSIDE_WINDOW_CODE)
    if failed_parts:
        return twilio_error(failed_parts[0].error_code)
    return explain_stored_error(message.error)


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


def number_name(key: str, labels: dict[str, str]) -> str:
    """A conversation's number by its label (a number removed since, masked)."""
    return labels.get(key) or masked(key)


def local_time(moment: datetime | None, seconds: bool = False) -> str:
    """The panel's `local_time` filter: a stored time in ADMIN_TIMEZONE, its zone named."""
    return clock.shown(moment, services().config.admin_timezone, seconds=seconds)


def number_labels() -> dict[str, str]:
    """Return each number's label by its conversation key, the default number ("") first; with no
    TWILIO_WHATSAPP_NUMBER there is no default number to offer."""
    default_address = services().config.twilio_whatsapp_number
    labels = {"": "default"} if default_address else {}
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
