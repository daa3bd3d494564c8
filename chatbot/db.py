"""The database handle, its per-request connection hooks, and schema migrations."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from peewee import DatabaseProxy, IntegerField, Model, PostgresqlDatabase
from playhouse.db_url import connect
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate

log = logging.getLogger(__name__)

database = DatabaseProxy()

POOL_SIZE = 32
POOL_STALE_SECONDS = 300
# When every pooled connection is in use, wait this long for one instead of failing at once.
POOL_WAIT_SECONDS = 10
SQLITE_PRAGMAS = {
    # WAL lets the web process write while a worker reads; foreign_keys makes cascades real.
    "journal_mode": "wal",
    "foreign_keys": 1,
    "busy_timeout": 5000,
    "synchronous": "normal",
}


def open_database(url: str, pool_size: int = POOL_SIZE):
    """Build the pooled Peewee database for a sqlite:// or postgres(ql):// URL and bind the models.

    Pooled, so a request or job reuses an open connection instead of paying for a new one; the
    pool opens connections only as they are needed, up to `pool_size`.
    """
    scheme, rest = url.split("://", 1)
    if scheme == "sqlite":
        path = urlparse(url).path
        if path and path != "/:memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # IMMEDIATE: a transaction that reads then writes must not lose its snapshot to a
        # concurrent writer (SQLite would fail it at once instead of waiting busy_timeout).
        db = connect(f"sqlite+pool://{rest}", pragmas=SQLITE_PRAGMAS, lock_type="IMMEDIATE",
                     check_same_thread=False, max_connections=pool_size, stale_timeout=POOL_STALE_SECONDS,
                     timeout=POOL_WAIT_SECONDS)
    else:
        db = connect(f"postgresql+pool://{rest}", max_connections=pool_size, stale_timeout=POOL_STALE_SECONDS,
                     timeout=POOL_WAIT_SECONDS)
    database.initialize(db)
    return db


@contextmanager
def connection_scope():
    """Let this block's queries take a pooled connection when they need one; give it back at the end."""
    try:
        yield
    finally:
        if not database.is_closed():
            database.close()


@contextmanager
def connection_released():
    """Give this thread's connection back to the pool while waiting on something slow; the next
    query takes one again. Kept inside a transaction or a peewee connection_context(), which
    both expect the same connection to their end."""
    if not database.is_closed() and not database.in_transaction() and not database.obj._state.ctx:
        database.close()
    yield


def init_app(app) -> None:
    """Close the request's connection afterwards (Peewee opens it on first use)."""

    @app.teardown_appcontext
    def _close(_exc):
        if not database.is_closed():
            database.close()


class SchemaVersion(Model):
    """The schema version the database has been migrated to."""

    version = IntegerField()

    class Meta:
        database = database
        table_name = "schema_version"


def _create_initial_tables(_migrator) -> None:
    from chatbot.models import AIConfiguration, Conversation, Message, WebhookLog

    database.create_tables([Conversation, Message, AIConfiguration, WebhookLog], safe=True)


def _create_admin_users(_migrator) -> None:
    from chatbot.models import AdminUser

    database.create_tables([AdminUser], safe=True)


# Migration 1 builds tables from today's models, so on a new database later columns exist already:
# each later migration checks before it adds.
def _add_webhook_verdict(migrator) -> None:
    from chatbot.models import WebhookLog

    if "verdict" not in {column.name for column in database.get_columns("webhook_log")}:
        migrate(migrator.add_column("webhook_log", "verdict", WebhookLog.verdict))  # indexes it too


def _add_message_origin(migrator) -> None:
    from chatbot.models import Message

    if "origin" not in {column.name for column in database.get_columns("message")}:
        migrate(migrator.add_column("message", "origin", Message.origin))


# Append a function for every schema change (playhouse.migrate operations on the migrator it
# receives); never edit one that has shipped.
MIGRATIONS = [_create_initial_tables, _create_admin_users, _add_webhook_verdict, _add_message_origin]


def current_version() -> int:
    """Return the schema version stored in the database (0 when unmigrated)."""
    if not SchemaVersion.table_exists():
        return 0
    row = SchemaVersion.select().order_by(SchemaVersion.version.desc()).first()
    return row.version if row else 0


def upgrade() -> tuple[int, int]:
    """Create or upgrade the schema idempotently; return (version before, version after)."""
    real = database.obj
    is_postgres = isinstance(real, PostgresqlDatabase)
    migrator = PostgresqlMigrator(real) if is_postgres else SqliteMigrator(real)
    with database.connection_context():
        # A lock row keeps two release commands from migrating at once on Postgres.
        with database.atomic():
            database.create_tables([SchemaVersion], safe=True)
            if is_postgres:
                database.execute_sql("LOCK TABLE schema_version IN EXCLUSIVE MODE")
            before = current_version()
            for number, step in enumerate(MIGRATIONS, start=1):
                if number > before:
                    log.info("applying migration %d (%s)", number, step.__name__)
                    step(migrator)
                    SchemaVersion.create(version=number)
            return before, current_version()

