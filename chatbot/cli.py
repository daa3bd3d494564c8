"""flask commands for operators."""
from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from chatbot import db, tasks


def init_app(app) -> None:
    app.cli.add_command(init_db_command)
    app.cli.add_command(cleanup_command)


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
