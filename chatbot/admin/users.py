"""The Users page, for owners: who may log in, with which role; add, change role, reset 2FA, remove.

Every change goes through chatbot.users, as `flask users` does, so the last owner is kept here too.
"""
from __future__ import annotations

from flask import abort, flash, redirect, request, url_for
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm

from chatbot import users
from chatbot.admin.panel import LoginRequired, signed_in_admin
from chatbot.models import AdminUser
from chatbot.roles import ORDER, Role, may

EXPIRED = "The request expired; please try again."


class UsersView(LoginRequired, BaseView):
    """Owners manage the panel's users; anyone else signed in gets 403."""

    role_needed = Role.OWNER

    @staticmethod
    def _owner() -> AdminUser:
        """The signed-in owner doing this change; anyone else is refused with 403."""
        admin = signed_in_admin()
        if admin is None or not may(admin.role, Role.OWNER):
            abort(403)
        return admin

    def _change(self, change, success, problem: str | None = None):
        """Run one change as the signed-in owner, after the CSRF check and `problem` (refused when set);
        flash how it went (`success` is a message, or makes one of what the change returned)."""
        admin = self._owner()
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
            return redirect(self.get_url(".index"))
        try:
            if problem:
                raise users.UserError(problem)
            result = change(actor=admin.username, address=request.remote_addr or "")
        except users.UserError as error:
            flash(f"Not done: {error}.", "error")
            return redirect(self.get_url(".index"))
        flash(success(result) if callable(success) else success, "success")
        now = AdminUser.get_or_none(AdminUser.id == admin.id)
        if now is None or now.session_stamp() != admin.session_stamp():
            # The owner changed their own role or removed themselves: their session has ended with it.
            return redirect(url_for("admin.login_view"))
        return redirect(self.get_url(".index"))

    @staticmethod
    def _user(user_id: int) -> AdminUser:
        user = AdminUser.get_or_none(AdminUser.id == user_id)
        if user is None:
            abort(404)
        return user

    @expose("/")
    def index(self):
        self._owner()
        return self.render("chatbot_admin/users.html", users=users.list_users(), roles=[role.value for role in ORDER],
                           me=signed_in_admin(), min_password=users.MIN_PASSWORD)

    @expose("/add/", methods=("POST",))
    def add_view(self):
        self._owner()
        username = (request.form.get("username") or "").strip()
        password = request.form.get("password") or ""
        role = request.form.get("role") or ""
        mismatch = password != (request.form.get("password_again") or "")
        return self._change(lambda **who: users.add_user(username, password, role, **who),
                            f"Added {username!r} as {role}.",
                            problem="the two passwords differ" if mismatch else None)

    @expose("/<row_id:user_id>/role/", methods=("POST",))
    def role_view(self, user_id):
        self._owner()
        user = self._user(user_id)
        role = request.form.get("role") or ""

        def changed(previous: str) -> str:
            if previous == role:
                return f"{user.username!r} is {role} already: nothing changed."
            return f"{user.username!r} is now {role} (was {previous}); their open sessions have ended."

        return self._change(lambda **who: users.set_role(user.username, role, **who), changed)

    @expose("/<row_id:user_id>/reset-2fa/", methods=("POST",))
    def reset_two_factor_view(self, user_id):
        self._owner()
        user = self._user(user_id)
        return self._change(lambda **who: users.reset_two_factor(user.username, **who),
                            f"Two-factor login of {user.username!r} is off until they set it up again.")

    @expose("/<row_id:user_id>/remove/", methods=("POST",))
    def remove_view(self, user_id):
        self._owner()
        user = self._user(user_id)
        # The page's second step sends confirm=yes: one stray post removes nobody.
        unconfirmed = request.form.get("confirm") != "yes"
        return self._change(lambda **who: users.remove_user(user.username, **who),
                            f"Removed {user.username!r}: they can no longer log in.",
                            problem=f"confirm the removal of {user.username!r} first" if unconfirmed else None)
