"""flask commands for operators: exit 0 when done, 1 when a check or an operation failed, 2 on bad usage."""
from __future__ import annotations

import functools
import sys
from datetime import timedelta
from typing import Callable

import click
from flask import current_app
from flask.cli import with_appcontext
from peewee import PeeweeException
from redis.exceptions import RedisError

from chatbot import auth, cli_checks, db, tasks
from chatbot.cli_checks import Check
from chatbot.crypto import SecretDecryptionError
from chatbot.errors import UpstreamError, WhatsAppError
from chatbot.models import AIConfiguration, Message, utcnow
from chatbot.redact import mask_phone
from config import WHATSAPP_ADDRESS_SHAPE, ConfigError

CONFIG_ERROR = "chatbot.config_error"


def init_app(app) -> None:
    """Register every operator command on `app`."""
    for command in COMMANDS:
        app.cli.add_command(command)


def init_config_error_app(app, error: ConfigError) -> None:
    """Register check-config to report `error`, and in place of every other command one that names it."""
    app.extensions[CONFIG_ERROR] = error
    for command in COMMANDS:
        app.cli.add_command(command if command is check_config_command else _refusing(command, error))


def _refusing(command: click.Command, error: ConfigError) -> click.Command:
    def refuse():
        raise click.ClickException(f"{error}\nRun `flask check-config` for how to fix each one.")

    return click.Command(command.name, callback=refuse, help=command.help, short_help=command.short_help,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                           "help_option_names": []})


def services():
    """Return this app's built clients."""
    return current_app.extensions["chatbot"]


def operator_errors(command: Callable) -> Callable:
    """Turn an unreachable database or Redis into a one-line error with its fix, and exit 1."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PeeweeException as error:
            raise click.ClickException(
                f"database: {cli_checks.first_line(error)}\n"
                "fix: check that the database is up and DATABASE_URL is right, then run `flask init-db`"
            ) from error
        except RedisError as error:
            raise click.ClickException(
                f"Redis: {cli_checks.first_line(error)}\nfix: start Redis, or correct REDIS_URL"
            ) from error
        except UpstreamError as error:
            raise click.ClickException(f"{error}\nfix: run flask check-config") from error

    return run


class Address(click.ParamType):
    """A WhatsApp address `whatsapp:+E164` (`+E164` is accepted)."""

    name = "whatsapp:+E164"

    def convert(self, value, param, ctx):
        address = value.strip()
        if address.startswith("+"):
            address = "whatsapp:" + address
        if WHATSAPP_ADDRESS_SHAPE.match(address):
            return address
        self.fail(f"{value!r} is not whatsapp:+ and an E.164 number, e.g. whatsapp:+14155550123", param, ctx)


def echo_checks(title: str, checks: list[Check]) -> None:
    click.echo(title)
    for check in checks:
        click.echo(f"  {check.verdict.value} {check.label}: {check.detail}")
        if check.fix:
            click.echo(f"      fix: {check.fix}")


def conclude(checks: list[Check]) -> None:
    """Say how many checks failed and exit 1 if any did."""
    failed = sum(check.failed for check in checks)
    if failed:
        click.echo(f"\n{failed} check{'s' if failed > 1 else ''} failed.")
        sys.exit(1)
    click.echo("\nAll checks passed.")


# --- Setup and diagnosis -------------------------------------------------------------------------

@click.command("init-db")
@with_appcontext
@operator_errors
def init_db_command():
    """Create or upgrade the database schema (safe to run on every deploy)."""
    before, after = db.upgrade()
    if before == after:
        click.echo(f"Database schema is up to date (version {after}).")
    else:
        click.echo(f"Database schema upgraded from version {before} to {after}.")


@click.command("check-config")
@click.option("--offline", is_flag=True, help="Check the settings only; reach no service.")
@with_appcontext
def check_config_command(offline):
    """Check the settings and every service.

    Each setting's presence and shape, then the database (reachable, migrated), Redis, the
    OpenRouter key and model, and the Twilio credentials, for real; prints a fix for each failure
    and the webhook URL to give Twilio.
    """
    error = current_app.extensions.get(CONFIG_ERROR)
    if error is not None:
        checks = cli_checks.problem_checks(error)
        echo_checks("Settings", checks)
        click.echo("\nThe settings do not load, so no service was checked: fix them and run this again.")
        conclude(checks)
        return
    built = services()
    checks = cli_checks.settings_checks(built.config)
    echo_checks("Settings", checks)
    if offline:
        click.echo("Services\n  - skipped (--offline)")
    else:
        service_checks = cli_checks.service_checks(built)
        echo_checks("Services", service_checks)
        checks += service_checks
    click.echo(f"Webhook\n  Give Twilio this URL for incoming messages (method POST): "
               f"{cli_checks.webhook_url(built.config)}")
    conclude(checks)


@click.command("test-whatsapp")
@click.option("--to", "recipient", type=Address(), help="Who receives the test message.")
@click.option("--message", default="", help="The text to send (default: a short test message).")
@click.option("--check-config", "check_only", is_flag=True,
              help="Only check the Twilio settings and credentials; send nothing.")
@with_appcontext
def test_whatsapp_command(recipient, message, check_only):
    """Send a real WhatsApp test message through Twilio."""
    built = services()
    if check_only:
        checks = cli_checks.twilio_settings_checks(built.config) + [cli_checks.twilio_account_check(built)]
        echo_checks("Twilio", checks)
        conclude(checks)
        return
    if recipient is None:
        raise click.UsageError("give --to whatsapp:+E164 (or --check-config to send nothing)")
    body = message or f"Test message from {built.config.site_name} (flask test-whatsapp)."
    try:
        sids = built.whatsapp.send(recipient, body)
    except WhatsAppError as error:
        click.echo(f"✗ Not sent to {mask_phone(recipient)}: {error}")
        click.echo(f"    fix: {_send_fix(error)}")
        sys.exit(1)
    click.echo(f"✓ Sent to {mask_phone(recipient)} in {len(sids)} message(s): {', '.join(sids)}")


def _send_fix(error: WhatsAppError) -> str:
    if error.status == 401 or error.code == 20003:
        return "copy TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN from the Twilio Console"
    if error.code in (63015, 63016):
        return ("the recipient must message the bot first (in the sandbox: send the join code); "
                "free-form messages are allowed only within 24 hours of their last message")
    if error.code in (21211, 21614):
        return "check the --to number (whatsapp:+ and the full international number)"
    if error.code in (21606, 63007):
        return "TWILIO_WHATSAPP_NUMBER must be a WhatsApp sender of this Twilio account"
    if error.status is None and not error.retryable:
        return "set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_WHATSAPP_NUMBER (flask check-config)"
    if error.code:
        return f"see https://www.twilio.com/docs/errors/{error.code}"
    return "check the network, or TWILIO_API_BASE_URL; see https://status.twilio.com"


@click.command("cleanup")
@with_appcontext
@operator_errors
def cleanup_command():
    """Deactivate conversations idle longer than CONVERSATION_TTL, now."""
    tasks.install(services())
    count = tasks.cleanup_expired_conversations()
    click.echo(f"Deactivated {count} idle conversation(s).")


# --- Admin users and keys ------------------------------------------------------------------------

@click.command("create-admin")
@click.option("--username", required=True, help="Login name of the admin user.")
@click.option("--password", help="Password; prompted for (hidden, twice) when omitted.")
@with_appcontext
def create_admin_command(username, password):
    """Create an admin user for the panel at /admin, or reset an existing one's password."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise click.BadParameter("use at least 8 characters", param_hint="--password")
    _user, created = auth.create_or_reset_admin(username.strip(), password)
    click.echo(f"{'Created' if created else 'Reset the password of'} admin user {username.strip()!r}.")


@click.command("rotate-key")
@with_appcontext
def rotate_key_command():
    """Re-encrypt stored API keys with the first key of FIELD_ENCRYPTION_KEY.

    To rotate: put a new key first (NEW,OLD), deploy, run this, then drop OLD.
    """
    cipher = current_app.extensions["chatbot"].cipher
    rotated, failed = 0, []
    for config in AIConfiguration.select().where(AIConfiguration.api_key_encrypted.is_null(False)):
        try:
            token = cipher.rotate(config.api_key_encrypted)
        except SecretDecryptionError:
            failed.append(config.name)
            continue
        AIConfiguration.update(api_key_encrypted=token).where(AIConfiguration.id == config.id).execute()
        rotated += 1
    click.echo(f"Re-encrypted {rotated} API key(s) with the newest key.")
    if failed:
        click.echo(f"Could not decrypt: {', '.join(failed)} (is its old key still in FIELD_ENCRYPTION_KEY?)", err=True)
        raise SystemExit(1)


@click.command("retry-failed")
@click.option("--hours", default=24, show_default=True, type=click.IntRange(min=1),
              help="Retry messages that failed within this many hours.")
@with_appcontext
def retry_failed_command(hours):
    """Ask the AI again for messages that got the apology instead of an answer."""
    services = current_app.extensions["chatbot"]
    retried = Message.retry_failed(utcnow() - timedelta(hours=hours))
    for message in retried:
        tasks.enqueue_processing(services.queue, message.id, message.conversation.user_phone)
    click.echo(f"Queued {len(retried)} failed message(s) for another answer.")


COMMANDS = [
    init_db_command,
    check_config_command,
    test_whatsapp_command,
    cleanup_command,
    create_admin_command,
    rotate_key_command,
    retry_failed_command,
]
