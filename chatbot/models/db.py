"""The database handle and its connection hooks (schema migrations live in migrations.py)."""
from __future__ import annotations

import fcntl
import os
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import peewee
from peewee import DatabaseProxy
from playhouse.db_url import connect
from playhouse.pool import PooledSqliteDatabase

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
        options = dict(pragmas=SQLITE_PRAGMAS, lock_type="IMMEDIATE", check_same_thread=False,
                       max_connections=pool_size, stale_timeout=POOL_STALE_SECONDS, timeout=POOL_WAIT_SECONDS)
        if path and path != "/:memory:":
            db = QueuedWritersSqliteDatabase(path, writers_lock=path + ".writers", **options)
        else:
            db = connect(f"sqlite+pool://{rest}", **options)
    else:
        db = connect(f"postgresql+pool://{rest}", max_connections=pool_size, stale_timeout=POOL_STALE_SECONDS,
                     timeout=POOL_WAIT_SECONDS)
    database.initialize(db)
    return db


# QueuedWritersSqliteDatabase hooks peewee's begin, commit, rollback, execute_sql and close: the calls
# peewee 4 makes for every transaction and statement (tests/test_sqlite_writers.py holds it to that).
# Another major version may route writes past them, so it is refused until those tests pass on it.
PEEWEE_MAJOR = 4


def check_peewee_version(version: str) -> None:
    """Refuse a peewee whose major version the SQLite writer queue has not been checked against."""
    if int(version.split(".")[0]) != PEEWEE_MAJOR:
        raise ImportError(f"the SQLite writer queue (chatbot/models/db.py) is checked against peewee {PEEWEE_MAJOR}.x, "
                          f"not {version}: run tests/test_sqlite_writers.py on it, then update PEEWEE_MAJOR")


check_peewee_version(peewee.__version__)


class WriterQueue:
    """One writer at a time across every process and thread on this machine, the others asleep in
    the kernel until it is done (flock on a file beside the database; each thread opens its own
    descriptor, so threads of one process queue too, and a killed process's turn ends with it)."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    def enter(self) -> bool:
        """Wait for this thread's turn; False when it already has it."""
        local = self._local
        if getattr(local, "held", False):
            return False
        if getattr(local, "fd", None) is None:
            local.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            # Closed when the thread ends and its locals go, or a process of many short threads
            # would run out of descriptors.
            local.closer = weakref.finalize(local.__dict__.setdefault("token", _Token()), os.close, local.fd)
        fcntl.flock(local.fd, fcntl.LOCK_EX)
        local.held = True
        return True

    def leave(self) -> None:
        local = self._local
        if getattr(local, "held", False):
            local.held = False
            fcntl.flock(local.fd, fcntl.LOCK_UN)


class _Token:
    """Lives exactly as long as one thread's locals."""


class QueuedWritersSqliteDatabase(PooledSqliteDatabase):
    """The pooled SQLite database, its writers queued in a WriterQueue.

    SQLite's own wait for the write lock (busy_timeout) sleeps in growing steps of up to 100 ms and
    tries again, while writers that arrive in between take the lock first: under a sustained load
    (the soak: two web processes and two workers of 16 jobs) one webhook waited past the 5 s
    timeout while others were stored in milliseconds, and got a 503. In the queue a writer waits
    its turn and takes the lock the moment the one before lets go. busy_timeout stays as the
    backstop for a writer outside the queue (the sqlite3 shell, a second machine on the same file).
    """

    def __init__(self, database, writers_lock: str, **kwargs):
        self.writers = WriterQueue(writers_lock)
        super().__init__(database, **kwargs)

    def begin(self, lock_type=None):
        entered = self.writers.enter()
        try:
            return super().begin(lock_type)
        except BaseException:
            if entered:
                self.writers.leave()
            raise

    def commit(self):
        try:
            return super().commit()
        finally:
            self.writers.leave()

    def rollback(self):
        try:
            return super().rollback()
        finally:
            self.writers.leave()

    def execute_sql(self, sql, params=None):
        # A write outside a transaction (autocommit) takes the lock for one statement: queue it too.
        if self.in_transaction() or sql.lstrip()[:6].upper() in READ_STATEMENTS:
            return super().execute_sql(sql, params)
        entered = self.writers.enter()
        try:
            return super().execute_sql(sql, params)
        finally:
            if entered:
                self.writers.leave()

    def close(self):
        # A connection given back with its transaction still open is rolled back by the pool: its turn ends.
        try:
            return super().close()
        finally:
            if not self.in_transaction():
                self.writers.leave()


READ_STATEMENTS = ("SELECT", "PRAGMA")


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
