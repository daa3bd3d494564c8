"""Measure the conversation export's memory: 100,000 messages written out in this process.

Run by hand: `python bench/export_memory.py` (`--help` for the options; `--postgres` uses a throwaway
Postgres database: the local server's, else a private cluster's). It fills a throwaway database with
`--messages` messages in `--conversations` conversations (a fifth on a second number, a quarter rated)
by bulk insert, then runs the export (chatbot/exports.py, as `flask conversations export` and the
admin do) in each format into a sink that counts the bytes and drops them, reading the process's
resident memory at every chunk written. Prints, per format: rows, bytes, seconds, and resident
memory before, after, at its highest and at each quarter of the rows. Goal: growth < 100 MB, flat.
"""
from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from bench.proc_memory import read_kib  # noqa: E402
from chatbot import exports  # noqa: E402
from chatbot.models import Conversation, Message, Rating, migrations  # noqa: E402
from chatbot.models.db import database, open_database  # noqa: E402
from tests.support import BOT_NUMBER, PrivatePostgres, running_postgres_url, throwaway_postgres_database  # noqa: E402

SALES = "whatsapp:+15557770001"
INSERT_BATCH = 500
WORDS = ("order delivery refund parcel opening hours price warranty invoice card address store courier "
         "thanks please when where tomorrow today broken size colour stock voucher").split()
GOAL_MIB = 100


def resident_mib() -> float:
    return read_kib("/proc/self/status", ("VmRSS",))["VmRSS"] / 1024


def inserted_in_batches(model, rows) -> None:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == INSERT_BATCH:
            model.insert_many(batch).execute()
            batch = []
    if batch:
        model.insert_many(batch).execute()


def fill(messages: int, conversations: int) -> float:
    """Store the conversations, their messages and ratings; return the seconds it took."""
    rng = random.Random(1)
    started = time.perf_counter()
    first = datetime(2026, 1, 1)
    ids = [uuid.uuid4() for _ in range(conversations)]
    per_conversation = -(-messages // conversations)
    with database.atomic():
        inserted_in_batches(Conversation, ({
            "id": conversation_id, "user_phone": f"whatsapp:+1555{index:07d}",
            "number": SALES if index % 5 == 0 else "", "created_at": first, "updated_at": first,
        } for index, conversation_id in enumerate(ids)))

        def message_rows():
            for index in range(messages):
                conversation = ids[index // per_conversation]
                answer = index % 2 == 1
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
                yield {
                    "conversation": conversation, "role": "assistant" if answer else "user",
                    # Now and then a cell a spreadsheet would run, as customers do write them.
                    "content": ("=" if index % 97 == 0 else "") + text,
                    "status": "sent" if answer else "answered",
                    "created_at": first + timedelta(seconds=30 * index),
                    "model": "openai/gpt-4o-mini" if answer else None,
                    "total_tokens": rng.randint(200, 900) if answer else None,
                    "cost": rng.random() / 1000 if answer else None,
                }

        inserted_in_batches(Message, message_rows())
        inserted_in_batches(Rating, ({"conversation": conversation_id, "score": rng.randint(1, 5)}
                                     for conversation_id in ids[::4]))
    return time.perf_counter() - started


class CountingSink:
    """Drops what is written, counting it and reading the resident memory at every chunk."""

    def __init__(self):
        self.bytes = 0
        self.peak_mib = 0.0
        self.samples: list[tuple[int, float]] = []

    def write(self, chunk: str, rows_so_far: int) -> None:
        self.bytes += len(chunk.encode())
        now = resident_mib()
        self.peak_mib = max(self.peak_mib, now)
        self.samples.append((rows_so_far, now))


def run_export(shape: str, zone: ZoneInfo) -> dict:
    """Export every message as `shape` into a CountingSink; return the figures."""
    gc.collect()
    before = resident_mib()
    sink = CountingSink()
    rows = 0

    def counted(messages):
        nonlocal rows
        for message in messages:
            rows += 1
            yield message

    scope = exports.Scope(zone=zone, default_number=BOT_NUMBER)
    started = time.perf_counter()
    # export() of chatbot/exports.py, with the rows counted on their way to the writer.
    for chunk in exports.in_chunks(exports.WRITERS[shape](counted(exports.rows(scope)))):
        sink.write(chunk, rows)
    seconds = time.perf_counter() - started
    after = resident_mib()
    quarters = [next(mib for seen, mib in sink.samples if seen >= rows * share / 4) for share in (1, 2, 3, 4)]
    return {"format": shape, "rows": rows, "mb_written": round(sink.bytes / 1e6, 1), "seconds": round(seconds, 2),
            "rows_per_second": round(rows / seconds), "rss_before_mib": round(before, 1),
            "rss_after_mib": round(after, 1), "rss_peak_mib": round(max(sink.peak_mib, after), 1),
            "growth_mib": round(max(sink.peak_mib, after) - before, 1),
            "rss_at_quarters_mib": [round(mib, 1) for mib in quarters]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=1_000)
    parser.add_argument("--formats", default="csv,json,jsonl")
    parser.add_argument("--postgres", action="store_true", help="a throwaway Postgres database instead of SQLite")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, ExitStack() as cleanup:
        if options.postgres:
            admin_url = running_postgres_url()
            if admin_url is None:
                cluster = PrivatePostgres().start()
                cleanup.callback(cluster.stop)
                admin_url = cluster.admin_url
            database_url = cleanup.enter_context(throwaway_postgres_database(admin_url, "bench_export"))
        else:
            database_url = f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        open_database(database_url)
        cleanup.callback(database.close)
        migrations.upgrade()
        filled = fill(options.messages, options.conversations)
        # The statistics autovacuum keeps on a live database: without them, right after a bulk insert,
        # Postgres guesses a join order that reads every message for each page (seconds, not a millisecond).
        database.execute_sql("ANALYZE")
        database.close()
        results = [run_export(shape, ZoneInfo("Europe/Paris")) for shape in options.formats.split(",")]
    checks = {f"{result['format']}: growth < {GOAL_MIB} MB": result["growth_mib"] * 1.048576 < GOAL_MIB
              for result in results}
    database_name = "postgres" if options.postgres else "sqlite"
    if options.json:
        print(json.dumps({"database": database_name, "fill_seconds": round(filled, 1), "exports": results,
                          "checks": checks}, indent=2))
    else:
        print(f"database {database_name}, {options.messages} messages stored in {filled:.1f} s")
        for result in results:
            print(", ".join(f"{key} {value}" for key, value in result.items()))
        for name, passed in checks.items():
            print(f"{'PASS' if passed else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
