"""SQLite's writers wait their turn in a queue instead of SQLite's busy handler, across threads and processes.

Each database here has a busy_timeout of 100 ms: past it SQLite itself says "database is locked",
so a write that waits longer than that succeeds only through the queue.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

from chatbot.models.db import (
    PEEWEE_MAJOR,
    SQLITE_PRAGMAS,
    QueuedWritersSqliteDatabase,
    WriterTurnTimeout,
    check_peewee_version,
)
from tests.conftest import WebhookPoster, wait_for
from tests.support import inbound_form

PROJECT_DIR = Path(__file__).resolve().parent.parent
HOLD_SECONDS = 1.0


def queued_database(path: Path) -> QueuedWritersSqliteDatabase:
    db = QueuedWritersSqliteDatabase(str(path), writers_lock=f"{path}.writers", lock_type="IMMEDIATE",
                                     pragmas={**SQLITE_PRAGMAS, "busy_timeout": 100}, check_same_thread=False,
                                     max_connections=16)
    db.execute_sql("CREATE TABLE IF NOT EXISTS note (text TEXT NOT NULL)")
    return db


def notes(db) -> list[str]:
    return sorted(text for (text,) in db.execute_sql("SELECT text FROM note").fetchall())


@pytest.fixture
def db(tmp_path):
    database = queued_database(tmp_path / "queued.sqlite3")
    yield database
    database.close_all()


def hold_a_write_transaction(db, begun: threading.Event) -> threading.Thread:
    def holder():
        with db.atomic():
            db.execute_sql("INSERT INTO note VALUES ('held')")
            begun.set()
            time.sleep(HOLD_SECONDS)
        db.close()

    thread = threading.Thread(target=holder)
    thread.start()
    return thread


def test_a_transaction_waits_for_a_long_one_past_sqlites_busy_timeout(db):
    begun = threading.Event()
    holder = hold_a_write_transaction(db, begun)
    assert begun.wait(5)
    started = time.monotonic()
    with db.atomic():
        db.execute_sql("INSERT INTO note VALUES ('waited')")
    waited = time.monotonic() - started
    holder.join()
    assert waited > 0.5  # far past the 100 ms SQLite would have waited
    assert notes(db) == ["held", "waited"]


def test_a_single_statement_outside_a_transaction_waits_its_turn_too(db):
    begun = threading.Event()
    holder = hold_a_write_transaction(db, begun)
    assert begun.wait(5)
    db.execute_sql("INSERT INTO note VALUES ('autocommit')")
    holder.join()
    assert notes(db) == ["autocommit", "held"]


def test_reads_do_not_wait_for_a_writer(db):
    begun = threading.Event()
    holder = hold_a_write_transaction(db, begun)
    assert begun.wait(5)
    started = time.monotonic()
    assert notes(db) == []  # WAL: the reader sees the last commit and does not queue
    assert time.monotonic() - started < HOLD_SECONDS / 2
    holder.join()


def test_many_writers_at_once_all_get_their_turn(db):
    failures = []

    def writer(number: int):
        try:
            for index in range(30):
                with db.atomic():
                    db.execute_sql("INSERT INTO note VALUES (?)", (f"{number}-{index}",))
                db.execute_sql("INSERT INTO note VALUES (?)", (f"{number}-{index}-single",))
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(repr(error))
        finally:
            db.close()

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(notes(db)) == 8 * 30 * 2


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {project!r})
    from tests.test_sqlite_writers import queued_database
    db = queued_database({path!r})
    with db.atomic():
        db.execute_sql("INSERT INTO note VALUES ('child')")
        print("begun", flush=True)
        time.sleep(float(sys.argv[1]))
    print("committed", flush=True)
""")


def child_holding_a_transaction(path: Path, seconds: float) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(project=str(PROJECT_DIR), path=str(path)),
                              str(seconds)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "begun"
    return child


def test_a_writer_in_another_process_waits_its_turn(db, tmp_path):
    child = child_holding_a_transaction(tmp_path / "queued.sqlite3", HOLD_SECONDS)
    with db.atomic():
        db.execute_sql("INSERT INTO note VALUES ('parent')")
    assert child.wait(10) == 0 and child.stdout.read().strip() == "committed"
    assert notes(db) == ["child", "parent"]


def test_a_killed_process_gives_its_turn_up(db, tmp_path):
    child = child_holding_a_transaction(tmp_path / "queued.sqlite3", 60)
    threading.Timer(HOLD_SECONDS, os.kill, (child.pid, signal.SIGKILL)).start()
    started = time.monotonic()
    with db.atomic():
        db.execute_sql("INSERT INTO note VALUES ('after the kill')")
    assert time.monotonic() - started < 10
    assert child.wait(10) == -signal.SIGKILL
    assert notes(db) == ["after the kill"]  # the killed transaction never committed


# --- a turn held too long ---------------------------------------------------------------------

@contextmanager
def turn_held_elsewhere(lock_path: str):
    """Hold the writers' turn as another process, or `flock` in a shell, would."""
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(descriptor)  # closing lets the turn go


def turn_free(lock_path: str) -> bool:
    descriptor = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_writer_gives_up_after_its_wait_and_the_abandoned_wait_lets_the_turn_go(tmp_path):
    db = queued_database(tmp_path / "queued.sqlite3")
    db.writers.wait = 0.3
    before = open_descriptors()
    with turn_held_elsewhere(db.writers.path):
        for statement in ("transaction", "autocommit"):
            started = time.monotonic()
            with pytest.raises(WriterTurnTimeout, match="within 0.3 s"):
                if statement == "transaction":
                    with db.atomic():
                        db.execute_sql("INSERT INTO note VALUES ('never')")
                else:
                    db.execute_sql("INSERT INTO note VALUES ('never')")
            assert 0.3 <= time.monotonic() - started < 5
        assert not db.writers.turn_within(0.1)
    # Let go: each abandoned wait takes the turn, lets it go at once and closes its descriptor.
    assert wait_for(lambda: turn_free(db.writers.path) and open_descriptors() <= before + 1, timeout=5)
    with db.atomic():
        db.execute_sql("INSERT INTO note VALUES ('after')")
    assert notes(db) == ["after"] and db.writers.turn_within(0.1)
    db.close_all()


def test_a_held_turn_gives_webhooks_503_and_health_says_so_then_both_recover(app_with, config, caplog):
    app = app_with(sqlite_writer_wait=1.0)
    client, post = app.test_client(), WebhookPoster(app.test_client())
    lock_path = urlparse(config.database_url).path + ".writers"
    with turn_held_elsewhere(lock_path):
        started = time.monotonic()
        refused = post(inbound_form("Hello"))
        waited = time.monotonic() - started
        health = client.get("/health")
    assert refused.status_code == 503 and 1.0 <= waited < 5  # Twilio waits 15 s, then retries
    assert "WriterTurnTimeout" in caplog.text and "no turn to write to the SQLite database within 1 s" in caplog.text
    assert health.status_code == 503 and health.get_json()["sqlite_writer_turn"] is False
    assert "holds the writer lock too long" in caplog.text

    assert post(inbound_form("Hello again")).status_code == 200
    assert client.get("/health").get_json() == {"status": "ok", "database": True, "redis": True,
                                                "sqlite_writer_turn": True}


def test_threads_that_ended_leave_no_descriptor_open(db):
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    def write():
        with db.atomic():
            db.execute_sql("INSERT INTO note VALUES ('short-lived')")
        db.close()

    write()  # this thread's own descriptor (and the connection's) are open from here on
    before = open_descriptors()
    for _ in range(50):
        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
    assert open_descriptors() <= before + 2  # the pool may keep a connection or two beside
    assert len(notes(db)) == 51


def turn_is_free(db) -> bool:
    """Whether a writer could take its turn now (flock conflicts across open files, threads or not)."""
    descriptor = os.open(db.writers.path, os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)


# What peewee does with a transaction, each through the hooks the queue overrides.

def test_a_transaction_holds_the_turn_through_its_savepoints_and_gives_it_up_at_commit(db):
    with db.atomic():
        db.execute_sql("INSERT INTO note VALUES ('outer')")
        with db.atomic():  # a savepoint: no second BEGIN, so no second turn to wait for
            db.execute_sql("INSERT INTO note VALUES ('inner')")
        assert not turn_is_free(db)
    assert turn_is_free(db)
    assert notes(db) == ["inner", "outer"]


def test_a_failed_transaction_gives_its_turn_up(db):
    with pytest.raises(ValueError), db.atomic():
        db.execute_sql("INSERT INTO note VALUES ('rolled back')")
        raise ValueError("the job failed")
    assert turn_is_free(db)
    assert notes(db) == []


def test_a_manual_transaction_holds_the_turn_until_its_rollback(db):
    with db.manual_commit():
        db.begin()
        db.execute_sql("INSERT INTO note VALUES ('rolled back')")
        assert not turn_is_free(db)
        db.rollback()
    assert turn_is_free(db)
    assert notes(db) == []


def test_a_peewee_of_another_major_version_is_refused():
    check_peewee_version(f"{PEEWEE_MAJOR}.99.0")
    with pytest.raises(ImportError, match="writer queue"):
        check_peewee_version(f"{PEEWEE_MAJOR + 1}.0.0")
