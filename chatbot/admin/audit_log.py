"""The admin's audit trail: a row for every change made in the panel, and the Audit log page to read them.

Every successful (2xx or 3xx) request under /admin/ that is not a GET is recorded after it is
answered, as "POST knowledge.delete_view" on its URL path, by the signed-in admin from their address:
the endpoint says what was done, the path (and an ?id=) what to. Form values never are: they hold
message texts, API keys and numbers. The index view's own pages (login, logout), two-factor login and
the users page record their rows themselves, and so does a view that calls `record_here` (the numbers reveal).
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import g, request
from flask_admin import BaseView, expose

from chatbot import audit
from chatbot.admin.panel import LoginRequired, services, signed_in_admin
from chatbot.models import AuditEvent
from chatbot.redact import mask_phones_in
from chatbot.roles import Role
from chatbot.sanitizer import MAX_STORED_INT, whole_number

# Requests that change nothing: never recorded.
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Views that write rows of their own: the index view's (login, logout), two-factor login's, the users'.
SELF_RECORDING_BLUEPRINTS = ("admin", "two_factor", "users")
PAGE_SIZE = 50


def record_here(action: str, target: str = "", detail: str = "") -> None:
    """Record `action` by the signed-in admin for this request, in place of the generic row."""
    user = signed_in_admin()
    audit.record(action, actor=user.username if user else "", target=target, detail=detail,
                 address=request.remote_addr or "")
    g.audit_recorded = True


def target_of() -> str:
    """What a request acted on: its path, with the ?id= Flask-Admin's edit and delete URLs name."""
    ids = request.args.getlist("id")
    return request.path + (f"?id={','.join(ids)}" if ids else "")


def record_change(response):
    """Write the audit row of a successful change under /admin/ (an after_request hook)."""
    if (request.method in SAFE_METHODS or not request.path.startswith("/admin/")
            or response.status_code >= 400 or g.get("audit_recorded")
            or request.blueprint in (None, *SELF_RECORDING_BLUEPRINTS)):
        return response
    user = signed_in_admin()
    if user is not None:
        audit.record(f"{request.method} {request.endpoint}", actor=user.username, target=target_of(),
                     address=request.remote_addr or "")
    return response


def init_app(app) -> None:
    app.after_request(record_change)


def day_in(text: str | None) -> date | None:
    """A YYYY-MM-DD date from a filter, or None when it is empty or not a date."""
    try:
        return date.fromisoformat((text or "").strip())
    except ValueError:
        return None


def utc_start_of(day: date, zone: ZoneInfo) -> datetime:
    """The moment `day` begins in `zone`, as the naive UTC the database stores."""
    return datetime.combine(day, time.min, zone).astimezone(ZoneInfo("UTC")).replace(tzinfo=None)


class AuditLogView(LoginRequired, BaseView):
    """Who did what in the admin, newest first, filtered by actor, action and dates."""

    role_needed = Role.ADMIN

    @expose("/")
    def index(self):
        zone_name = services().config.admin_timezone
        zone = ZoneInfo(zone_name)
        actor = (request.args.get("actor") or "").strip()
        action = (request.args.get("action") or "").strip()
        since, until = day_in(request.args.get("since")), day_in(request.args.get("until"))
        page = whole_number(request.args.get("page", "")) or 1
        page = min(page, MAX_STORED_INT // PAGE_SIZE)
        events = AuditEvent.select().order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        if actor:
            events = events.where(AuditEvent.actor == actor)
        if action:
            events = events.where(AuditEvent.action.startswith(action))
        if since:
            events = events.where(AuditEvent.at >= utc_start_of(since, zone))
        if until:
            events = events.where(AuditEvent.at < utc_start_of(until + timedelta(days=1), zone))
        total = events.count()
        rows = list(events.paginate(page, PAGE_SIZE))
        filters = {"actor": actor, "action": action, "since": since.isoformat() if since else "",
                   "until": until.isoformat() if until else ""}
        return self.render(
            "chatbot_admin/audit_log.html", events=rows, total=total, page=page,
            pages=max(1, -(-total // PAGE_SIZE)), filters=filters, zone_name=zone_name,
            # Rows are masked when written; masked again here whatever the reveal toggle says.
            shown=mask_phones_in,
            actors=[row.actor for row in AuditEvent.select(AuditEvent.actor).distinct().order_by(AuditEvent.actor)],
        )
