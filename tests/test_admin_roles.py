"""Who may do what in the admin: every page and every form checked on the server against the role."""
from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace

import pytest

from chatbot import takeover
from chatbot.handoff import open_handoff
from chatbot.models import (
    AccessEntry,
    AdminUser,
    AIConfiguration,
    ApprovedAnswer,
    AuditEvent,
    Campaign,
    CampaignRecipient,
    CannedReply,
    Conversation,
    Dismissal,
    FollowUp,
    Handoff,
    HandoffReason,
    KnowledgeSource,
    Message,
    Note,
    Notice,
    OptOut,
    Setting,
    Tool,
    WhatsAppNumber,
)
from chatbot.roles import ORDER, Role, may
from tests.conftest import csrf_token, log_in, password_hash
from tests.support import conversation_for

ANN, BOB, CY = "whatsapp:+15550001111", "whatsapp:+15550002222", "whatsapp:+15550003333"
ANN_MASKED, ANN_FULL = "+1555•••1111", "+15550001111"


def signed_in_as(app, role: Role):
    """A test client logged in as a user of `role` (named after it)."""
    AdminUser.get_or_create(username=str(role), defaults={"password_hash": password_hash(), "role": role.value})
    client = app.test_client()
    assert log_in(client, str(role)).status_code == 302
    return client


@pytest.fixture
def as_role(app):
    return lambda role: signed_in_as(app, role)


@pytest.fixture
def world(services, fake_twilio):
    """One of everything the admin pages show: conversations (one free, one taken over, one whose
    customer waits for a person), a failed message, an AI configuration, a number, knowledge, the
    access lists and a canned reply."""

    free = conversation_for(ANN, "Ann")
    held = conversation_for(BOB, "Bob")
    takeover.take_over(held.id, "someone")
    asking = conversation_for(CY, "Cy")
    question = Message.create(conversation=asking, role="user", status="waiting", content="A person please")
    failed = Message.create(conversation=free, role="user", status="failed", content="Hello?", error="AI down")
    waiting = open_handoff(None, asking, question, HandoffReason.CUSTOMER_REQUEST, "phrase", "wants a person")
    return SimpleNamespace(
        free=free, held=held, question=question, failed=failed, handoff=waiting,
        ai_config=AIConfiguration.create(name="Main", provider="openrouter", model_name="openai/gpt-4o-mini",
                                         max_tokens=500, temperature=0.7, system_prompt="Be kind."),
        number=WhatsAppNumber.create(address="whatsapp:+15550009000", label="Sales"),
        source=KnowledgeSource.create(kind="text", title="Prices", status="ready", content=b"Tea costs 2"),
        approved=ApprovedAnswer.create(question="When are you open?", answer="Nine to six."),
        canned=CannedReply.create(title="Thanks", text="Thank you for waiting."),
        entry=AccessEntry.create(user_phone="+15550004444", kind="block"),
        opt_out=OptOut.create(user_phone="+15550005555", number=""),
        follow_up=FollowUp.create(conversation=free, text="Your table is ready", due_at=datetime(2030, 1, 2, 8, 0)),
        # Saved resolving loopback only (ALLOW_PRIVATE_HOSTS); tried, it finds nothing listening on the discard port.
        photo=Message.create(conversation=free, role="user", status="answered", content="", metadata={
            "media": [{"url": fake_twilio.add_media(b"\x89PNG\r\n\x1a\n", "image/png"), "content_type": "image/png"}]}),
        notice=Notice.create(kind="ai:AIError:401", text="OpenRouter refused the key"),
        campaign=Campaign.create(name="Spring", content_sid="HX" + "0" * 32),
        tool=Tool.create(name="order_status", description="An order's status.", url_template="http://127.0.0.1:9/x"),
    )


def snapshot() -> dict:
    """Every row an admin form could change (audit rows too: a refused request writes none)."""
    models = (Conversation, Message, Note, Handoff, AIConfiguration, WhatsAppNumber, KnowledgeSource, ApprovedAnswer,
              CannedReply, AccessEntry, OptOut, Setting, AuditEvent, Tool, FollowUp, Notice, Dismissal, Campaign,
              CampaignRecipient)
    return {model.__name__: sorted(map(str, model.select().tuples())) for model in models}


def get_pages(world) -> dict[str, Role]:
    """Every admin page a browser opens, with the lowest role that may open it."""
    conversation, config = world.free.id, world.ai_config.id
    return {
        "/admin/": Role.VIEWER,
        "/admin/conversation/": Role.VIEWER,
        f"/admin/conversation/details/?id={conversation}": Role.VIEWER,
        "/admin/message/": Role.VIEWER,
        f"/admin/message/details/?id={world.question.id}": Role.VIEWER,
        "/admin/optout/": Role.VIEWER,
        "/admin/problems/": Role.VIEWER,
        "/admin/spending/": Role.VIEWER,
        "/admin/webhooklog/": Role.VIEWER,
        "/admin/knowledge/": Role.VIEWER,
        "/admin/inbox/": Role.VIEWER,
        f"/admin/inbox/{conversation}/since/0.json": Role.VIEWER,
        "/admin/aiconfiguration/": Role.ADMIN,
        "/admin/aiconfiguration/new/": Role.ADMIN,
        f"/admin/aiconfiguration/edit/?id={config}": Role.ADMIN,
        "/admin/whatsappnumber/": Role.ADMIN,
        "/admin/whatsappnumber/new/": Role.ADMIN,
        f"/admin/whatsappnumber/edit/?id={world.number.id}": Role.ADMIN,
        "/admin/access/": Role.ADMIN,
        "/admin/playground/": Role.ADMIN,
        "/admin/cannedreply/": Role.ADMIN,
        "/admin/cannedreply/new/": Role.ADMIN,
        f"/admin/cannedreply/edit/?id={world.canned.id}": Role.ADMIN,
        "/admin/knowledge/approved/new/": Role.ADMIN,
        f"/admin/knowledge/approved/{world.approved.id}/edit/": Role.ADMIN,
        f"/admin/conversation/delete/confirm/?id={conversation}": Role.ADMIN,
        "/admin/audit/": Role.ADMIN,
        "/admin/conversation/export/?format=csv": Role.ADMIN,
        "/admin/conversation/export/?format=csv&reveal=1": Role.OWNER,
        "/admin/search/": Role.VIEWER,
        "/admin/search/?q=hello": Role.VIEWER,
        "/admin/unhappy/": Role.VIEWER,
        "/admin/tools/": Role.ADMIN,
        f"/admin/tools/?edit={world.tool.id}": Role.ADMIN,
        f"/admin/optout/remove/confirm/?id={world.opt_out.id}": Role.ADMIN,
        "/admin/webhooklog/?kind=receipts": Role.VIEWER,
        "/admin/webhooklog/?search=SM": Role.VIEWER,
        f"/admin/media/{world.photo.id}/0": Role.VIEWER,
        "/admin/message/?flt0_figure_equals=undelivered": Role.VIEWER,
        "/admin/conversation/?flt0_figure_equals=active": Role.VIEWER,
        "/admin/notices/": Role.VIEWER,
        "/admin/campaigns/": Role.VIEWER,
        f"/admin/campaigns/{world.campaign.id}/": Role.VIEWER,
    }


CONFIG_FORM = {"name": "Sneaky", "provider": "openrouter", "model_name": "openai/gpt-4o", "max_tokens": "100",
               "temperature": "0.5", "api_key": "sk-or-v1-sneaky"}
# Every admin form, by its endpoint: (path, form, the lowest role that may post it); {free} and the
# like name the world's rows.
FORMS = {
    "conversation.take_over_view": ("/admin/conversation/takeover/{free}/", {}, Role.AGENT),
    "conversation.hand_back_view": ("/admin/conversation/handback/{held}/", {}, Role.AGENT),
    "conversation.reply_view": ("/admin/conversation/reply/{held}/", {"reply": "Hi from us"}, Role.AGENT),
    "conversation.note_view": ("/admin/conversation/note/{free}/", {"note": "Called her"}, Role.AGENT),
    "conversation.reset_context_view": ("/admin/conversation/reset/{free}/", {}, Role.AGENT),
    "conversation.deactivate_view": ("/admin/conversation/deactivate/{free}/", {}, Role.AGENT),
    "conversation.action_view": ("/admin/conversation/action/", {"action": "deactivate", "rowid": "{free}"},
                                 Role.AGENT),
    "inbox.claim_view": ("/admin/inbox/{handoff}/claim/", {}, Role.AGENT),
    "inbox.resolve_view": ("/admin/inbox/{handoff}/resolve/", {}, Role.AGENT),
    "problems.retry_view": ("/admin/problems/retry/{failed}/", {}, Role.AGENT),
    "conversation.cancel_follow_up_view": ("/admin/conversation/follow-up/{follow_up}/cancel/", {}, Role.AGENT),
    "knowledge.search_view": ("/admin/knowledge/search/", {"question": ""}, Role.VIEWER),
    "conversation.delete_view": ("/admin/conversation/delete/", {"id": "{free}"}, Role.ADMIN),
    "conversation.delete_confirmed_view": ("/admin/conversation/delete/confirmed/", {"id": "{free}"}, Role.ADMIN),
    "aiconfiguration.create_view": ("/admin/aiconfiguration/new/", CONFIG_FORM, Role.ADMIN),
    "aiconfiguration.edit_view": ("/admin/aiconfiguration/edit/?id={ai_config}", CONFIG_FORM, Role.ADMIN),
    "aiconfiguration.delete_view": ("/admin/aiconfiguration/delete/", {"id": "{ai_config}"}, Role.ADMIN),
    "aiconfiguration.action_view": ("/admin/aiconfiguration/action/", {"action": "activate", "rowid": "{ai_config}"},
                                    Role.ADMIN),
    "aiconfiguration.test_connection_view": ("/admin/aiconfiguration/test/{ai_config}/", {}, Role.ADMIN),
    "whatsappnumber.create_view": ("/admin/whatsappnumber/new/", {"address": "+15550007777", "label": "New"},
                                   Role.ADMIN),
    "whatsappnumber.edit_view": ("/admin/whatsappnumber/edit/?id={number}",
                                 {"address": "+15550009000", "label": "Renamed"}, Role.ADMIN),
    "whatsappnumber.delete_view": ("/admin/whatsappnumber/delete/", {"id": "{number}"}, Role.ADMIN),
    "knowledge.add_text_view": ("/admin/knowledge/sources/text/", {"text": "Opening hours: 9-6", "title": "Hours"},
                                Role.ADMIN),
    "knowledge.add_url_view": ("/admin/knowledge/sources/url/", {"url": "https://shop.example.com/"}, Role.ADMIN),
    "knowledge.add_file_view": ("/admin/knowledge/sources/file/", {}, Role.ADMIN),
    "knowledge.sync_view": ("/admin/knowledge/sources/{source}/sync/", {}, Role.ADMIN),
    "knowledge.delete_view": ("/admin/knowledge/sources/{source}/delete/", {}, Role.ADMIN),
    "knowledge.save_approved_view": ("/admin/knowledge/approved/save/", {"question": "Do you ship?", "answer": "Yes."},
                                     Role.ADMIN),
    "knowledge.delete_approved_view": ("/admin/knowledge/approved/{approved}/delete/", {}, Role.ADMIN),
    "access.mode_view": ("/admin/access/mode/", {"mode": "allowlist"}, Role.ADMIN),
    "access.notice_view": ("/admin/access/notice/", {"notice": "Members only"}, Role.ADMIN),
    "access.add_numbers_view": ("/admin/access/add/", {"kind": "allow", "numbers": "+15550006666"}, Role.ADMIN),
    "access.delete_view": ("/admin/access/delete/{entry}/", {}, Role.ADMIN),
    "spending.set_view": ("/admin/spending/set/", {"key": "budget_monthly", "value": "5"}, Role.ADMIN),
    "playground.send_view": ("/admin/playground/send/", {"text": "Hello bot"}, Role.ADMIN),
    "playground.reset_view": ("/admin/playground/reset/", {}, Role.ADMIN),
    "cannedreply.create_view": ("/admin/cannedreply/new/", {"title": "Bye", "text": "Goodbye"}, Role.ADMIN),
    "cannedreply.edit_view": ("/admin/cannedreply/edit/?id={canned}", {"title": "Thanks", "text": "Changed"},
                              Role.ADMIN),
    "cannedreply.delete_view": ("/admin/cannedreply/delete/", {"id": "{canned}"}, Role.ADMIN),
    "optout.delete_view": ("/admin/optout/delete/", {"id": "{opt_out}"}, Role.ADMIN),
    "tools.save_view": ("/admin/tools/save/", {"name": "new_tool", "description": "A new tool.",
                                               "url_template": "http://127.0.0.1:9/new", "timeout": "5"}, Role.ADMIN),
    "tools.remove_view": ("/admin/tools/{tool}/remove/", {}, Role.ADMIN),
    "tools.try_view": ("/admin/tools/{tool}/try/", {"arguments": ""}, Role.ADMIN),
    "optout.remove_confirmed_view": ("/admin/optout/remove/confirmed/", {"id": "{opt_out}"}, Role.ADMIN),
    "problems.retry_group_view": ("/admin/problems/retry-group/", {"message_id": "{failed}"}, Role.AGENT),
    "problems.dismiss_view": ("/admin/problems/dismiss/", {"message_id": "{failed}", "reason": "handled by phone"},
                              Role.AGENT),
    "notices.read_view": ("/admin/notices/read/", {"notice_id": "{notice}"}, Role.AGENT),
    "campaigns.create_view": ("/admin/campaigns/create/", {"name": "Autumn", "content_sid": "HX" + "1" * 32,
                                                            "audience": "recent", "days": "30"}, Role.ADMIN),
    "campaigns.send_view": ("/admin/campaigns/{campaign}/send/", {}, Role.ADMIN),
    "campaigns.pause_view": ("/admin/campaigns/{campaign}/pause/", {}, Role.ADMIN),
    "campaigns.resume_view": ("/admin/campaigns/{campaign}/resume/", {}, Role.ADMIN),
    "campaigns.cancel_view": ("/admin/campaigns/{campaign}/cancel/", {}, Role.ADMIN),
    "conversation.reveal_view": ("/admin/conversation/reveal/", {}, Role.OWNER),
}


# Flask-Admin's own forms on every model page, whether or not the page offers them: changes, for admins.
MODEL_PAGES = ("aiconfiguration", "whatsappnumber", "conversation", "message", "optout", "cannedreply", "webhooklog")
MODEL_FORMS = {f"{page}.{form}": (f"/admin/{page}/{path}", {}, Role.ADMIN)
               for page in MODEL_PAGES
               for form, path in (("create_view", "new/"), ("edit_view", "edit/?id=1"), ("delete_view", "delete/"),
                                  ("ajax_update", "ajax/update/"), ("action_view", "action/"))
               if f"{page}.{form}" not in FORMS}


def form_for(world, endpoint: str) -> tuple[str, dict, Role]:
    """The endpoint's path and form with the world's ids filled in, and the role it needs."""
    ids = {name: row.id for name, row in vars(world).items()}
    path, form, needed = {**MODEL_FORMS, **FORMS}[endpoint]
    return path.format(**ids), {name: value.format(**ids) for name, value in form.items()}, needed


# Endpoints under /admin that are not pages of their own or are open to anyone logged in (or not), and
# those whose every role is tested where they are: the users page (owners; tests/test_admin_users.py)
# and one's own two-factor login (tests/test_two_factor.py).
NOT_IN_THE_TABLES = {"admin.login_view", "admin.logout_view", "admin.static", "users.add_view", "users.role_view",
                     "users.reset_two_factor_view", "users.remove_view", "two_factor.index", "two_factor.verify_view"}


def admin_endpoints(app, method: str) -> set[str]:
    return {rule.endpoint for rule in app.url_map.iter_rules()
            if rule.rule.startswith("/admin") and method in rule.methods and not rule.endpoint.endswith(".static")}


def test_the_tables_below_cover_every_admin_form(app, world):
    """A form added to the admin without a row here is a role nobody chose for it."""
    covered = set(FORMS) | set(MODEL_FORMS) | NOT_IN_THE_TABLES
    assert admin_endpoints(app, "POST") - covered == set()


@pytest.mark.parametrize("role", ORDER, ids=str)
def test_each_role_opens_exactly_the_pages_its_role_allows(as_role, world, role):
    client = as_role(role)
    pages = get_pages(world)
    expected = {path: 200 if may(role, needed) else 403 for path, needed in pages.items()}
    assert {path: client.get(path).status_code for path in pages} == expected


def test_a_refused_page_names_the_role_it_needs(as_role, world):
    response = as_role(Role.AGENT).get("/admin/aiconfiguration/new/")
    assert response.status_code == 403
    assert "This needs the <strong>admin</strong> role" in response.get_data(as_text=True)


def test_a_visitor_not_logged_in_is_still_sent_to_the_login_page(client, world):
    response = client.get("/admin/aiconfiguration/new/")
    assert response.status_code == 302 and "/admin/login/" in response.location


def refused_below(as_role, path: str, form: dict, needed: Role) -> None:
    """Post the form as each role below `needed`: each is refused and nothing changes."""
    below = [role for role in ORDER if not may(role, needed)]
    clients = {role: as_role(role) for role in below}
    tokens = {role: csrf_token(client, "/admin/") for role, client in clients.items()}
    before = snapshot()
    for role, client in clients.items():
        assert client.post(path, data={"csrf_token": tokens[role], **form}).status_code == 403, role
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", sorted(FORMS))
def test_a_form_posted_by_a_role_below_its_need_is_refused_and_changes_nothing(as_role, world, endpoint):
    path, form, needed = form_for(world, endpoint)
    refused_below(as_role, path, form, needed)
    allowed = as_role(needed)
    response = allowed.post(path, data={"csrf_token": csrf_token(allowed, "/admin/"), **form})
    assert response.status_code in (200, 302), needed


@pytest.mark.parametrize("endpoint", sorted(MODEL_FORMS))
def test_flask_admins_own_forms_are_refused_below_admin(as_role, world, endpoint):
    refused_below(as_role, *form_for(world, endpoint))


def test_a_viewer_cannot_create_an_ai_configuration_by_typing_its_url(as_role, world):
    viewer = as_role(Role.VIEWER)
    token = csrf_token(viewer, "/admin/")
    assert viewer.get("/admin/aiconfiguration/new/").status_code == 403
    response = viewer.post("/admin/aiconfiguration/new/", data={
        "csrf_token": token, "name": "Sneaky", "provider": "openrouter", "model_name": "openai/gpt-4o",
        "max_tokens": "100", "temperature": "0.5"})
    assert response.status_code == 403
    assert [config.name for config in AIConfiguration.select()] == ["Main"]


def test_an_agent_takes_over_and_replies_but_cannot_delete_a_conversation(as_role, world):
    agent = as_role(Role.AGENT)
    token = csrf_token(agent, "/admin/")
    assert agent.post(f"/admin/conversation/takeover/{world.free.id}/", data={"csrf_token": token}).status_code == 302
    assert Conversation.get_by_id(world.free.id).paused_by == "agent"
    for path in ("/admin/conversation/delete/", "/admin/conversation/delete/confirmed/"):
        assert agent.post(path, data={"csrf_token": token, "id": world.free.id}).status_code == 403
    assert agent.post("/admin/conversation/action/", data={
        "csrf_token": token, "action": "delete", "rowid": world.free.id}).status_code == 403
    assert Conversation.get_or_none(Conversation.id == world.free.id) is not None


def test_list_pages_offer_only_what_the_role_may_do(as_role, world):
    viewer_page = as_role(Role.VIEWER).get("/admin/conversation/").get_data(as_text=True)
    admin_page = as_role(Role.ADMIN).get("/admin/conversation/").get_data(as_text=True)
    assert "/admin/conversation/delete/confirm/" not in viewer_page
    assert "/admin/conversation/delete/confirm/" in admin_page
    assert 'value="deactivate"' not in viewer_page and "toggle-phones" not in admin_page
    assert "/admin/cannedreply/new/" in as_role(Role.OWNER).get("/admin/cannedreply/").get_data(as_text=True)


def reveal(client):
    return client.post("/admin/conversation/reveal/", data={"csrf_token": csrf_token(client, "/admin/"),
                                                            "next": "/admin/conversation/"})


@pytest.mark.parametrize("role", [Role.VIEWER, Role.AGENT, Role.ADMIN], ids=str)
def test_only_an_owner_reveals_full_numbers(as_role, world, role):
    client = as_role(role)
    assert reveal(client).status_code == 403
    page = client.get("/admin/conversation/").get_data(as_text=True)
    assert ANN_MASKED in page and ANN_FULL not in page


def test_an_owner_reveals_and_masks_numbers_again(as_role, world):
    owner = as_role(Role.OWNER)
    assert ANN_FULL not in owner.get("/admin/conversation/").get_data(as_text=True)
    assert reveal(owner).status_code == 302
    assert ANN_FULL in owner.get("/admin/conversation/").get_data(as_text=True)
    assert ANN_FULL in owner.get(f"/admin/conversation/details/?id={world.free.id}").get_data(as_text=True)
    assert reveal(owner).status_code == 302
    assert ANN_FULL not in owner.get("/admin/conversation/").get_data(as_text=True)


def test_a_reveal_ends_when_the_owner_is_made_a_viewer(as_role, world):
    owner = as_role(Role.OWNER)
    reveal(owner)
    AdminUser.update(role=Role.VIEWER.value).where(AdminUser.username == "owner").execute()
    # A new role ends the session; logged in again, the viewer sees numbers masked.
    assert owner.get("/admin/conversation/").status_code == 302
    assert log_in(owner, "owner").status_code == 302
    page = owner.get("/admin/conversation/").get_data(as_text=True)
    assert ANN_MASKED in page and ANN_FULL not in page
    assert ANN_FULL not in owner.get(f"/admin/inbox/{world.free.id}/since/0.json").get_data(as_text=True)


def test_a_user_of_an_unknown_role_may_open_nothing(app, world):
    AdminUser.create(username="ghost", password_hash=password_hash(), role="intern")
    client = app.test_client()
    assert log_in(client, "ghost").status_code == 302
    assert client.get("/admin/conversation/").status_code == 403


def test_pages_offer_a_viewer_no_form_it_would_be_refused(as_role, world):
    """Forms are hidden from a role that may not post them (the server refuses them all the same)."""
    pages = (f"/admin/conversation/details/?id={world.free.id}", "/admin/inbox/", "/admin/problems/",
             "/admin/knowledge/", "/admin/spending/", "/admin/notices/")
    forms = ("/takeover/", "/note/", "/reset/", "/claim/", "/resolve/", "/retry/", "/sources/text/", "/spending/set/",
             "/delete/confirm/", "/follow-up/", "/problems/dismiss/", "/notices/read/")
    shown = {role: " ".join(as_role(role).get(page).get_data(as_text=True) for page in pages)
             for role in (Role.VIEWER, Role.OWNER)}
    assert [form for form in forms if form in shown[Role.VIEWER]] == []
    assert [form for form in forms if form not in shown[Role.OWNER]] == []
