"""Measure the knowledge: retrieval over many passages, indexing many pages, and how much of each
request a provider's prompt cache could serve.

Run by hand: `python bench/knowledge.py` (about a minute; `--help` for the options). It starts its
own Redis and the loopback fakes of tests/fakes.py (an embeddings fake of hashed words), on an
SQLite file (or `--postgres`), in this process. Three measurements:

1. Retrieval: `--passages` (20,000) passages of `--dimensions` (512) random unit vectors and 180
   words each are stored (function words and 20,000 made-up words, drawn by Zipf's law as words in
   text are); then `--questions` (200) questions, each embedded beforehand (a provider's
   round trip is not the search), are searched one after the other. Prints p50/p99/max of one
   search (the database's version and lexical queries, the matrix product, fusion, the texts), and
   the process's resident memory before the first search and after. Goals: p99 < 30 ms, growth
   ≤ 100 MB.
2. Indexing: a Markdown document of `--pages` (1,000) pages of about 400 words, through the worker's
   Indexer. Prints the time in all and the time spent waiting for the embeddings fake. Goal: ≤ 60 s
   plus the embedding calls.
3. Prompt prefix: a `--turns` (40) turn conversation through the webhook and a real RQ worker, with
   knowledge; for each request, the share of its messages (as JSON text) that repeats the previous
   request's from the start, and that share over all the requests' text together (what a provider's
   cache can serve of the conversation). Goal: ≥ 80 % over all.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

import numpy as np  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from bench.proc_memory import read_kib  # noqa: E402
from chatbot import create_app  # noqa: E402
from chatbot.jobs import tasks  # noqa: E402
from chatbot.knowledge import sources  # noqa: E402
from chatbot.knowledge.retrieval import STOP_WORDS, Retriever, to_stored  # noqa: E402
from chatbot.models import KnowledgeSource, Passage, SourceKind, SourceStatus, migrations, utcnow  # noqa: E402
from chatbot.models.db import database  # noqa: E402
from chatbot.services import build_services  # noqa: E402
from config import Config  # noqa: E402
from tests.fakes import FakeOpenRouter, FakeTwilio  # noqa: E402
from tests.support import (  # noqa: E402
    ACCOUNT_SID,
    AUTH_TOKEN,
    BOT_NUMBER,
    BurstWorker,
    RedisServer,
    inbound_form,
    sign,
    throwaway_postgres_database,
)
from worker import build_worker  # noqa: E402

PUBLIC_BASE_URL = "https://bench.example.com"
WORDS = ("return refund delivery order price fan desk tower warranty opening hours shop monday saturday "
         "invoice payment card transfer parcel courier address store branch product code stock size colour "
         "battery charger cable screen repair service contract cancel subscription discount voucher gift").split()


def zipf_vocabulary(size: int, rng: random.Random) -> tuple[list[str], list[float]]:
    """Words as text has them: the most frequent are function words (the lexical ranking drops
    them), the rest made-up words whose frequency falls with their rank (Zipf's law)."""
    syllables = ["ka", "lo", "mi", "ren", "to", "sa", "vi", "der", "po", "lun", "ek", "tra", "bo", "nis", "qua"]
    made_up = set()
    while len(made_up) < size:
        made_up.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    words = sorted(STOP_WORDS) + sorted(made_up)
    return words, list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def resident_mib() -> float:
    return read_kib("/proc/self/status", ("VmRSS",))["VmRSS"] / 1024


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


class Bench:
    """A deployment in this process: its own Redis, the loopback fakes, the services and a test client."""

    # The OpenRouter fake it talks to (bench/tools.py brings one that calls tools).
    model_fake = FakeOpenRouter

    def __init__(self, folder: Path, database_url: str, **settings: str):
        self.redis = RedisServer(folder).start()
        self.openrouter = self.model_fake().start()
        self.twilio = FakeTwilio().start()
        (folder / "metrics").mkdir()
        self.env = {
            "SECRET_KEY": "bench", "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "REDIS_URL": self.redis.url, "DATABASE_URL": database_url,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_WHATSAPP_NUMBER": BOT_NUMBER,
            "TWILIO_API_BASE_URL": self.twilio.url, "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "OPENROUTER_API_KEY": "sk-or-v1-bench", "OPENROUTER_BASE_URL": self.openrouter.url + "/api/v1",
            "ALLOW_PRIVATE_HOSTS": "1", "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
            "RATE_LIMIT_MESSAGES": "1000", **settings,
        }
        self.services = build_services(Config.from_mapping(self.env))
        migrations.upgrade()
        tasks.install(self.services)
        self.client = create_app(services=self.services).test_client()

    def stop(self) -> None:
        tasks.install(None)
        self.openrouter.stop()
        self.twilio.stop()
        self.redis.stop()

    # --- 1. retrieval ------------------------------------------------------------------------------

    def retrieval(self, passages: int, dimensions: int, questions: int) -> dict:
        rng, vectors = random.Random(1), np.random.default_rng(1)
        vocabulary, weights = zipf_vocabulary(20_000, rng)

        def text(words: int) -> str:
            return " ".join(rng.choices(vocabulary, cum_weights=weights, k=words))

        retriever = Retriever("bench/embedder", dimensions, max_tokens=800)
        with database.atomic():
            source = KnowledgeSource.create(kind=SourceKind.TEXT.value, title="Bench", status=SourceStatus.READY.value,
                                            embedding_model=retriever.key, indexed_at=utcnow(), passage_count=passages)
            rows = []
            for position in range(passages):
                rows.append({"source": source.id, "position": position, "heading": f"Page {position}",
                             "text": text(180), "tokens": 220,
                             "vector": to_stored(vectors.standard_normal(dimensions)),
                             "embedding_model": retriever.key})
                if len(rows) == 500:
                    Passage.insert_many(rows).execute()
                    rows = []
            if rows:
                Passage.insert_many(rows).execute()
            Passage.add_lexical([passage_id for (passage_id,) in
                                 Passage.select(Passage.id).where(Passage.source == source.id).tuples()])
        Passage.refresh_statistics()  # as the indexer does
        asked = [text(10) for _ in range(questions)]
        for text in asked:  # the question's embedding is the provider's round trip, not the search
            retriever._memo[text] = np.asarray(np.frombuffer(to_stored(vectors.standard_normal(dimensions)),
                                                             dtype=np.float32))
        adapter = self.services.ai_factory.current()
        before = resident_mib()
        times = []
        for text in asked:
            started = time.perf_counter()
            found = retriever.search(adapter, text, "")
            times.append((time.perf_counter() - started) * 1000)
            assert found.best_score is not None
        after = resident_mib()
        Passage.remove_of(source.id)
        KnowledgeSource.delete_by_id(source.id)
        return {"passages": passages, "dimensions": dimensions, "questions": questions,
                "first_ms": round(times[0], 1), "p50_ms": round(statistics.median(times[1:]), 2),
                "p99_ms": round(percentile(times[1:], 0.99), 2), "max_ms": round(max(times[1:]), 2),
                "rss_before_mib": round(before, 1), "rss_after_mib": round(after, 1),
                "growth_mib": round(after - before, 1)}

    # --- 2. indexing -------------------------------------------------------------------------------

    def indexing(self, pages: int) -> dict:
        rng = random.Random(2)
        text = "\n\n".join(f"# Page {page}\n\n" + "\n\n".join(sentence(rng, 20) for _ in range(20))
                           for page in range(pages))
        source = sources.add_text(self.services.queue, text, "Manual")
        self.services.queue.empty()
        before = len(self.openrouter.embedding_requests)
        waited = []
        original = self.services.retriever.embed

        def timed_embed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                waited.append(time.perf_counter() - started)

        self.services.retriever.embed = timed_embed
        started = time.perf_counter()
        status = self.services.indexer.index(source.id, self.services.ai_factory.current())
        elapsed = time.perf_counter() - started
        self.services.retriever.embed = original
        stored = KnowledgeSource.get_by_id(source.id)
        sources.remove(source.id)
        return {"pages": pages, "words": len(text.split()), "status": status, "passages": stored.passage_count,
                "embedding_requests": len(self.openrouter.embedding_requests) - before,
                "seconds": round(elapsed, 2), "embedding_seconds": round(sum(waited), 2),
                "seconds_without_embedding": round(elapsed - sum(waited), 2)}

    # --- 3. prompt prefix --------------------------------------------------------------------------

    def prefix(self, turns: int) -> dict:
        rng = random.Random(3)
        topics = ["returns", "delivery", "warranty", "payment", "opening hours", "repairs"]
        for topic in topics:
            body = "\n\n".join(f"## {topic.title()} {part}\n\n" + " ".join(sentence(rng, 18) for _ in range(6))
                               for part in range(4))
            sources.add_text(self.services.queue, f"# {topic.title()}\n\n{body}", topic.title())
        worker = build_worker(self.services, worker_class=BurstWorker)
        worker.work(burst=True, with_scheduler=False)
        first = len(self.openrouter.completions)
        self.openrouter.reply_for = lambda messages: "Here is what our policy says about that: " + sentence(rng, 25)
        sender = "whatsapp:+15550004242"
        for turn in range(turns):
            question = f"Tell me about {rng.choice(topics)} {rng.choice(WORDS)} {rng.choice(WORDS)}, please ({turn})"
            form = inbound_form(question, sender)
            url = PUBLIC_BASE_URL + "/whatsapp/webhook"
            response = self.client.post("/whatsapp/webhook", data=form, headers={"X-Twilio-Signature": sign(url, form)})
            assert response.status_code == 200, response.get_data(as_text=True)
            worker.work(burst=True, with_scheduler=False)
        prompts = [request.body["messages"] for request in self.openrouter.completions[first:]]
        shares, shared_chars, total_chars = [], 0, 0
        for earlier, later in zip(prompts, prompts[1:], strict=False):
            shared = 0
            for previous, current in zip(earlier, later, strict=False):
                if previous != current:
                    break
                shared += 1
            prefix_chars, later_chars = len(json.dumps(later[:shared])) if shared else 0, len(json.dumps(later))
            shares.append(prefix_chars / later_chars)
            shared_chars += prefix_chars
            total_chars += later_chars
        given = sum(1 for prompt in prompts if prompt[-2]["role"] == "system")
        return {"turns": turns, "requests": len(prompts), "with_knowledge": given,
                "share_of_all_prompts": round(shared_chars / total_chars, 3),
                "mean_share": round(statistics.mean(shares), 3), "median_share": round(statistics.median(shares), 3),
                "min_share": round(min(shares), 3), "shares": [round(share, 2) for share in shares],
                "last_prompt_messages": len(prompts[-1]), "last_prompt_chars": len(json.dumps(prompts[-1]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=20_000)
    parser.add_argument("--dimensions", type=int, default=512)
    parser.add_argument("--questions", type=int, default=200, help="at most 256: the question memo's size")
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--postgres", action="store_true", help="a throwaway database on 127.0.0.1:5432")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("rq").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        if options.postgres:
            context = throwaway_postgres_database("postgresql://postgres@127.0.0.1:5432/postgres", "bench_knowledge")
            database_url = context.__enter__()
        else:
            context, database_url = None, f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
        os.environ.pop("DATABASE_URL", None)
        bench = Bench(Path(folder), database_url)
        try:
            results = {"retrieval": bench.retrieval(options.passages, options.dimensions, options.questions),
                       "indexing": bench.indexing(options.pages),
                       "prefix": bench.prefix(options.turns)}
        finally:
            bench.stop()
            database.close()
            if context is not None:
                context.__exit__(None, None, None)
    retrieval, indexing, prefix = results["retrieval"], results["indexing"], results["prefix"]
    checks = {
        "retrieval p99 < 30 ms": retrieval["p99_ms"] < 30,
        "index memory growth <= 100 MB": retrieval["growth_mib"] * 1.048576 <= 100,
        "indexing <= 60 s plus the embedding calls": indexing["seconds_without_embedding"] <= 60,
        "prompt prefix share >= 80 %": prefix["share_of_all_prompts"] >= 0.8,
    }
    if options.json:
        print(json.dumps({**results, "checks": checks}, indent=2))
    else:
        for name, figures in results.items():
            print(f"{name}: " + ", ".join(f"{key} {value}" for key, value in figures.items()))
        for name, passed in checks.items():
            print(f"{'PASS' if passed else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
