"""The Access page: who may talk to the bot, overriding ACCESS_MODE and ACCESS_NOTICE."""
from __future__ import annotations

from flask import flash, redirect, request
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm

from chatbot.admin.panel import LoginRequired, masked, numbers_revealed, services
from chatbot.models import AccessEntry, Setting
from chatbot.redact import mask_phone
from chatbot.roles import Role
from chatbot.stages.access import MODE_KEY, NOTICE_KEY, parse_numbers
from config import ACCESS_MODES


class AccessView(LoginRequired, BaseView):
    """Who may talk to the bot: the mode, the notice, and the admin's lists (ACCESS_LIST shown, not editable)."""

    role_needed = Role.ADMIN

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
            phone=lambda number: number if numbers_revealed() else mask_phone(number),
            revealed=numbers_revealed(),
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

    @expose("/delete/<row_id:entry_id>/", methods=("POST",))
    def delete_view(self, entry_id):
        if SecureForm(request.form).validate():
            AccessEntry.delete().where(AccessEntry.id == entry_id).execute()
            flash("Number removed.", "success")
        return redirect(self.get_url(".index"))
