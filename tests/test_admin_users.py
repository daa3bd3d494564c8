"""The Users page over HTTP: owners list, add, re-role, reset and remove users; nobody else may."""
from __future__ import annotations

import html

import pytest

from chatbot.models import AdminUser, AuditEvent, utcnow
from tests.conftest import csrf_token, log_in, password_hash

PAGE = "/admin/users/"
SECRET = "a quite secret passphrase"


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def post(client, path: str, data: dict | None = None, token_page: str = PAGE, **kwargs):
    """Post a form of the Users page as a browser does: with a CSRF token of this session."""
    return client.post(PAGE + path, data={"csrf_token": csrf_token(client, token_page), **(data or {})}, **kwargs)


def stored(username: str) -> AdminUser | None:
    return AdminUser.get_or_none(AdminUser.username == username)


def make(username: str, role: str, **fields) -> AdminUser:
    return AdminUser.create(username=username, password_hash=password_hash(), role=role, **fields)


def table_of_users() -> list[tuple]:
    return list(AdminUser.select(AdminUser.username, AdminUser.role, AdminUser.password_hash,
                                 AdminUser.totp_enabled_at)
                .order_by(AdminUser.username)
                .tuples())


# --- owners --------------------------------------------------------------------------------------

def test_the_page_lists_each_user_with_role_two_factor_and_last_login(operator):
    make("maria", "agent", totp_enabled_at=utcnow())

    page = text_of(operator.get(PAGE))

    assert 'id="users"' in page
    maria = page.split('id="user-2"')[1].split("</tr>")[0]
    assert '<option value="agent" selected>' in maria
    assert '<span class="user-2fa">on</span>' in maria and "Reset 2FA" in maria
    assert '<td class="text-nowrap user-last-login">never</td>' in maria
    ops = page.split('id="user-1"')[1].split("</tr>")[0]
    assert '<option value="owner" selected>' in ops and "you" in ops
    assert '<span class="user-2fa">off</span>' in ops
    assert utcnow().strftime("%Y-%m-%d") in ops
    assert 'href="/admin/users/"' in page  # in the menu, for owners


def test_an_owner_adds_a_user_who_can_then_log_in(operator, app):
    response = post(operator, "add/", {"username": " maria ", "password": SECRET, "password_again": SECRET,
                                       "role": "agent"}, follow_redirects=True)

    assert "Added 'maria' as agent." in text_of(response)
    assert stored("maria").role == "agent"
    event = AuditEvent.get(AuditEvent.action == "user_added")
    assert (event.actor, event.target, event.detail) == ("ops", "maria", "role=agent")
    assert not any(SECRET in str(column) for column in AuditEvent.select().tuples().get())
    assert SECRET not in text_of(response)
    assert log_in(app.test_client(), "maria", SECRET).status_code == 302


@pytest.mark.parametrize("form, complaint", [
    ({"username": "maria", "password": SECRET, "password_again": SECRET + "x", "role": "agent"},
     "the two passwords differ"),
    ({"username": "maria", "password": "short", "password_again": "short", "role": "agent"},
     "the password is too short"),
    ({"username": "maria", "password": SECRET, "password_again": SECRET, "role": "boss"}, "no role 'boss'"),
    ({"username": "ops", "password": SECRET, "password_again": SECRET, "role": "agent"},
     "a user named 'ops' exists already"),
])
def test_a_bad_addition_is_refused_with_the_reason(operator, form, complaint):
    before = table_of_users()

    response = post(operator, "add/", form, follow_redirects=True)

    assert f"Not done: {complaint}" in text_of(response)
    assert table_of_users() == before


def test_an_owner_changes_a_role_and_the_users_session_ends(operator, app):
    maria = make("maria", "agent")
    other = app.test_client()
    assert log_in(other, "maria").status_code == 302
    assert other.get("/admin/").status_code == 200

    response = post(operator, f"{maria.id}/role/", {"role": "admin"}, follow_redirects=True)

    assert "'maria' is now admin (was agent)" in text_of(response)
    assert stored("maria").role == "admin"
    assert AuditEvent.get(AuditEvent.action == "role_changed").detail == "agent -> admin"
    assert other.get("/admin/").status_code == 302  # to the login page


def test_an_owner_resets_two_factor(operator):
    maria = make("maria", "agent", totp_secret_encrypted="token", totp_enabled_at=utcnow(), totp_last_step=9,
                 recovery_codes=["hash"])

    response = post(operator, f"{maria.id}/reset-2fa/", follow_redirects=True)

    assert "Two-factor login of 'maria' is off" in text_of(response)
    user = stored("maria")
    assert (user.totp_secret_encrypted, user.totp_enabled_at, user.totp_last_step, user.recovery_codes) == (
        None, None, 0, [])
    assert AuditEvent.get(AuditEvent.action == "2fa_reset").actor == "ops"


def test_removal_takes_the_second_step(operator, app):
    maria = make("maria", "agent")
    other = app.test_client()
    assert log_in(other, "maria").status_code == 302

    first = post(operator, f"{maria.id}/remove/", follow_redirects=True)
    assert "Not done: confirm the removal of 'maria' first" in text_of(first)
    assert stored("maria") is not None

    second = post(operator, f"{maria.id}/remove/", {"confirm": "yes"}, follow_redirects=True)
    assert "Removed 'maria'" in text_of(second)
    assert stored("maria") is None
    assert AuditEvent.get(AuditEvent.action == "user_removed").actor == "ops"
    assert other.get("/admin/access/").status_code == 302


def test_a_post_without_the_csrf_token_changes_nothing(operator):
    maria = make("maria", "agent")

    response = operator.post(PAGE + f"{maria.id}/role/", data={"role": "owner"}, follow_redirects=True)

    assert "The request expired" in text_of(response)
    assert stored("maria").role == "agent"


# --- the last owner ------------------------------------------------------------------------------

def test_the_last_owner_can_neither_demote_nor_remove_themselves(operator, admin_user):
    make("maria", "admin")

    demoted = post(operator, f"{admin_user.id}/role/", {"role": "admin"}, follow_redirects=True)
    removed = post(operator, f"{admin_user.id}/remove/", {"confirm": "yes"}, follow_redirects=True)

    for response in (demoted, removed):
        assert "'ops' is the last owner: make another user an owner first" in text_of(response)
    assert stored("ops").role == "owner"
    assert operator.get(PAGE).status_code == 200
    assert not AuditEvent.select().where(AuditEvent.action.in_(["role_changed", "user_removed"])).exists()


def test_an_owner_who_is_not_the_last_may_step_down_and_is_logged_out(operator, admin_user):
    make("root", "owner")

    response = post(operator, f"{admin_user.id}/role/", {"role": "admin"})

    assert response.status_code == 302 and "/admin/login/" in response.headers["Location"]
    assert stored("ops").role == "admin"
    assert operator.get(PAGE).status_code == 302


# --- everyone else -------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["viewer", "agent", "admin"])
def test_a_non_owner_gets_403_for_the_page_and_every_post_and_nothing_changes(client, services, role):
    ops = make("ops", "owner", totp_secret_encrypted="token", totp_enabled_at=utcnow())
    make("maria", role)
    assert log_in(client, "maria").status_code == 302
    before = table_of_users()

    assert client.get(PAGE).status_code == 403
    posts = [("add/", {"username": "mallory", "password": SECRET, "password_again": SECRET, "role": "owner"}),
             (f"{ops.id}/role/", {"role": "viewer"}),
             (f"{ops.id}/reset-2fa/", {}),
             (f"{ops.id}/remove/", {"confirm": "yes"})]
    for path, form in posts:
        assert post(client, path, form, token_page="/admin/access/").status_code == 403, path

    assert table_of_users() == before
    assert not AuditEvent.select().where(AuditEvent.action != "login").exists()  # their own login only
    assert 'href="/admin/users/"' not in text_of(client.get("/admin/access/"))


def test_someone_not_logged_in_is_sent_to_the_login_page(client, admin_user):
    response = client.get(PAGE)
    assert response.status_code == 302
    assert "/admin/login/" in response.headers["Location"]
    assert client.post(PAGE + f"{admin_user.id}/remove/", data={"confirm": "yes"}).status_code == 302
    assert stored("ops") is not None
