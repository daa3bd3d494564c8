"""flask users: add, list, change the role of, remove, and reset the two-factor login of admin users."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import click
from flask.cli import with_appcontext

from chatbot import users
from chatbot.cli.shared import operator_errors, when
from chatbot.roles import ORDER


class RoleChoice(click.Choice):
    """One of the roles; a wrong one exits 1 like any refused change, naming the roles."""

    def __init__(self):
        super().__init__([role.value for role in ORDER])

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as error:
            raise click.ClickException(f"no role {value!r}: choose one of {', '.join(self.choices)}") from error


def refused_in_one_line(command: Callable) -> Callable:
    """Turn a refused change (UserError) into its one-line message, and exit 1."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except users.UserError as error:
            raise click.ClickException(str(error)) from error

    return run


@click.group("users")
def users_group():
    """Manage who may log in to the admin panel, and with which role.

    Roles, each able to do what the one before it can: viewer (looks), agent (answers people),
    admin (configures the assistant), owner (manages users). There is always at least one owner.
    """


@users_group.command("add")
@click.argument("username")
@click.option("--role", type=RoleChoice(), required=True, help="What the user may do.")
@click.option("--password-stdin", "from_stdin", is_flag=True,
              help="Read the password from the first line of standard input instead of prompting.")
@with_appcontext
@operator_errors
@refused_in_one_line
def users_add(username, role, from_stdin):
    """Add USERNAME with a role; the password is prompted for (hidden, twice), never an argument."""
    problem = users.username_problem(username.strip())
    if problem:
        # Said before the password is typed for nothing.
        raise users.UserError(problem)
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    user = users.add_user(username, password, role)
    click.echo(f"Added {user.username!r} as {user.role}.")


@users_group.command("list")
@with_appcontext
@operator_errors
def users_list():
    """List the users: role, whether two-factor login is on, last login (in ADMIN_TIMEZONE)."""
    everyone = users.list_users()
    if not everyone:
        click.echo("No users yet: add one with flask users add USERNAME --role owner")
        return
    rows = [("USERNAME", "ROLE", "2FA", "LAST LOGIN")]
    rows += [(user.username, user.role, "on" if user.has_two_factor else "off",
              when(user.last_login_at, seconds=False) if user.last_login_at else "never")
             for user in everyone]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@users_group.command("set-role")
@click.argument("username")
@click.argument("role", type=RoleChoice())
@with_appcontext
@operator_errors
@refused_in_one_line
def users_set_role(username, role):
    """Give USERNAME the role ROLE; their open sessions end."""
    previous = users.set_role(username, role)
    if previous == role:
        click.echo(f"{username.strip()!r} is {role} already: nothing changed.")
    else:
        click.echo(f"{username.strip()!r} is now {role} (was {previous}); their open sessions have ended.")


@users_group.command("remove")
@click.argument("username")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
@operator_errors
@refused_in_one_line
def users_remove(username, yes):
    """Remove USERNAME: they can no longer log in, and their open sessions end."""
    user = users.find_user(username)
    if not yes:
        click.confirm(f"Remove {user.role} {user.username!r}?", abort=True)
    users.remove_user(user.username)
    click.echo(f"Removed {user.username!r}.")


@users_group.command("reset-2fa")
@click.argument("username")
@with_appcontext
@operator_errors
@refused_in_one_line
def users_reset_2fa(username):
    """Turn off USERNAME's two-factor login, e.g. after a lost phone; they may set it up again."""
    was_on = users.reset_two_factor(username)
    name = username.strip()
    click.echo(f"Reset the two-factor login of {name!r}: it is off until they set it up again."
               if was_on else f"{name!r} had no two-factor login; its settings are cleared all the same.")
