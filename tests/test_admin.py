"""The admin panel over HTTP: access control, CSRF, keys, activation, validation, views, commands."""
from __future__ import annotations

import re

import pytest
from cryptography.fernet import Fernet

from chatbot import auth
from chatbot.crypto import FieldCipher
from chatbot.models import AdminUser, AIConfiguration, Conversation, Message, Tool, WebhookLog, db
from tests.conftest import PASSWORD, csrf_token, inbound_form, log_in
from tests.fakes import FakeOpenRouter
from tests.support import conversation_for

ADMIN_PAGES = [
    "/admin/",
    "/admin/aiconfiguration/",
    "/admin/aiconfiguration/new/",
    "/admin/conversation/",
    "/admin/message/",
    "/admin/optout/",
    "/admin/access/",
    "/admin/spending/",
    "/admin/playground/",
    "/admin/webhooklog/",
]


@pytest.mark.parametrize("path", ADMIN_PAGES)
def test_every_admin_page_redirects_anonymous_visitors_to_login(client, services, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login/?next=")


def test_anonymous_post_creates_nothing(client, services):
    response = client.post("/admin/aiconfiguration/new/", data={"name": "x", "model_name": "openai/gpt-4o"})
    assert response.status_code == 302
    assert AIConfiguration.select().count() == 0


@pytest.mark.postgres
def test_login_then_every_page_opens(operator):
    for path in ADMIN_PAGES:
        assert operator.get(path).status_code == 200, path


def test_wrong_password_is_refused(client, admin_user):
    response = log_in(client, password="wrong password")
    assert response.status_code == 401
    assert "Wrong username or password." in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_session_cookie_is_secure_httponly_and_samesite_lax(client, admin_user):
    cookie = log_in(client).headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie


def test_login_without_csrf_token_is_rejected(client, admin_user):
    response = client.post("/admin/login/", data={"username": "ops", "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 302


def test_form_post_without_csrf_token_changes_nothing(operator):
    response = operator.post("/admin/aiconfiguration/new/", data={
        "name": "main", "provider": "openrouter", "model_name": "openai/gpt-4o-mini",
        "max_tokens": "500", "temperature": "0.7",
    })
    assert response.status_code == 200  # the form again, not a redirect to the list
    assert 'name="csrf_token"' in response.get_data(as_text=True)
    assert AIConfiguration.select().count() == 0


def test_failed_logins_are_throttled_per_username_and_address(client, admin_user):
    for _ in range(5):
        assert log_in(client, password="nope nope").status_code == 401
    throttled = log_in(client)
    assert throttled.status_code == 429
    assert "Too many failed attempts. Try again in 1 minute(s)." in throttled.get_data(as_text=True)


def test_logout_ends_the_session(operator):
    token = csrf_token(operator, "/admin/")
    assert operator.post("/admin/logout/", data={"csrf_token": token}).status_code == 302
    assert operator.get("/admin/").status_code == 302


def test_password_reset_ends_existing_sessions(operator):
    auth.create_or_reset_admin("ops", "a brand new password")
    assert operator.get("/admin/").status_code == 302


def test_login_redirect_stays_on_the_admin(client, admin_user):
    token = csrf_token(client, "/admin/login/")
    response = client.post("/admin/login/?next=https://evil.example/", data={
        "username": "ops", "password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"] == "/admin/"


def create_configuration(client, **fields):
    data = {"name": "main", "provider": "openrouter", "model_name": "anthropic/claude-3.5-sonnet",
            "max_tokens": "400", "temperature": "0.5", "system_prompt": "Be brief.", "api_key": "",
            **fields}
    data["csrf_token"] = csrf_token(client, "/admin/aiconfiguration/new/")
    if data.get("is_active") is False:
        data.pop("is_active")
    return client.post("/admin/aiconfiguration/new/", data=data, follow_redirects=True)


@pytest.mark.postgres
def test_api_key_is_encrypted_at_rest_and_only_shown_masked(operator, services):
    response = create_configuration(operator, api_key="sk-or-v1-0123456789abcdefa1b2")
    assert response.status_code == 200
    raw = db.database.execute_sql("SELECT api_key_encrypted FROM ai_configuration").fetchone()[0]
    assert "sk-or-v1-0123456789abcdef" not in raw
    listing = operator.get("/admin/aiconfiguration/").get_data(as_text=True)
    assert "sk-or-…a1b2" in listing
    assert "0123456789abcdef" not in listing
    config = AIConfiguration.get()
    edit_page = operator.get(f"/admin/aiconfiguration/edit/?id={config.id}").get_data(as_text=True)
    assert "0123456789abcdef" not in edit_page and raw not in edit_page


@pytest.mark.postgres
def test_blank_key_on_edit_keeps_the_stored_key(operator, services):
    create_configuration(operator, api_key="sk-or-v1-keepthisone9999")
    config = AIConfiguration.get()
    token = csrf_token(operator, f"/admin/aiconfiguration/edit/?id={config.id}")
    operator.post(f"/admin/aiconfiguration/edit/?id={config.id}", data={
        "name": "main", "provider": "openrouter", "model_name": "openai/gpt-4o", "max_tokens": "300",
        "temperature": "1", "system_prompt": "", "api_key": "", "csrf_token": token,
    }, follow_redirects=True)
    config = AIConfiguration.get()
    assert config.model_name == "openai/gpt-4o"
    assert config.api_key(services.cipher) == "sk-or-v1-keepthisone9999"


KEPT = "sk-or-v1-keepthisone9999"


@pytest.mark.parametrize("api_key, stored", [(None, KEPT), ("", KEPT), ("  ", KEPT),
                                            ("sk-or-v1-replacement7777", "sk-or-v1-replacement7777")],
                         ids=["absent", "empty", "blank", "filled"])
def test_editing_a_configuration_works_with_the_key_field_absent_empty_or_filled(operator, services, api_key,
                                                                                 stored):
    create_configuration(operator, api_key=KEPT)
    config = AIConfiguration.get()
    edit = f"/admin/aiconfiguration/edit/?id={config.id}"
    form = {"name": "main", "provider": "openrouter", "model_name": "openai/gpt-4o", "max_tokens": "300",
            "temperature": "1", "system_prompt": "", "csrf_token": csrf_token(operator, edit)}
    if api_key is not None:
        form["api_key"] = api_key
    assert operator.post(edit, data=form).status_code == 302  # saved, not a 500
    config = AIConfiguration.get()
    assert config.model_name == "openai/gpt-4o" and config.api_key(services.cipher) == stored


@pytest.mark.postgres
def test_activating_one_configuration_deactivates_the_others(operator):
    create_configuration(operator, name="first", is_active="y")
    create_configuration(operator, name="second", is_active="y")
    active = [c.name for c in AIConfiguration.select().where(AIConfiguration.is_active == True)]  # noqa: E712
    assert active == ["second"]
    first = AIConfiguration.get(AIConfiguration.name == "first")
    token = csrf_token(operator, "/admin/aiconfiguration/")
    operator.post("/admin/aiconfiguration/action/", data={
        "action": "activate", "rowid": [str(first.id)], "csrf_token": token})
    assert AIConfiguration.active().name == "first"
    assert AIConfiguration.select().where(AIConfiguration.is_active == True).count() == 1  # noqa: E712


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"temperature": "2.5"}, "Temperature must be a number from 0 to 2."),
        ({"max_tokens": "0"}, "Max tokens must be a whole number from 1 to 1,000,000."),
        ({"max_tokens": "9" * 30}, "Max tokens must be a whole number from 1 to 1,000,000."),
        ({"model_name": "claude"}, "Model must be an OpenRouter slug such as openai/gpt-4o-mini."),
    ],
)
def test_invalid_fields_show_clear_messages(operator, fields, message):
    page = create_configuration(operator, **fields).get_data(as_text=True)
    assert message in page
    assert AIConfiguration.select().count() == 0


def test_test_connection_shows_the_result_in_the_page(operator, fake_openrouter):
    create_configuration(operator, api_key="sk-or-v1-testconnection1")
    config = AIConfiguration.get()
    token = csrf_token(operator, "/admin/aiconfiguration/")
    ok = operator.post(f"/admin/aiconfiguration/test/{config.id}/", data={"csrf_token": token},
                       follow_redirects=True).get_data(as_text=True)
    assert "Connection OK for main" in ok
    assert fake_openrouter.requests[-1].headers["Authorization"] == "Bearer sk-or-v1-testconnection1"
    fake_openrouter.then(FakeOpenRouter.error(401, "No auth credentials found"))
    failed = operator.post(f"/admin/aiconfiguration/test/{config.id}/", data={"csrf_token": token},
                           follow_redirects=True).get_data(as_text=True)
    assert "Connection failed for main" in failed and "No auth credentials found" in failed


@pytest.mark.postgres
def test_processor_uses_the_newly_activated_configuration_without_restart(operator, post_webhook, run_jobs,
                                                                          fake_openrouter):
    create_configuration(operator, name="claude", model_name="anthropic/claude-3.5-sonnet",
                         api_key="sk-or-v1-fromthepanel", system_prompt="Panel prompt.", is_active="y")
    post_webhook.message("Hello")
    run_jobs()
    request = fake_openrouter.completions[-1]
    assert request.body["model"] == "anthropic/claude-3.5-sonnet"
    assert request.body["messages"][0] == {"role": "system", "content": "Panel prompt."}
    assert request.headers["Authorization"] == "Bearer sk-or-v1-fromthepanel"


@pytest.fixture
def conversation(services):
    conversation = conversation_for("whatsapp:+15550001234", "Ada")
    question = Message.create(conversation=conversation, role="user", status="answered",
                              content="<script>alert(1)</script>", twilio_sid="SM" + "1" * 32)
    Message.create(conversation=conversation, role="assistant", status="sent", content="Plain answer",
                   reply_to=question, model="openai/gpt-4o-mini", total_tokens=42, latency_ms=850.0)
    return conversation


def test_conversations_show_masked_numbers_with_a_toggle(operator, conversation):
    listing = operator.get("/admin/conversation/").get_data(as_text=True)
    assert "whatsapp:+1555•••1234" in listing and "+15550001234" not in listing
    token = csrf_token(operator, "/admin/conversation/")
    operator.post("/admin/conversation/reveal/", data={"csrf_token": token, "next": "/admin/conversation/"})
    assert "whatsapp:+15550001234" in operator.get("/admin/conversation/").get_data(as_text=True)


@pytest.mark.postgres
def test_conversations_are_searchable_by_phone_and_filterable(operator, conversation):
    conversation_for("whatsapp:+447700900123")
    found = operator.get("/admin/conversation/?search=447700").get_data(as_text=True)
    assert "whatsapp:+4477•••0123" in found and "1555•••1234" not in found


@pytest.mark.postgres
def test_transcript_escapes_what_users_typed(operator, conversation):
    page = operator.get(f"/admin/conversation/details/?id={conversation.id}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)</script>" not in page
    assert "Plain answer" in page and "42 tokens" in page and "openai/gpt-4o-mini" in page


@pytest.mark.postgres
def test_message_list_escapes_content_and_is_read_only(operator, conversation):
    page = operator.get("/admin/message/").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)</script>" not in page
    assert operator.get("/admin/message/new/").status_code in (302, 403, 404)


@pytest.mark.postgres
def test_reset_context_deactivate_and_delete(operator, conversation, services):
    services.context.add_message(conversation.id, "user", "hi", position=1.0, message_id=1)
    token = csrf_token(operator, "/admin/conversation/")
    operator.post("/admin/conversation/action/", data={
        "action": "reset_context", "rowid": [str(conversation.id)], "csrf_token": token})
    assert not services.redis.exists(services.context.key(conversation.id))
    operator.post("/admin/conversation/action/", data={
        "action": "deactivate", "rowid": [str(conversation.id)], "csrf_token": token})
    assert Conversation.get_by_id(conversation.id).is_active is False
    operator.post("/admin/conversation/delete/", data={"id": str(conversation.id), "csrf_token": token})
    assert Conversation.select().count() == 0 and Message.select().count() == 0


@pytest.fixture
def adas_conversation(post_webhook, services):
    """Ada's conversation, beside Bob's: both came through the webhook; Ada's has a context window."""
    post_webhook.message("Ada's first", sender="whatsapp:+15550001111")
    post_webhook.message("Bob's first", sender="whatsapp:+15550002222")
    ada = Conversation.get(Conversation.user_phone == "whatsapp:+15550001111")
    services.context.add_message(ada.id, "user", "Ada's first", position=1.0, message_id=1)
    return ada


@pytest.mark.postgres
def test_delete_purges_the_messages_context_and_webhook_log_entries_of_that_conversation_only(
        operator, adas_conversation, services):
    token = csrf_token(operator, "/admin/conversation/")

    operator.post("/admin/conversation/delete/", data={"id": str(adas_conversation.id), "csrf_token": token})

    assert [c.user_phone for c in Conversation.select()] == ["whatsapp:+15550002222"]
    assert [m.content for m in Message.select()] == ["Bob's first"]
    assert WebhookLog.select().count() == 1
    assert "15550001111" not in "".join(log.body for log in WebhookLog.select())
    assert not services.redis.exists(services.context.key(adas_conversation.id))


@pytest.mark.postgres
def test_bulk_delete_purges_the_webhook_log_entries_too(operator, adas_conversation, services):
    token = csrf_token(operator, "/admin/conversation/")
    every_id = [str(conversation.id) for conversation in Conversation.select()]

    confirmation = operator.post("/admin/conversation/action/", data={
        "action": "delete", "rowid": every_id, "csrf_token": token}, follow_redirects=True)
    assert "Delete 2 conversations?" in confirmation.get_data(as_text=True)
    assert Conversation.select().count() == 2  # nothing goes before the operator confirms
    page = operator.post("/admin/conversation/delete/confirmed/", data={
        "id": every_id, "csrf_token": token}, follow_redirects=True)

    assert "Deleted 2 conversation(s)" in page.get_data(as_text=True)
    assert Conversation.select().count() == Message.select().count() == WebhookLog.select().count() == 0
    assert not services.redis.exists(services.context.key(adas_conversation.id))


def test_webhook_log_detail_shows_redacted_headers_and_body(operator, post_webhook):
    post_webhook.message("audit me")
    log = WebhookLog.get()
    page = operator.get(f"/admin/webhooklog/details/?id={log.id}").get_data(as_text=True)
    assert "[redacted]" in page and "<td>audit me</td>" in page


@pytest.mark.postgres
def test_webhook_log_filters_by_status_and_signature(operator, post_webhook):
    accepted = post_webhook.message("fine")
    post_webhook(inbound_form("forged"), signature="forged")
    by_status = operator.get("/admin/webhooklog/?flt0_status_equals=403").get_data(as_text=True)
    assert "does not match" in by_status and accepted["MessageSid"] not in by_status
    by_verdict = operator.get("/admin/webhooklog/?flt0_signature_valid_equals=1").get_data(as_text=True)
    assert accepted["MessageSid"] in by_verdict and "does not match" not in by_verdict


@pytest.mark.postgres
def test_dashboard_shows_figures_from_the_database(operator, conversation):
    page = operator.get("/admin/").get_data(as_text=True)
    assert re.search(r'id="inbound"[^>]*>\s*1\s*<', page)
    assert re.search(r'id="answered"[^>]*>\s*1\s*<', page)
    assert re.search(r'id="failed"[^>]*>\s*0\s*<', page)
    assert re.search(r'id="active-conversations"[^>]*>\s*1\s*<', page)
    # The answer's AI call took 850 ms; when Twilio took it is not recorded, so no end-to-end time.
    assert re.search(r'id="reply-p50"[^>]*>\s*—\s*<', page) and "AI 850 ms" in page


def test_create_admin_command_creates_then_resets(app, services):
    runner = app.test_cli_runner()
    created = runner.invoke(args=["create-admin", "--username", "ops", "--password-stdin"], input="first password\n")
    assert created.exit_code == 0 and "Created admin user 'ops'" in created.output
    reset = runner.invoke(args=["create-admin", "--username", "ops"], input="second password\nsecond password\n")
    assert reset.exit_code == 0 and "Reset the password of admin user 'ops'" in reset.output
    user = AdminUser.get()
    assert user.check_password("second password") and not user.check_password("first password")
    assert "second password" not in user.password_hash
    short = runner.invoke(args=["create-admin", "--username", "ops", "--password-stdin"], input="short\n")
    assert short.exit_code == 2 and "use at least 8 characters" in short.output


@pytest.mark.postgres
def test_rotate_key_re_encrypts_every_stored_key(app, services, config):
    from dataclasses import replace

    from chatbot import create_app

    old_cipher = services.cipher
    stored = AIConfiguration(name="main", model_name="openai/gpt-4o-mini")
    stored.set_api_key("sk-or-v1-rotate-me", old_cipher)
    stored.save()
    Tool.create(name="orders", description="d", url_template="https://api.example.com/o",
                auth="bearer", secret_encrypted=old_cipher.encrypt("tool-token"))
    AdminUser.create(username="ops", password_hash="x", totp_secret_encrypted=old_cipher.encrypt("JBSWY3DPEHPK3PXP"))
    new_key = Fernet.generate_key().decode()
    keys = f"{new_key},{config.field_encryption_key}"
    rotated_services = replace(services, config=config.replace(field_encryption_key=keys), cipher=FieldCipher(keys))
    result = create_app(services=rotated_services).test_cli_runner().invoke(args=["rotate-key"])
    assert result.exit_code == 0
    assert "1 API key(s), 1 tool secret(s), 1 two-factor secret(s)" in result.output
    newest_only = FieldCipher(new_key)
    assert AIConfiguration.get().api_key(newest_only) == "sk-or-v1-rotate-me"
    assert newest_only.decrypt(Tool.get().secret_encrypted) == "tool-token"
    assert newest_only.decrypt(AdminUser.get().totp_secret_encrypted) == "JBSWY3DPEHPK3PXP"


# --- numbers out of the database's range --------------------------------------------------------

HUGE = "9" * 30


@pytest.mark.postgres
@pytest.mark.parametrize("path", [
    f"/admin/message/details/?id={HUGE}", f"/admin/aiconfiguration/edit/?id={HUGE}",
    f"/admin/whatsappnumber/edit/?id={HUGE}", f"/admin/webhooklog/details/?id={HUGE}",
    f"/admin/message/?page={HUGE}", "/admin/conversation/?page=-1", f"/admin/webhooklog/?flt0_status_equals={HUGE}",
])
def test_a_number_out_of_range_in_an_admin_url_is_ignored_not_a_500(operator, path, caplog):
    response = operator.get(path)
    assert response.status_code in (200, 302)
    assert "out of range" in caplog.text


@pytest.mark.postgres
def test_a_number_out_of_range_in_an_admin_form_is_ignored_not_a_500(operator):
    create_configuration(operator, name="first")
    token = csrf_token(operator, "/admin/aiconfiguration/")
    assert operator.post(f"/admin/problems/retry/{HUGE}/", data={"csrf_token": token}).status_code == 404
    assert operator.post(f"/admin/access/delete/{HUGE}/", data={"csrf_token": token}).status_code == 404
    for choice in (HUGE, "²"):
        sent = operator.post("/admin/playground/send/", data={"csrf_token": token, "configuration": choice,
                                                               "text": "hi"}, follow_redirects=True)
        assert sent.status_code == 200 and "That AI configuration no longer exists." in sent.get_data(as_text=True)
    activated = operator.post("/admin/aiconfiguration/action/", data={"csrf_token": token, "action": "activate",
                                                                      "rowid": HUGE}, follow_redirects=True)
    assert activated.status_code == 200 and "Select exactly one configuration" in activated.get_data(as_text=True)
    assert AIConfiguration.active() is None
