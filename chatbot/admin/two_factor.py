"""Two-factor login pages: turning it on and off, new recovery codes, and the login's code page."""
from __future__ import annotations

import logging
import math

from flask import flash, make_response, redirect, request, url_for
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm
from markupsafe import Markup
from redis.exceptions import RedisError
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from chatbot import audit, auth, two_factor
from chatbot.admin.panel import SESSIONS_DOWN, admin_sessions, enrolment_due, services, session_admin
from chatbot.web.security import DASHBOARD_CSP

log = logging.getLogger(__name__)

FORM_EXPIRED = "The form expired or was incomplete; please try again."
WRONG_CODE = "That code is not right (or was used already). Try the newest code."


class CodeForm(SecureForm):
    """One code: six digits from the authenticator app, or a recovery code."""

    code = StringField("Code", validators=[DataRequired(), Length(max=32)])


def _page(html, status: int = 200):
    """A page that shows a secret or asks for one: never cached, and no inline script runs on it."""
    response = make_response(html, status)
    response.headers["Content-Security-Policy"] = DASHBOARD_CSP
    response.headers["Cache-Control"] = "no-store"
    return response


def _address() -> str:
    return request.remote_addr or "unknown"


class TwoFactorView(BaseView):
    """/admin/two-factor/: the signed-in user's own two-factor login; /verify/: the login's second step.

    Open without a full session on purpose: each page checks who is asking (a logged-in user whose
    enrolment may be due, or a half-login), so the panel's login check is not the one used here.
    """

    def is_accessible(self) -> bool:
        return True

    @expose("/", methods=("GET", "POST"))
    def index(self):
        user = session_admin()
        if user is None:
            return redirect(url_for("admin.login_view", next=request.path))
        form = CodeForm(request.form)
        if request.method == "POST":
            if not form.validate():
                return self._settings(user, form, error=FORM_EXPIRED, status=400)
            if not user.has_two_factor:
                return self._confirm(user, form)
            return self._change(user, form, request.form.get("action"))
        return self._settings(user, form)

    def _settings(self, user, form, error: str | None = None, status: int = 200):
        """The page as it stands: the secret to enrol with, or what can be done with two-factor on."""
        enrolling = None
        if not user.has_two_factor:
            secret = two_factor.begin_enrolment(user, services().cipher)
            uri = two_factor.provisioning_uri(secret, user.username, self.admin.name)
            enrolling = {"secret": two_factor.grouped(secret), "qr": Markup(two_factor.qr_svg(uri))}
        return _page(self.render("chatbot_admin/two_factor.html", user=user, current_admin=user, form=form,
                                 enrolling=enrolling, due=enrolment_due(user), error=error,
                                 codes_left=len(user.recovery_codes or [])), status)

    def _confirm(self, user, form):
        codes = two_factor.confirm_enrolment(user, services().cipher, form.code.data)
        if codes is None:
            return self._settings(user, CodeForm(), error=WRONG_CODE, status=400)
        audit.record("2fa_enabled", actor=user.username, target=user.username, address=_address())
        return self._recovery_codes(user, codes, "Two-factor login is on.")

    def _change(self, user, form, action: str | None):
        """Turn two-factor login off, or replace the recovery codes: either needs a valid code."""
        if action not in ("disable", "recovery-codes"):
            return self._settings(user, CodeForm(), error=FORM_EXPIRED, status=400)
        # A stolen session must not guess codes freely either: the login's throttle counts these.
        throttle = auth.LoginThrottle(services().redis)
        wait = auth.claim_attempt(throttle, user.username, _address())
        if wait:
            return self._settings(user, CodeForm(), status=429,
                                  error=f"Too many wrong codes. Try again in {math.ceil(wait / 60)} minute(s).")
        if two_factor.check_code(user, services().cipher, form.code.data) is None:
            return self._settings(user, CodeForm(), error=WRONG_CODE, status=400)
        throttle.forgive(user.username, _address())
        if action == "disable":
            two_factor.reset_two_factor(user)
            audit.record("2fa_disabled", actor=user.username, target=user.username, address=_address())
            flash("Two-factor login is off.", "success")
            return redirect(url_for(".index"))
        codes = two_factor.new_recovery_codes(user)
        audit.record("recovery_codes_regenerated", actor=user.username, target=user.username, address=_address())
        return self._recovery_codes(user, codes, "New recovery codes: the old ones no longer work.")

    def _recovery_codes(self, user, codes: list[str], heading: str):
        return _page(self.render("chatbot_admin/two_factor_codes.html", user=user, current_admin=user,
                                 codes=codes, heading=heading))

    @expose("/verify/", methods=("GET", "POST"))
    def verify_view(self):
        form = CodeForm(request.form)
        next_page = auth.safe_next(request.args.get("next"), url_for("admin.index"))
        try:
            user = auth.half_logged_in(admin_sessions())
            if user is None:
                return redirect(url_for("admin.login_view", next=next_page))
            error, status = None, 200
            if request.method == "POST":
                error, status = self._second_step(user, form)
                if error is None:
                    return redirect(next_page)
        except RedisError as failure:
            log.error("admin login unavailable: %s", failure)
            error, status = SESSIONS_DOWN, 503
        return _page(self.render("chatbot_admin/two_factor_verify.html", form=CodeForm(), error=error), status)

    @staticmethod
    def _second_step(user, form) -> tuple[str | None, int]:
        """Check the code under the login's throttle; log in and return (None, 302) when it is right."""
        if not form.validate():
            return FORM_EXPIRED, 400
        throttle = auth.LoginThrottle(services().redis)
        address = _address()
        wait = auth.claim_attempt(throttle, user.username, address)
        if wait:
            audit.record("login_failed", target=user.username, detail="throttled", address=address)
            return f"Too many failed attempts. Try again in {math.ceil(wait / 60)} minute(s).", 429
        kind = two_factor.check_code(user, services().cipher, form.code.data)
        if kind is None:
            log.warning("admin login code wrong addr=%s", address)
            audit.record("login_failed", target=user.username, detail="code", address=address)
            return WRONG_CODE, 401
        throttle.forgive(user.username, address)
        throttle.remember(user.username, address)
        auth.log_in(user, admin_sessions())
        audit.record("login", actor=user.username, target=user.username,
                     detail="2fa" if kind == "totp" else "2fa recovery code", address=address)
        if kind == "recovery code":
            flash(f"Recovery code used: {len(user.recovery_codes)} left. Make new ones on the "
                  "Two-factor login page if you are running low.", "warning")
        return None, 302
