"""The operator's admin panel (Flask-Admin on the Peewee models), behind a login."""
from __future__ import annotations

from flask import request
from flask_admin import Admin
from flask_admin.form import SecureForm
from flask_admin.theme import Bootstrap4Theme

from chatbot.admin import audit_log, first_run
from chatbot.admin.access import AccessView
from chatbot.admin.ai_configurations import AIConfigurationView
from chatbot.admin.campaigns import CampaignsView
from chatbot.admin.caps import caps_reached
from chatbot.admin.conversations import ConversationView, MessageView, OptOutView
from chatbot.admin.inbox import CATEGORY, CannedReplyView, CountedLabel, InboxView
from chatbot.admin.knowledge import KnowledgeView
from chatbot.admin.media import MediaView
from chatbot.admin.notices import NoticesView, unread_now
from chatbot.admin.numbers import NumbersView
from chatbot.admin.panel import (
    PanelIndexView,
    RowIdConverter,
    local_time,
    masked,
    may_do,
    numbers_revealed,
    signed_in_admin,
)
from chatbot.admin.playground import PlaygroundView
from chatbot.admin.problems import ProblemsView
from chatbot.admin.search import SearchView
from chatbot.admin.spending import SpendingView
from chatbot.admin.tools import ToolsView
from chatbot.admin.two_factor import TwoFactorView
from chatbot.admin.unhappy import UnhappyView
from chatbot.admin.users import UsersView
from chatbot.admin.webhook_log import WebhookLogView
from chatbot.models import AIConfiguration, CannedReply, Conversation, Message, OptOut, WebhookLog, WhatsAppNumber
from chatbot.spend_caps import refused_by


def build_admin(app) -> Admin:
    """Attach the admin panel at /admin (built per app: a module-level Admin breaks a second app)."""
    # Before any view: their routes name it.
    app.url_map.converters["row_id"] = RowIdConverter
    admin = Admin(
        app,
        name="WhatsApp AI Assistant",
        url="/admin",
        index_view=PanelIndexView(name="Dashboard", url="/admin", endpoint="admin"),
        theme=Bootstrap4Theme(base_template="chatbot_admin/base.html", fluid=True),
    )
    app.jinja_env.globals["admin_secure_form"] = SecureForm
    app.jinja_env.filters["masked"] = masked
    app.jinja_env.filters["local_time"] = local_time
    app.jinja_env.globals.update(may_do=may_do, numbers_revealed=numbers_revealed, first_run_steps=first_run.steps,
                                 spend_caps_reached=caps_reached, refused_by=refused_by)
    audit_log.init_app(app)
    app.context_processor(
        lambda: {"current_admin": signed_in_admin() if request.path.startswith("/admin") else None})
    # The inbox's category and entry count the customers waiting for a person, on every page drawn.
    admin.add_category(CountedLabel(CATEGORY))
    admin.add_view(InboxView(name=CountedLabel("Waiting"), category=CATEGORY, endpoint="inbox", url="/admin/inbox"))
    admin.add_view(CannedReplyView(CannedReply, name="Canned replies", category=CATEGORY, endpoint="cannedreply"))
    admin.add_view(AIConfigurationView(AIConfiguration, name="AI configurations", endpoint="aiconfiguration"))
    admin.add_view(ConversationView(Conversation, name="Conversations", endpoint="conversation"))
    admin.add_view(SearchView(name="Search", endpoint="search", url="/admin/search"))
    admin.add_view(UnhappyView(name="Unanswered and unhappy", endpoint="unhappy", url="/admin/unhappy"))
    admin.add_view(NumbersView(WhatsAppNumber, name="Numbers", endpoint="whatsappnumber"))
    admin.add_view(MessageView(Message, name="Messages", endpoint="message"))
    admin.add_view(KnowledgeView(name="Knowledge", endpoint="knowledge", url="/admin/knowledge"))
    admin.add_view(ToolsView(name="Tools", endpoint="tools", url="/admin/tools"))
    admin.add_view(CampaignsView(name="Campaigns", endpoint="campaigns", url="/admin/campaigns"))
    admin.add_view(ProblemsView(name="Problems", endpoint="problems", url="/admin/problems"))
    admin.add_view(NoticesView(name=CountedLabel("Notices", unread_now), endpoint="notices", url="/admin/notices"))
    admin.add_view(PlaygroundView(name="Playground", endpoint="playground", url="/admin/playground"))
    admin.add_view(OptOutView(OptOut, name="Opted out", endpoint="optout"))
    admin.add_view(SpendingView(name="Spending", endpoint="spending", url="/admin/spending"))
    admin.add_view(AccessView(name="Access", endpoint="access", url="/admin/access"))
    admin.add_view(WebhookLogView(WebhookLog, name="Webhook log", endpoint="webhooklog"))
    # Not in the menu: the transcript's pictures, players and downloads come from it.
    admin.add_view(MediaView(name="Media", endpoint="media", url="/admin/media"))
    admin.add_view(audit_log.AuditLogView(name="Audit log", endpoint="audit", url="/admin/audit"))
    admin.add_view(UsersView(name="Users", endpoint="users", url="/admin/users"))
    admin.add_view(TwoFactorView(name="Two-factor login", endpoint="two_factor", url="/admin/two-factor"))
    return admin

