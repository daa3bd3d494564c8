"""flask commands for operators."""
from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app
from flask.cli import with_appcontext

from chatbot import auth, db, tasks
from chatbot.crypto import SecretDecryptionError
from chatbot.models import AIConfiguration, Message, utcnow


def init_app(app) -> None:
    app.cli.add_command(init_db_command)
    app.cli.add_command(cleanup_command)
    app.cli.add_command(create_admin_command)
    app.cli.add_command(rotate_key_command)
    app.cli.add_command(retry_failed_command)


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create or upgrade the database schema (safe to run on every deploy)."""
    before, after = db.upgrade()
    if before == after:
        click.echo(f"Database schema is up to date (version {after}).")
    else:
        click.echo(f"Database schema upgraded from version {before} to {after}.")


@click.command("cleanup")
@with_appcontext
def cleanup_command():
    """Deactivate conversations idle longer than CONVERSATION_TTL, now."""
    tasks.install(current_app.extensions["chatbot"])
    count = tasks.cleanup_expired_conversations()
    click.echo(f"Deactivated {count} idle conversation(s).")


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
