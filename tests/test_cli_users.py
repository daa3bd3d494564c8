"""flask users: operators added, listed, given roles, removed and their two-factor login reset from a shell."""
from __future__ import annotations

import pytest

from chatbot.models import AdminUser, AuditEvent, utcnow
from tests.conftest import PASSWORD, password_hash

SECRET = "a quite secret passphrase"


def stored(username: str) -> AdminUser | None:
    return AdminUser.get_or_none(AdminUser.username == username)


def make(username: str, role: str) -> AdminUser:
    return AdminUser.create(username=username, password_hash=password_hash(), role=role)


def audit_rows() -> list[tuple]:
    return list(AuditEvent.select(AuditEvent.action, AuditEvent.actor, AuditEvent.target, AuditEvent.address)
                .order_by(AuditEvent.id)
                .tuples())


# --- add and list --------------------------------------------------------------------------------

def test_added_user_logs_in_with_the_password_and_is_listed(cli, services):
    result = cli("users", "add", "maria", "--role", "agent", "--password-stdin", input=f"{SECRET}\nignored\n")

    assert result.exit_code == 0, result.output
    assert "Added 'maria' as agent." in result.output
    user = stored("maria")
    assert user.role == "agent" and user.check_password(SECRET)
    header, line = cli("users", "list").output.splitlines()
    assert header.split() == ["USERNAME", "ROLE", "2FA", "LAST", "LOGIN"]
    assert line.split() == ["maria", "agent", "off", "never"]


def test_the_prompt_asks_twice_and_hides_the_password(cli, services):
    result = cli("users", "add", "maria", "--role", "viewer", input=f"{SECRET}\n{SECRET}\n")

    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert stored("maria").check_password(SECRET)


def test_list_shows_two_factor_and_the_last_login(cli, services):
    AdminUser.create(username="ops", password_hash=password_hash(), role="owner", totp_enabled_at=utcnow(),
                     last_login_at=utcnow().replace(year=2030, month=1, day=2, hour=3, minute=4))
    make("bob", "viewer")

    lines = cli("users", "list").output.splitlines()

    assert [line.split() for line in lines[1:]] == [["bob", "viewer", "off", "never"],
                                                  ["ops", "owner", "on", "2030-01-02", "03:04", "UTC"]]


def test_list_of_nobody_says_how_to_add_one(cli, services):
    result = cli("users", "list")
    assert result.exit_code == 0
    assert "flask users add USERNAME --role owner" in result.output


@pytest.mark.parametrize("arguments, stdin, complaint", [
    (["maria", "--role", "boss"], SECRET, "no role 'boss': choose one of viewer, agent, admin, owner"),
    (["maria", "--role", "agent"], "short", "the password is too short: use at least 8 characters"),
    (["maria", "--role", "agent"], "x" * 1025, "the password is longer than 1024 characters"),
    (["  ", "--role", "agent"], SECRET, "the username is empty"),
    (["m" * 81, "--role", "agent"], SECRET, "the username is longer than 80 characters"),
])
def test_add_with_a_bad_value_fails_in_one_line_and_stores_nothing(cli, services, arguments, stdin, complaint):
    result = cli("users", "add", *arguments, "--password-stdin", input=f"{stdin}\n")

    assert result.exit_code == 1, result.output
    assert complaint in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert AdminUser.select().count() == 0
    assert AuditEvent.select().count() == 0


def test_adding_a_taken_name_fails_and_keeps_the_first(cli, services):
    make("maria", "viewer")

    result = cli("users", "add", "maria", "--role", "owner", "--password-stdin", input=f"{SECRET}\n")

    assert result.exit_code == 1
    assert "a user named 'maria' exists already" in result.output
    assert stored("maria").role == "viewer" and not stored("maria").check_password(SECRET)


# --- set-role ------------------------------------------------------------------------------------

def test_set_role_changes_the_role_and_the_session_stamp(cli, services):
    make("ops", "owner")
    maria = make("maria", "agent")

    result = cli("users", "set-role", "maria", "admin")

    assert result.exit_code == 0, result.output
    assert "'maria' is now admin (was agent)" in result.output
    assert stored("maria").role == "admin"
    assert stored("maria").session_stamp() != maria.session_stamp()


def test_an_owner_may_be_demoted_while_another_owner_remains(cli, services):
    make("ops", "owner")
    make("root", "owner")

    assert cli("users", "set-role", "root", "viewer").exit_code == 0
    assert stored("root").role == "viewer"


def test_the_last_owner_cannot_be_demoted(cli, services):
    make("ops", "owner")
    make("maria", "admin")

    result = cli("users", "set-role", "ops", "admin")

    assert result.exit_code == 1
    assert "'ops' is the last owner: make another user an owner first" in result.output
    assert stored("ops").role == "owner"
    assert AuditEvent.select().count() == 0


def test_set_role_to_the_role_held_changes_nothing(cli, services):
    maria = make("maria", "agent")

    result = cli("users", "set-role", "maria", "agent")

    assert result.exit_code == 0
    assert "nothing changed" in result.output
    assert stored("maria").session_stamp() == maria.session_stamp()
    assert AuditEvent.select().count() == 0


@pytest.mark.parametrize("arguments, complaint", [
    (["nobody", "admin"], "no user named 'nobody'"),
    (["maria", "king"], "no role 'king': choose one of viewer, agent, admin, owner"),
])
def test_set_role_of_an_unknown_user_or_to_an_unknown_role_fails(cli, services, arguments, complaint):
    make("maria", "agent")

    result = cli("users", "set-role", *arguments)

    assert result.exit_code == 1
    assert complaint in result.output
    assert stored("maria").role == "agent"


# --- remove --------------------------------------------------------------------------------------

def test_remove_asks_first_and_removes_on_yes(cli, services):
    make("ops", "owner")
    make("maria", "agent")

    declined = cli("users", "remove", "maria", input="n\n")
    assert declined.exit_code == 1
    assert "Remove agent 'maria'?" in declined.output
    assert stored("maria") is not None

    result = cli("users", "remove", "maria", input="y\n")
    assert result.exit_code == 0, result.output
    assert stored("maria") is None


def test_remove_with_yes_does_not_ask(cli, services):
    make("ops", "owner")
    make("root", "owner")

    result = cli("users", "remove", "root", "--yes")

    assert result.exit_code == 0, result.output
    assert "Removed 'root'." in result.output
    assert [user.username for user in AdminUser.select()] == ["ops"]


def test_the_last_owner_cannot_be_removed(cli, services):
    make("ops", "owner")
    make("maria", "admin")

    result = cli("users", "remove", "ops", "--yes")

    assert result.exit_code == 1
    assert "'ops' is the last owner: make another user an owner first" in result.output
    assert stored("ops") is not None


def test_removing_an_unknown_user_fails_without_asking(cli, services):
    result = cli("users", "remove", "nobody")
    assert result.exit_code == 1
    assert "no user named 'nobody'" in result.output
    assert "Remove" not in result.output


# --- reset-2fa -----------------------------------------------------------------------------------

def test_reset_2fa_clears_the_secret_the_last_code_and_the_recovery_codes(cli, services):
    AdminUser.create(username="maria", password_hash=password_hash(), role="agent", totp_secret_encrypted="token",
                     totp_enabled_at=utcnow(), totp_last_step=123, recovery_codes=["hash1", "hash2"])

    result = cli("users", "reset-2fa", "maria")

    assert result.exit_code == 0, result.output
    assert "Reset the two-factor login of 'maria'" in result.output
    user = stored("maria")
    assert (user.totp_secret_encrypted, user.totp_enabled_at, user.totp_last_step, user.recovery_codes) == (
        None, None, 0, [])
    assert user.check_password(PASSWORD)


def test_reset_2fa_of_an_unknown_user_fails(cli, services):
    result = cli("users", "reset-2fa", "nobody")
    assert result.exit_code == 1
    assert "no user named 'nobody'" in result.output


# --- the audit log -------------------------------------------------------------------------------

def test_every_change_is_audited_from_the_cli_with_no_password_anywhere(cli, services):
    make("ops", "owner")
    assert cli("users", "add", "maria", "--role", "agent", "--password-stdin", input=f"{SECRET}\n").exit_code == 0
    assert cli("users", "set-role", "maria", "owner").exit_code == 0
    assert cli("users", "reset-2fa", "maria").exit_code == 0
    assert cli("users", "remove", "maria", "--yes").exit_code == 0

    assert audit_rows() == [("user_added", "cli", "maria", "cli"), ("role_changed", "cli", "maria", "cli"),
                            ("2fa_reset", "cli", "maria", "cli"), ("user_removed", "cli", "maria", "cli")]
    details = [event.detail for event in AuditEvent.select().order_by(AuditEvent.id)]
    assert details[:2] == ["role=agent", "agent -> owner"]
    for row in AuditEvent.select().tuples():
        assert not any(SECRET in str(column) for column in row)


# --- create-admin --------------------------------------------------------------------------------

def test_create_admin_still_creates_an_owner_who_is_listed(cli, services):
    result = cli("create-admin", "--username", "ops", "--password-stdin", input=f"{SECRET}\n")

    assert result.exit_code == 0, result.output
    assert stored("ops").role == "owner"
    assert cli("users", "list").output.splitlines()[1].split() == ["ops", "owner", "off", "never"]


def test_list_without_a_database_says_how_to_fix_it(app_with, services, tmp_path):
    broken = app_with(database_url=f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}")
    result = broken.test_cli_runner().invoke(args=["users", "list"])
    assert result.exit_code == 1
    assert "fix: check that the database is up" in result.output
