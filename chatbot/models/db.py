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
from peewee import DatabaseProxy, OperationalError
from playhouse.db_url import connect
from playhouse.pool import PooledSqliteDatabase

from config import Config

database = DatabaseProxy()

POOL_SIZE = 32
# How long a writer waits for its turn unless told (SQLITE_WRITER_WAIT_SECONDS).
WRITER_WAIT_SECONDS = Config.sqlite_writer_wait
# Writers that gave up waiting leave their wait behind (flock cannot be called off) until the turn is
# free; past this many such waits left in one process, later writers give up at once.
MAX_WAITS_GIVEN_UP = 64
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


def open_database(url: str, pool_size: int = POOL_SIZE, writer_wait: float = WRITER_WAIT_SECONDS):
    """Build the pooled Peewee database for a sqlite:// or postgres(ql):// URL and bind the models.

    Pooled, so a request or job reuses an open connection instead of paying for a new one; the
    pool opens connections only as they are needed, up to `pool_size`. An SQLite file's writers wait
    at most `writer_wait` seconds for their turn.
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
            db = QueuedWritersSqliteDatabase(path, writers_lock=path + ".writers", writer_wait=writer_wait,
                                             **options)
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


class WriterTurnTimeout(OperationalError):
    """A writer waited its longest for its turn: to its caller, the database is unavailable."""


class WriterQueue:
    """One writer at a time across every process and thread on this machine, the others asleep in
    the kernel until it is done (flock on a file beside the database; each thread opens its own
    descriptor, so threads of one process queue too, and a killed process's turn ends with it).

    flock has no timeout, so a writer that finds the turn taken waits for it in a thread of its own
    and gives up after `wait` seconds (WriterTurnTimeout); the abandoned wait lets the turn go the
    moment it gets it.
    """

    def __init__(self, path: str, wait: float = WRITER_WAIT_SECONDS):
        self.path = path
        self.wait = wait
        self._local = threading.local()
        self._given_up = 0
        self._given_up_lock = threading.Lock()

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
        if not self._take(local.fd, self.wait):
            # The abandoned wait owns the descriptor now, and closes it; this thread opens another.
            local.closer.detach()
            local.fd = None
            raise WriterTurnTimeout(f"no turn to write to the SQLite database within {self.wait:g} s: "
                                    f"another writer holds {self.path}")
        local.held = True
        return True

    def leave(self) -> None:
        local = self._local
        if getattr(local, "held", False):
            local.held = False
            fcntl.flock(local.fd, fcntl.LOCK_UN)

    def turn_within(self, seconds: float) -> bool:
        """Whether a writer would get its turn within `seconds`: the turn is taken and let go at once,
        on a descriptor of its own (the health check's probe)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not self._take(fd, seconds):
            return False  # the abandoned wait closes `fd`
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        return True

    def _take(self, fd: int, seconds: float) -> bool:
        """Take the turn on `fd` within `seconds`; False (and `fd` handed to the abandoned wait) if not."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        with self._given_up_lock:
            if self._given_up >= MAX_WAITS_GIVEN_UP:
                # The turn has been stuck for a while: no more waits left behind, no descriptors run out.
                os.close(fd)
                return False
        wait = _Wait(fd, self._wait_ended)
        threading.Thread(target=wait.run, name="sqlite-writer-wait", daemon=True).start()
        if wait.taken_within(seconds):
            return True
        with self._given_up_lock:
            self._given_up += 1
        return False

    def _wait_ended(self) -> None:
        with self._given_up_lock:
            self._given_up -= 1


class _Wait:
    """One blocking wait for the turn, in a thread of its own, which its writer may give up."""

    def __init__(self, fd: int, on_abandoned_end):
        self.fd = fd
        self.on_abandoned_end = on_abandoned_end
        self._settled = threading.Condition()
        self._taken = self._abandoned = False

    def run(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        with self._settled:
            if not self._abandoned:
                self._taken = True
                self._settled.notify()
                return
        # Nobody waits for this turn any more: let the next writer have it at once.
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.on_abandoned_end()

    def taken_within(self, seconds: float) -> bool:
        with self._settled:
            self._settled.wait_for(lambda: self._taken, seconds)
            self._abandoned = not self._taken
            return self._taken


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

    def __init__(self, database, writers_lock: str, writer_wait: float = WRITER_WAIT_SECONDS, **kwargs):
        self.writers = WriterQueue(writers_lock, writer_wait)
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


def writer_turn_within(seconds: float) -> bool | None:
    """Whether a writer of this SQLite database would get its turn within `seconds`; None where no
    writer queue exists (Postgres, an in-memory database)."""
    if not isinstance(database.obj, QueuedWritersSqliteDatabase):
        return None
    return database.obj.writers.turn_within(seconds)


def init_app(app) -> None:
    """Close the request's connection afterwards (Peewee opens it on first use)."""

    @app.teardown_appcontext
    def _close(_exc):
        if not database.is_closed():
            database.close()
