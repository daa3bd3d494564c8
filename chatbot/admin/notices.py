"""The Notices page: every alert the operator was sent (a cap reached, an upstream refusing), newest
first, unread ones first, with mark-as-read; the menu counts those unread."""
from __future__ import annotations

from flask import flash, g, redirect, request
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm

from chatbot.admin.panel import LoginRequired, signed_in_admin
from chatbot.models import Notice
from chatbot.roles import Role
from chatbot.sanitizer import whole_number

# The page lists this many; older ones stay in the table until retention removes them.
NOTICES_SHOWN = 100


def unread_now() -> int:
    """How many notices nobody has read, counted once per request (the menu names it twice)."""
    if "notices_unread" not in g:
        g.notices_unread = Notice.unread_count()
    return g.notices_unread


class NoticesView(LoginRequired, BaseView):
    """The alerts, kept in the panel whether or not ALERT_WEBHOOK_URL is set."""

    roles_needed = {"read_view": Role.AGENT}

    @expose("/")
    def index(self):
        return self.render("chatbot_admin/notices.html", notices=list(Notice.newest(NOTICES_SHOWN)),
                           shown=NOTICES_SHOWN)

    @expose("/read/", methods=("POST",))
    def read_view(self):
        """Mark one notice read (`notice_id`), or every unread one (none given)."""
        notice_id = whole_number(request.form.get("notice_id", "")) if request.form.get("notice_id") else None
        if not SecureForm(request.form).validate() or (request.form.get("notice_id") and notice_id is None):
            flash("The request expired; please look again.", "error")
            return redirect(self.get_url(".index"))
        marked = Notice.mark_read(signed_in_admin().username, notice_id)
        if notice_id is None:
            flash(f"Marked {marked} notice{'s' if marked != 1 else ''} read.", "success")
        elif not marked:
            flash("Someone read that notice already.", "warning")
        return redirect(self.get_url(".index"))
