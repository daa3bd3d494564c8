"""The admin's audit rows: one per change made in the panel, never a form value, and the page to read them."""
from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest

from chatbot.models import AdminUser, AuditEvent, Conversation, KnowledgeSource, utcnow
from chatbot.roles import Role
from tests.conftest import csrf_token, log_in, password_hash
from tests.support import conversation_for
from tests.test_admin_roles import ANN, signed_in_as

SECRET = "sk-or-v1-0123456789abcdef-do-not-store"
AUDIT = "/admin/audit/"


def every_value_stored() -> str:
    """Every column of every audit row, as one text to search."""
    return "\n".join(str(value) for row in AuditEvent.select().tuples() for value in row)


def post(client, path: str, form: dict | None = None):
    return client.post(path, data={"csrf_token": csrf_token(client, "/admin/"), **(form or {})})


@pytest.fixture
def admin(app):
    return signed_in_as(app, Role.ADMIN)


def test_adding_a_knowledge_text_writes_one_row_without_the_text(admin):
    before = AuditEvent.select().count()
    response = post(admin, "/admin/knowledge/sources/text/", {"title": "Keys", "text": f"The key is {SECRET}"})
    assert response.status_code == 302 and KnowledgeSource.select().count() == 1
    rows = list(AuditEvent.select().offset(before))
    assert [(row.actor, row.action, row.target, row.address) for row in rows] == [
        ("admin", "POST knowledge.add_text_view", "/admin/knowledge/sources/text/", "127.0.0.1")]
    assert SECRET not in every_value_stored() and "The key is" not in every_value_stored()


def test_an_ai_configuration_saved_is_recorded_without_its_api_key(admin):
    response = post(admin, "/admin/aiconfiguration/new/", {
        "name": "Main", "provider": "openrouter", "model_name": "openai/gpt-4o-mini", "max_tokens": "500",
        "temperature": "0.7", "api_key": SECRET, "system_prompt": "Secret prompt words"})
    assert response.status_code == 302
    row = AuditEvent.get(AuditEvent.action == "POST aiconfiguration.create_view")
    assert (row.actor, row.target) == ("admin", "/admin/aiconfiguration/new/")
    assert SECRET not in every_value_stored() and "Secret prompt words" not in every_value_stored()


def test_a_takeover_names_the_agent_and_the_conversation(app):
    conversation = conversation_for(ANN, "Ann")
    agent = signed_in_as(app, Role.AGENT)
    assert post(agent, f"/admin/conversation/takeover/{conversation.id}/").status_code == 302
    assert Conversation.get_by_id(conversation.id).paused_by == "agent"
    row = AuditEvent.get(AuditEvent.action == "POST conversation.take_over_view")
    assert (row.actor, row.target) == ("agent", f"/admin/conversation/takeover/{conversation.id}/")


def test_a_reveal_is_one_row_of_its_own(app):
    owner = signed_in_as(app, Role.OWNER)
    before = AuditEvent.select().count()
    assert post(owner, "/admin/conversation/reveal/", {"next": "/admin/conversation/"}).status_code == 302
    assert post(owner, "/admin/conversation/reveal/", {"next": "/admin/conversation/"}).status_code == 302
    rows = list(AuditEvent.select().order_by(AuditEvent.id).offset(before))
    assert [(row.actor, row.action) for row in rows] == [("owner", "reveal_numbers"), ("owner", "mask_numbers")]


def test_pages_read_refused_forms_and_logins_write_no_row_of_ours(app, admin):
    viewer = signed_in_as(app, Role.VIEWER)
    admin.get("/admin/knowledge/")
    assert post(viewer, "/admin/knowledge/sources/text/", {"text": "sneaky", "title": "x"}).status_code == 403
    assert post(viewer, "/admin/logout/").status_code == 302
    assert not [row.action for row in AuditEvent.select()
                if row.action.startswith(("GET", "POST knowledge", "POST admin."))]


def test_the_address_is_the_clients_own(admin):
    post(admin, "/admin/spending/set/", {"key": "budget_monthly", "value": "5"})
    admin.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    post(admin, "/admin/spending/set/", {"key": "budget_monthly", "value": "6"})
    rows = AuditEvent.select().where(AuditEvent.action == "POST spending.set_view").order_by(AuditEvent.id)
    assert [row.address for row in rows] == ["127.0.0.1", "203.0.113.7"]


def listed_actions(page: str) -> list[str]:
    return re.findall(r'<td class="audit-action" data-label="Action">([^<]*)</td>', page)


@pytest.fixture
def history(services):
    """Rows by two people over three days (and a CLI one), oldest first."""
    now = utcnow()
    rows = [("ann", "POST knowledge.add_text_view", 3), ("bob", "POST conversation.take_over_view", 2),
            ("ann", "POST knowledge.delete_view", 1), ("", "user_added", 0)]
    for actor, action, days_ago in rows:
        AuditEvent.create(actor=actor, action=action, at=now - timedelta(days=days_ago), address="10.0.0.1",
                          target="/admin/x/")
    return now


def test_the_audit_page_lists_newest_first_and_filters(admin, history):
    changes = [action for action in listed_actions(admin.get(AUDIT).get_data(as_text=True)) if action != "login"]
    assert changes[:4] == [
        "user_added", "POST knowledge.delete_view", "POST conversation.take_over_view", "POST knowledge.add_text_view"]
    assert listed_actions(admin.get(AUDIT + "?actor=ann").get_data(as_text=True)) == [
        "POST knowledge.delete_view", "POST knowledge.add_text_view"]
    assert listed_actions(admin.get(AUDIT + "?action=POST+knowledge").get_data(as_text=True)) == [
        "POST knowledge.delete_view", "POST knowledge.add_text_view"]
    day = (history - timedelta(days=2)).date().isoformat()
    assert listed_actions(admin.get(f"{AUDIT}?since={day}&until={day}").get_data(as_text=True)) == [
        "POST conversation.take_over_view"]


def test_the_date_range_is_in_the_admin_timezone(app_with, services):
    app = app_with(admin_timezone="Pacific/Kiritimati")  # UTC+14: its day starts 14 hours before UTC's
    client = signed_in_as(app, Role.ADMIN)
    AuditEvent.create(actor="ann", action="late", at=datetime(2026, 3, 1, 12, 0))  # 2 March, 02:00 there
    page = client.get(f"{AUDIT}?since=2026-03-02&until=2026-03-02").get_data(as_text=True)
    assert listed_actions(page) == ["late"]
    assert "2026-03-02 02:00:00" in page and "Pacific/Kiritimati" in page
    assert listed_actions(client.get(f"{AUDIT}?since=2026-03-01&until=2026-03-01").get_data(as_text=True)) == []


def test_the_audit_page_shows_fifty_a_page(admin, services):
    for number in range(60):
        AuditEvent.create(actor="ann", action=f"action {number:02d}", at=utcnow() - timedelta(minutes=number))
    first = listed_actions(admin.get(AUDIT).get_data(as_text=True))
    second = listed_actions(admin.get(AUDIT + "?page=2").get_data(as_text=True))
    assert (len(first), first[0]) == (50, "action 00")
    assert "action 59" in second and "action 00" not in second


def test_the_audit_page_never_shows_a_full_number(admin, services):
    AuditEvent.create(actor="ann", action="opt_out_removed", target="whatsapp:+15550001111")
    page = admin.get(AUDIT).get_data(as_text=True)
    assert "+15550001111" not in page and "+1555•••1111" in page


@pytest.mark.parametrize("role", [Role.VIEWER, Role.AGENT])
def test_the_audit_page_is_for_admins(app, history, role):
    client = signed_in_as(app, role)
    response = client.get(AUDIT)
    assert response.status_code == 403 and "POST knowledge" not in response.get_data(as_text=True)


def test_a_user_before_roles_is_an_owner_who_reads_the_audit_log(client, services, history):
    AdminUser.create(username="ops", password_hash=password_hash())
    assert log_in(client).status_code == 302
    assert client.get(AUDIT).status_code == 200
