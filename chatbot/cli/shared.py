"""What every flask command shares: the operator-error boundary, the address and JSON parameters, the check report."""
from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable

import click
from flask import current_app
from peewee import PeeweeException
from redis.exceptions import RedisError

from chatbot import clock
from chatbot.checks import Check, first_line
from chatbot.console_chat import CONSOLE_ADDRESS_SHAPE
from chatbot.errors import UpstreamError
from config import WHATSAPP_ADDRESS_SHAPE, whatsapp_address


def services():
    """Return this app's built clients."""
    return current_app.extensions["chatbot"]


def when(moment, seconds: bool = True) -> str:
    """A stored time for the terminal: in ADMIN_TIMEZONE, its zone named (as the panel shows it)."""
    return clock.shown(moment, services().config.admin_timezone, seconds=seconds)


def operator_errors(command: Callable) -> Callable:
    """Turn an unreachable database or Redis into a one-line error with its fix, and exit 1."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PeeweeException as error:
            raise click.ClickException(
                f"database: {first_line(error)}\n"
                "fix: check that the database is up and DATABASE_URL is right, then run `flask init-db`"
            ) from error
        except RedisError as error:
            raise click.ClickException(
                f"Redis: {first_line(error)}\nfix: start Redis, or correct REDIS_URL"
            ) from error
        except UpstreamError as error:
            raise click.ClickException(f"{error}\nfix: run flask check-config") from error

    return run


class Address(click.ParamType):
    """A WhatsApp address `whatsapp:+E164` (`+E164` is accepted), or a console one if allowed."""

    name = "whatsapp:+E164"

    def __init__(self, console: bool = False):
        self.console = console

    def convert(self, value, param, ctx):
        address = whatsapp_address(value)
        if WHATSAPP_ADDRESS_SHAPE.match(address) or (self.console and CONSOLE_ADDRESS_SHAPE.match(address)):
            return address
        self.fail(f"{value!r} is not whatsapp:+ and an E.164 number, e.g. whatsapp:+14155550123", param, ctx)


class JsonObject(click.ParamType):
    """A JSON object given on the command line; anything else is bad usage (exit 2)."""

    name = "JSON"

    def __init__(self, example: str):
        self.example = example

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        try:
            parsed = json.loads(value)
        except ValueError as error:
            self.fail(f"not valid JSON ({error}); e.g. {self.example}", param, ctx)
        if not isinstance(parsed, dict):
            self.fail(f"must be a JSON object, e.g. {self.example}", param, ctx)
        return parsed


def echo_checks(title: str, checks: list[Check]) -> None:
    click.echo(title)
    for check in checks:
        click.echo(f"  {check.status.value} {check.label}: {check.detail}")
        if check.fix:
            click.echo(f"      fix: {check.fix}")


def conclude(checks: list[Check]) -> None:
    """Say how many checks failed and exit 1 if any did."""
    failed = sum(check.failed for check in checks)
    if failed:
        click.echo(f"\n{failed} check{'s' if failed > 1 else ''} failed.")
        sys.exit(1)
    click.echo("\nAll checks passed.")


def number_key(address: str | None) -> str | None:
    """The conversations' key of a number ("" for the default one); None: every number."""
    if address is None:
        return None
    return "" if address == services().config.twilio_whatsapp_number else address
