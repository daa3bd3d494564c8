"""flask commands that set a deployment up and diagnose it: schema, settings, Twilio, admin users, keys."""
from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import with_appcontext

from chatbot import auth
from chatbot.checks import (
    problem_checks,
    service_checks,
    settings_checks,
    status_callback_url,
    twilio_account_check,
    twilio_send_fix,
    twilio_settings_checks,
    webhook_url,
)
from chatbot.cli.shared import Address, conclude, echo_checks, operator_errors, services
from chatbot.crypto import SecretDecryptionError
from chatbot.errors import WhatsAppError
from chatbot.models import AdminUser, AIConfiguration, Tool, migrations
from chatbot.redact import mask_phone

# Where the config-error app keeps the problem that stopped the settings from loading.
CONFIG_ERROR = "chatbot.config_error"


@click.command("init-db")
@with_appcontext
@operator_errors
def init_db_command():
    """Create or upgrade the database schema (safe to run on every deploy)."""
    before, after = migrations.upgrade()
    if before == after:
        click.echo(f"Database schema is up to date (version {after}).")
    else:
        click.echo(f"Database schema upgraded from version {before} to {after}.")


@click.command("check-config")
@click.option("--offline", is_flag=True, help="Check the settings only; reach no service.")
@with_appcontext
@operator_errors
def check_config_command(offline):
    """Check the settings and every service.

    Each setting's presence and shape, then the database (reachable, migrated), Redis, the
    OpenRouter key and model, and the Twilio credentials, for real; prints a fix for each failure
    and the webhook and status callback URLs to give Twilio.
    """
    error = current_app.extensions.get(CONFIG_ERROR)
    if error is not None:
        checks = problem_checks(error)
        echo_checks("Settings", checks)
        click.echo("\nThe settings do not load, so no service was checked: fix them and run this again.")
        conclude(checks)
        return
    built = services()
    checks = settings_checks(built.config)
    echo_checks("Settings", checks)
    if offline:
        click.echo("Services\n  - skipped (--offline)")
    else:
        services_checked = service_checks(built)
        echo_checks("Services", services_checked)
        checks += services_checked
    click.echo(f"Webhook\n  Give Twilio this URL for incoming messages (method POST): "
               f"{webhook_url(built.config)}\n"
               f"  and this one as the status callback URL, for delivery receipts (method POST): "
               f"{status_callback_url(built.config)}")
    conclude(checks)


@click.command("test-whatsapp")
@click.option("--to", "recipient", type=Address(), help="Who receives the test message.")
@click.option("--message", default="", help="The text to send (default: a short test message).")
@click.option("--check-config", "check_only", is_flag=True,
              help="Only check the Twilio settings and credentials; send nothing.")
@with_appcontext
@operator_errors
def test_whatsapp_command(recipient, message, check_only):
    """Send a real WhatsApp test message through Twilio."""
    built = services()
    if check_only:
        checks = twilio_settings_checks(built.config) + [twilio_account_check(built)]
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
        click.echo(f"    fix: {twilio_send_fix(error)}")
        sys.exit(1)
    click.echo(f"✓ Sent to {mask_phone(recipient)} in {len(sids)} message(s): {', '.join(sids)}")


@click.command("create-admin")
@click.option("--username", required=True, help="Login name of the admin user.")
@click.option("--password-stdin", "from_stdin", is_flag=True,
              help="Read the password from the first line of standard input instead of prompting.")
@with_appcontext
@operator_errors
def create_admin_command(username, from_stdin):
    """Create an admin user for the panel at /admin, or reset an existing one's password.

    The password is prompted for (hidden, twice) or read from standard input, never taken as an
    argument, where `ps` and shell history would show it. A reset ends the user's open sessions.
    """
    # Asked before the password is: typed for nothing otherwise.
    if migrations.current_version() == 0:
        raise click.ClickException("The database has no schema yet: run `.venv/bin/flask init-db` first.")
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise click.BadParameter("use at least 8 characters", param_hint="password")
    _user, created = auth.create_or_reset_admin(username.strip(), password)
    click.echo(f"{'Created' if created else 'Reset the password of'} admin user {username.strip()!r}.")


# Every field stored encrypted with FIELD_ENCRYPTION_KEY: (what it is, model, field, the row's name for a message).
ENCRYPTED_FIELDS = (
    ("API key", AIConfiguration, AIConfiguration.api_key_encrypted, "name"),
    ("tool secret", Tool, Tool.secret_encrypted, "name"),
    ("two-factor secret", AdminUser, AdminUser.totp_secret_encrypted, "username"),
)


@click.command("rotate-key")
@with_appcontext
@operator_errors
def rotate_key_command():
    """Re-encrypt every stored secret (AI keys, tools' secrets, two-factor secrets) with the first key
    of FIELD_ENCRYPTION_KEY.

    To rotate: put a new key first (NEW,OLD), deploy, run this, then drop OLD.
    """
    cipher = services().cipher
    failed = []
    counts = {}
    for label, model, field, name in ENCRYPTED_FIELDS:
        counts[label] = 0
        for row in model.select().where(field.is_null(False)):
            try:
                token = cipher.rotate(getattr(row, field.name))
            except SecretDecryptionError:
                failed.append(f"{label} of {getattr(row, name)}")
                continue
            model.update({field: token}).where(model.id == row.id).execute()
            counts[label] += 1
    rotated = ", ".join(f"{count} {label}(s)" for label, count in counts.items())
    click.echo(f"Re-encrypted with the newest key: {rotated}.")
    if failed:
        click.echo(f"Could not decrypt: {', '.join(failed)} (is its old key still in FIELD_ENCRYPTION_KEY?)", err=True)
        raise SystemExit(1)
