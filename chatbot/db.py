"""The database handle and its connection hooks (schema migrations live in migrations.py)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from peewee import DatabaseProxy
from playhouse.db_url import connect

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
