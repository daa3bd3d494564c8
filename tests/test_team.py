"""The team, end to end: a viewer added from the CLI, made to enrol a second factor by REQUIRE_2FA,
logging in with codes, kept from changing anything, and listed by `flask users list`."""
from __future__ import annotations

import pytest

from chatbot.models import AdminUser, AIConfiguration, AuditEvent
from tests.conftest import csrf_token
from tests.test_two_factor import ENROL, STEP, VERIFY, code_at, post_code, shown_secret, text
from tests.test_two_factor import clock as clock

VIEWER_PASSWORD = "viewer one password"


@pytest.fixture
def app(app_with):
    return app_with(require_2fa=True)


def password_step(client, address: str = "203.0.113.9"):
    token = csrf_token(client, "/admin/login/")
    return client.post("/admin/login/", environ_base={"REMOTE_ADDR": address},
                       data={"username": "viewer1", "password": VIEWER_PASSWORD, "csrf_token": token})


def test_a_viewer_from_the_cli_enrols_logs_in_with_codes_and_changes_nothing(app, cli, clock):
    added = cli("users", "add", "viewer1", "--role", "viewer", "--password-stdin", input=VIEWER_PASSWORD + "\n")
    assert added.exit_code == 0, added.output
    client = app.test_client()

    # REQUIRE_2FA: the first login leads to enrolment, and nothing else opens until it is done.
    first = password_step(client)
    assert first.status_code == 302
    assert client.get("/admin/").status_code == 302
    secret = shown_secret(text(client.get(ENROL)))
    assert len(secret) == 32
    assert post_code(client, ENROL, code_at(secret)).status_code == 200
    assert client.get("/admin/").status_code == 200
    client.get("/admin/logout/")

    # The next login asks for a code: a wrong one is refused, the right one lets in.
    clock.tick(STEP)
    assert password_step(client).headers["Location"].startswith(VERIFY)
    assert post_code(client, VERIFY, code_at(secret, 3)).status_code in (400, 401)
    assert client.get("/admin/").status_code == 302
    assert post_code(client, VERIFY, code_at(secret)).status_code == 302
    assert client.get("/admin/").status_code == 200

    # A viewer sees, and changes nothing: the form is refused, and so is a POST to it.
    assert client.get("/admin/aiconfiguration/new/").status_code == 403
    token = csrf_token(client, "/admin/")
    refused = client.post("/admin/aiconfiguration/new/", data={
        "name": "sneaky", "provider": "openrouter", "model_name": "openai/gpt-4o-mini", "max_tokens": "100",
        "temperature": "0.5", "system_prompt": "x", "csrf_token": token})
    assert refused.status_code == 403 and AIConfiguration.select().count() == 0

    listed = cli("users", "list").output
    assert any(line.split()[:2] == ["viewer1", "viewer"] and "on" in line.split() for line in listed.splitlines())
    assert AdminUser.get(AdminUser.username == "viewer1").has_two_factor
    actions = [event.action for event in AuditEvent.select().where(
        AuditEvent.actor.in_(["viewer1", "cli"]) | (AuditEvent.target == "viewer1")).order_by(AuditEvent.id)]
    assert actions[:2] == ["user_added", "login"] and "2fa_enabled" in actions and "login_failed" in actions
