"""Operator accounts: add, list, change the role of, remove, and reset the two-factor login of admin users.

`flask users` and the admin's Users page both go through here, so the rules are written once: the last
owner can be neither removed nor demoted (someone must always be able to manage users), a role change or
a removal ends the user's sessions (a session carries a stamp of the password and role; a removed user
has none), and every change writes an audit row that never holds a password.
"""
from __future__ import annotations

from peewee import IntegrityError

from chatbot import audit, two_factor
from chatbot.models import AdminUser
from chatbot.models.db import database
from chatbot.roles import ORDER, Role

# As `flask create-admin` requires.
MIN_PASSWORD = 8
# The login form takes no longer one: a longer password could never be typed in.
MAX_PASSWORD = 1024
MAX_USERNAME = AdminUser.username.max_length
# Who acts when a change comes from a shell on the server.
CLI = "cli"


class UserError(Exception):
    """A user operation refused; the message says why in one line."""


def username_problem(username: str) -> str | None:
    """Say what is wrong with a (stripped) username, or None."""
    if not username:
        return "the username is empty"
    if len(username) > MAX_USERNAME:
        return f"the username is longer than {MAX_USERNAME} characters"
    if not username.isprintable():
        return "the username has control characters in it"
    return None


def password_problem(password: str) -> str | None:
    """Say what is wrong with a password, or None (the password itself is never quoted)."""
    if len(password) < MIN_PASSWORD:
        return f"the password is too short: use at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"the password is longer than {MAX_PASSWORD} characters, more than the login form takes"
    return None


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise UserError(f"no role {role!r}: choose one of {', '.join(ORDER)}") from None


def find_user(username: str) -> AdminUser:
    """Return the user named `username`, or refuse."""
    user = AdminUser.get_or_none(AdminUser.username == username.strip())
    if user is None:
        raise UserError(f"no user named {username.strip()!r}")
    return user


def _refuse_if_last_owner(user: AdminUser) -> None:
    """Refuse to take away the last owner; the other owners' rows stay locked until the change commits."""
    if user.role != Role.OWNER:
        return
    others = AdminUser.select(AdminUser.id).where(AdminUser.role == Role.OWNER.value, AdminUser.id != user.id)
    # Postgres: two owners demoting each other at once cannot both see the other one still an owner.
    # SQLite takes the write lock when the transaction begins, which serialises them as well.
    if not list(others.for_update() if database.for_update else others):
        raise UserError(f"{user.username!r} is the last owner: make another user an owner first")


def add_user(username: str, password: str, role: str, actor: str = CLI, address: str = CLI) -> AdminUser:
    """Store a new user with `role`; refuse a bad username, password or role, or a name taken."""
    username = username.strip()
    problem = username_problem(username) or password_problem(password)
    if problem:
        raise UserError(problem)
    user = AdminUser(username=username, role=_role(role).value)
    user.set_password(password)
    try:
        with database.atomic():
            if AdminUser.select().where(AdminUser.username == username).exists():
                raise UserError(f"a user named {username!r} exists already")
            user.save()
    except IntegrityError as error:
        raise UserError(f"a user named {username!r} exists already") from error
    audit.record("user_added", actor, username, f"role={user.role}", address)
    return user


def list_users() -> list[AdminUser]:
    """Every user, by username."""
    return list(AdminUser.select().order_by(AdminUser.username))


def set_role(username: str, role: str, actor: str = CLI, address: str = CLI) -> str:
    """Give `username` the role `role`, ending their sessions; return the role they had."""
    new_role = _role(role)
    with database.atomic():
        user = find_user(username)
        previous = user.role
        if previous == new_role:
            return previous
        if new_role != Role.OWNER:
            _refuse_if_last_owner(user)
        # The role is part of the session stamp: their open sessions end with this.
        AdminUser.update(role=new_role.value).where(AdminUser.id == user.id).execute()
    audit.record("role_changed", actor, user.username, f"{previous} -> {new_role}", address)
    return previous


def remove_user(username: str, actor: str = CLI, address: str = CLI) -> AdminUser:
    """Delete `username` (their sessions end: a session of nobody is no session); return the row removed."""
    with database.atomic():
        user = find_user(username)
        _refuse_if_last_owner(user)
        user.delete_instance()
    audit.record("user_removed", actor, user.username, f"role={user.role}", address)
    return user


def reset_two_factor(username: str, actor: str = CLI, address: str = CLI) -> bool:
    """Turn off `username`'s two-factor login (secret, last code, recovery codes); return whether it was on.

    They log in with the password alone until they enrol again.
    """
    user = find_user(username)
    was_on = user.has_two_factor
    two_factor.reset_two_factor(user)
    audit.record("2fa_reset", actor, user.username, "was on" if was_on else "was off", address)
    return was_on
