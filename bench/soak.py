"""Soak the whole pipeline with thousands of signed webhooks, redeliveries and bursts; check every reply.

Run by hand: `python bench/soak.py` (see `--help` and bench/SOAK.md).
"""
from __future__ import annotations

import argparse
import heapq
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

import psycopg2  # noqa: E402
from redis import Redis  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402
from rq import Queue  # noqa: E402
from rq.registry import FailedJobRegistry, ScheduledJobRegistry  # noqa: E402

from bench.bench_pipeline import (  # noqa: E402
    REPLY_PREFIX,
    WEBHOOK_PATH,
    BenchError,
    Children,
    Deployment,
    SignedRequest,
    TimedTwilio,
    jobs_waiting,
    late_positions,
    percentile,
    progress,
    signed_webhook,
    start_redis,
    trouble_lines,
    wait_for_workers,
    wait_until_answering,
)
from bench.proc_memory import MemorySampler, TreeMemory  # noqa: E402
from chatbot.services import QUEUE_NAME  # noqa: E402
from tests.fakes import FakeOpenRouter  # noqa: E402
from tests.support import throwaway_postgres_database  # noqa: E402

# A keep-alive connection idle this long is replaced before use: gunicorn closes it after 5 s.
IDLE_RECONNECT = 3.0
LATER_REDELIVERY = (0.5, 3.0)
BURST_SIZES = (5, 10)
# How long a concurrent redelivery waits for its twin to be picked up by another connection.
TWIN_WAIT = 2.0
# Settle time after the last expected reply, so a reply sent twice can still show up.
SETTLE_SECONDS = 2.0
# Log lines that fail the run; warnings are reported but do not.
ERROR_MARKERS = (" ERROR ", " CRITICAL ", "Traceback", "[ERROR]", "[CRITICAL]", "WORKER TIMEOUT")


# --- the plan: who sends what, when, and what gets redelivered ---------------------------------

CONCURRENT = "concurrent"
LATER = "later"


@dataclass
class PlannedMessage:
    """One unique inbound message, its signed webhook, and whether Twilio redelivers it."""

    sender_index: int
    seq: int
    sender: str
    text: str
    request: SignedRequest
    offset: float  # seconds after the start at which the sender wants to send it
    group: int  # the sender's burst (or single message) this one belongs to
    in_burst: bool
    redelivery: str | None = None  # None, CONCURRENT (both posts at once) or LATER (after the 200)
    twins: threading.Barrier | None = None  # lines up the two posts of a CONCURRENT redelivery
    first_post_at: float | None = None


@dataclass
class Post:
    """One HTTP POST of a planned message (the original or a redelivery)."""

    message: PlannedMessage
    kind: str  # "original", CONCURRENT or LATER
    started: float = 0.0
    finished: float = 0.0
    outcome: str = ""  # "200", "HTTP 503", an exception name, or "not posted"


def plan_messages(args, run_id: str) -> list[list[PlannedMessage]]:
    """Return each sender's messages in the order the sender sends them."""
    rng = random.Random(args.seed)
    counts = [1] * args.senders
    for index in rng.choices(range(args.senders), k=args.messages - args.senders):
        counts[index] += 1
    bursty = set(rng.sample(range(args.senders), round(args.senders * args.burst_senders)))
    window = args.messages / args.rate if args.rate else 0.0
    plans = []
    for index, count in enumerate(counts):
        sender = f"whatsapp:+1557{index:07d}"
        # A burst is 5-10 messages sent back to back; everyone else sends one message at a time.
        groups, left = [], count
        while left:
            size = min(left, rng.randint(*BURST_SIZES)) if index in bursty else 1
            groups.append(size)
            left -= size
        offsets = sorted(rng.uniform(0, window) for _ in groups)
        messages = []
        for group, (size, offset) in enumerate(zip(groups, offsets, strict=True)):
            for _ in range(size):
                seq = len(messages)
                text = f"soak {run_id} sender {index:03d} seq {seq:03d}"
                messages.append(PlannedMessage(index, seq, sender, text,
                                               signed_webhook(text, sender),
                                               offset, group, in_burst=size >= BURST_SIZES[0]))
        plans.append(messages)
    everything = [message for messages in plans for message in messages]
    redelivered = rng.sample(everything, round(len(everything) * args.duplicates))
    concurrent = round(len(redelivered) * args.concurrent_share)
    for number, message in enumerate(redelivered):
        message.redelivery = CONCURRENT if number < concurrent else LATER
        if message.redelivery == CONCURRENT:
            message.twins = threading.Barrier(2)
    return plans


# --- the load generator ------------------------------------------------------------------------

class SoakLoad:
    """Posts every planned webhook over a fixed set of keep-alive connections.

    A sender's next message goes out only once every post of its previous one was answered (so the
    order the sender sent them in is defined); a concurrent redelivery is posted alongside the
    original, a later one 0.5-3 s after the original's answer without holding the sender back.
    """

    def __init__(self, port: int, plans: list[list[PlannedMessage]], connections: int, seed: int):
        self.port = port
        self.plans = plans
        self.connections = connections
        self.rng = random.Random(seed + 1)
        self.condition = threading.Condition()
        self.ready: list[tuple[float, int, Post]] = []
        self.order = itertools.count()
        self.in_flight: dict[int, int] = {}
        self.next_seq: dict[int, int] = {}
        self.last_due: dict[int, float] = {}
        self.posts: list[Post] = []
        self.total = self.remaining = sum(len(m) + sum(x.redelivery is not None for x in m) for m in plans)
        self.stopping = False
        self.start = 0.0

    def _queue(self, due: float, post: Post) -> None:
        heapq.heappush(self.ready, (due, next(self.order), post))
        self.posts.append(post)

    def _queue_message(self, message: PlannedMessage, not_before: float) -> None:
        sender = message.sender_index
        if message.seq and self.plans[sender][message.seq - 1].group == message.group:
            # The rest of a burst keeps its first message's place: it goes out back to back,
            # ahead of everything that became due since.
            due = self.last_due[sender]
        else:
            due = max(self.start + message.offset, not_before)
        self.last_due[sender] = due
        self._queue(due, Post(message, "original"))
        posts = 1
        if message.redelivery == CONCURRENT:
            self._queue(due, Post(message, CONCURRENT))
            posts = 2
        self.in_flight[sender] = posts

    def _take(self) -> Post | None:
        with self.condition:
            while True:
                if self.stopping or not self.remaining:
                    return None
                now = time.perf_counter()
                if self.ready and self.ready[0][0] <= now:
                    self.remaining -= 1
                    return heapq.heappop(self.ready)[2]
                self.condition.wait(self.ready[0][0] - now if self.ready else None)

    def _answered(self, post: Post) -> None:
        with self.condition:
            if post.kind != LATER:
                sender = post.message.sender_index
                self.in_flight[sender] -= 1
                if not self.in_flight[sender]:
                    if post.message.redelivery == LATER:
                        self._queue(time.perf_counter() + self.rng.uniform(*LATER_REDELIVERY),
                                    Post(post.message, LATER))
                    seq = self.next_seq[sender] = self.next_seq[sender] + 1
                    if seq < len(self.plans[sender]):
                        self._queue_message(self.plans[sender][seq], time.perf_counter())
            self.condition.notify_all()

    def _client(self) -> None:
        connection, last_used = None, 0.0
        while (post := self._take()) is not None:
            if post.message.twins and post.kind != LATER:
                try:
                    post.message.twins.wait(TWIN_WAIT)
                except threading.BrokenBarrierError:
                    pass  # the twin is stuck behind other posts; send this one anyway
            if connection is None or time.perf_counter() - last_used > IDLE_RECONNECT:
                if connection is not None:
                    connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            request = post.message.request
            post.started = time.perf_counter()
            try:
                connection.request("POST", WEBHOOK_PATH, request.body, request.headers)
                response = connection.getresponse()
                response.read()
                post.outcome = "200" if response.status == 200 else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as exc:
                post.outcome = exc.__class__.__name__
                connection.close()
                connection = None
            post.finished = last_used = time.perf_counter()
            self._answered(post)
        if connection is not None:
            connection.close()

    def run(self, deadline_seconds: float) -> None:
        """Post everything, or stop taking new posts after `deadline_seconds`."""
        self.start = time.perf_counter()
        with self.condition:
            for sender, messages in enumerate(self.plans):
                self.next_seq[sender] = 0
                self._queue_message(messages[0], self.start)
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.connections)]
        for thread in threads:
            thread.start()
        deadline = self.start + deadline_seconds
        try:
            for thread in threads:
                while thread.is_alive() and time.perf_counter() < deadline:
                    thread.join(0.5)
        finally:
            with self.condition:
                self.stopping = True
                self.condition.notify_all()
            for thread in threads:
                thread.join(15)
        for post in self.posts:
            if not post.started:
                post.outcome = "not posted"


# --- the run -----------------------------------------------------------------------------------

def wait_for_all_replies(twilio: TimedTwilio, expected: set[str], redis: Redis, timeout: float) -> bool:
    """Wait until every expected reply body reached the fake Twilio; report progress every 10 s."""
    started = time.monotonic()
    next_report = started + 10
    while True:
        with twilio.lock:
            missing = sum(body not in twilio.arrivals for body in expected)
        if not missing:
            return True
        now = time.monotonic()
        if now - started > timeout:
            return False
        if now >= next_report:
            try:
                waiting = jobs_waiting(redis)
            except RedisError:
                waiting = "?"
            progress(f"{len(expected) - missing}/{len(expected)} replies so far, {waiting} job(s) waiting")
            next_report = now + 10
        time.sleep(0.2)


def database_counts(database_url: str) -> dict:
    """Count what the pipeline stored: messages by role and status, webhook log rows by verdict."""
    from peewee import fn

    from chatbot.models import Message, WebhookLog
    from chatbot.models.db import database, open_database

    open_database(database_url)
    try:
        with database.connection_context():
            messages = {
                f"{role}/{status}": count
                for role, status, count in (Message
                                            .select(Message.role, Message.status, fn.COUNT(Message.id))
                                            .group_by(Message.role, Message.status)
                                            .tuples())
            }
            verdicts = {
                str(verdict): count
                for verdict, count in (WebhookLog
                                       .select(WebhookLog.verdict, fn.COUNT(WebhookLog.id))
                                       .group_by(WebhookLog.verdict)
                                       .tuples())
            }
    finally:
        if not database.is_closed():
            database.close()
        database.obj.close_all()
    return {"messages": messages, "webhook_log_verdicts": verdicts}


def verify(plans, load: SoakLoad, twilio: TimedTwilio) -> dict:
    """Match every reply to its message and check loss, doubles, order and webhook answers."""
    messages = {message.text: message for sender in plans for message in sender}
    for post in load.posts:
        if post.started and (post.message.first_post_at is None or post.started < post.message.first_post_at):
            post.message.first_post_at = post.started
    with twilio.lock:
        arrivals = {body: list(times) for body, times in twilio.arrivals.items()}
        sent = [request.body for request in twilio.requests if request.path.endswith("/Messages.json")]

    lost, doubled, latencies = [], [], []
    for text, message in messages.items():
        times = arrivals.get(REPLY_PREFIX + text, [])
        if not times:
            lost.append(message)
            continue
        if len(times) > 1:
            doubled.append((message, len(times)))
        if message.first_post_at is not None:
            latencies.append((min(times) - message.first_post_at) * 1000)
    latencies.sort()

    unexpected, seen = [], set()
    arrival_order: dict[int, list[int]] = defaultdict(list)
    for form in sent:
        body = form.get("Body", "")
        message = messages.get(body[len(REPLY_PREFIX):]) if body.startswith(REPLY_PREFIX) else None
        if message is None or form.get("To") != message.sender:
            unexpected.append(body[:120])
            continue
        if body not in seen:
            seen.add(body)
            arrival_order[message.sender_index].append(message.seq)
    out_of_order = []
    for sender, order in sorted(arrival_order.items()):
        for position in late_positions(order):
            out_of_order.append({"sender": sender, "seq": order[position], "arrived_after_seq": max(order[:position]),
                                 "arrival_order": order[max(0, position - 4):position + 2]})

    outcomes = Counter(post.outcome for post in load.posts)
    posted = [post for post in load.posts if post.started]
    webhook_ms = sorted((post.finished - post.started) * 1000 for post in posted)
    span = (max(post.finished for post in posted) - min(post.started for post in posted)) if posted else 0.0
    concurrent = [post for post in load.posts if post.kind == CONCURRENT and post.started]
    originals = {post.message.text: post for post in load.posts if post.kind == "original"}
    overlapping = sum(
        1 for post in concurrent
        if post.started < originals[post.message.text].finished and originals[post.message.text].started < post.finished
    )
    return {
        "unique_messages": len(messages),
        "senders": len(plans),
        "senders_with_bursts": sum(1 for sender in plans if any(message.in_burst for message in sender)),
        "messages_in_bursts": sum(message.in_burst for message in messages.values()),
        "posts": len(posted),
        "posts_planned": load.total,
        "duplicates_posted": sum(post.kind != "original" for post in load.posts),
        "duplicates_concurrent": len(concurrent),
        "duplicates_concurrent_overlapping": overlapping,
        "duplicates_later": sum(post.kind == LATER for post in load.posts),
        "webhook_outcomes": dict(outcomes),
        "webhook_not_200": load.total - outcomes["200"],
        "webhook_seconds": round(span, 2),
        "webhook_requests_per_second": round(len(posted) / span, 1) if span else 0.0,
        "webhook_p50_ms": round(percentile(webhook_ms, 50), 1),
        "webhook_p99_ms": round(percentile(webhook_ms, 99), 1),
        "webhook_max_ms": round(percentile(webhook_ms, 100), 1),
        "replies": len(sent),
        "replied_messages": len(messages) - len(lost),
        "lost": len(lost),
        "doubled": len(doubled),
        "extra_replies": sum(count - 1 for _, count in doubled),
        "out_of_order": len(out_of_order),
        "unexpected_replies": len(unexpected),
        "end_to_end_p50_ms": round(percentile(latencies, 50), 1),
        "end_to_end_p99_ms": round(percentile(latencies, 99), 1),
        "end_to_end_max_ms": round(percentile(latencies, 100), 1),
        "examples": {
            "lost": [message.text for message in lost[:10]],
            "doubled": [f"{message.text} x{count}" for message, count in doubled[:10]],
            "out_of_order": out_of_order[:10],
            "unexpected": unexpected[:10],
        },
    }


def soak(args, deployment: Deployment, redis: Redis, twilio: TimedTwilio, database_url: str,
         report: dict) -> None:
    redis.flushdb()
    progress(f"starting gunicorn (wsgi:app) and {args.workers} worker(s) running "
             f"{args.worker_concurrency} job(s) at once each")
    server, port = deployment.start_gunicorn("gunicorn", "wsgi:app", database_url)
    workers = [deployment.start_worker(f"worker-{number}", database_url, args.worker_concurrency)
               for number in range(1, args.workers + 1)]
    wait_until_answering(port, "/health", server, deployment.children, (200,))
    wait_for_workers(redis, workers, deployment.children)

    run_id = uuid.uuid4().hex[:8]
    plans = plan_messages(args, run_id)
    memory = {
        "gunicorn": TreeMemory([server.pid], transient_descendants=False),
        "workers": TreeMemory([worker.pid for worker in workers], transient_descendants=True),
    }
    sampler = MemorySampler(memory, args.sample_interval)
    sampler.start()
    load = SoakLoad(port, plans, args.connections, args.seed)
    pace = f"{args.rate:g} messages/s" if args.rate else "as fast as answers come back"
    progress(f"posting {args.messages} messages from {args.senders} senders, {pace}, "
             f"over {args.connections} connections")
    wall_start = time.perf_counter()
    try:
        load.run(args.post_timeout)
        progress(f"posted {sum(1 for post in load.posts if post.started)} webhooks in "
                 f"{time.perf_counter() - wall_start:.1f}s; waiting for the replies")
        expected = {REPLY_PREFIX + message.text for sender in plans for message in sender}
        all_arrived = wait_for_all_replies(twilio, expected, redis, args.drain_timeout)
        drained = time.perf_counter()
        if all_arrived:
            time.sleep(SETTLE_SECONDS)
    finally:
        sampler.stop()
    queue = Queue(QUEUE_NAME, connection=redis)
    report["jobs"] = {
        "failed": FailedJobRegistry(queue=queue).count,
        "waiting_for_retry": ScheduledJobRegistry(queue=queue).count,
        "still_waiting": jobs_waiting(redis),
    }
    for process in [server, *workers]:
        deployment.children.stop(process)
    report["results"] = verify(plans, load, twilio)
    report["results"]["all_replies_within_timeout"] = all_arrived
    with twilio.lock:
        last_reply = max((max(times) for times in twilio.arrivals.values()), default=drained)
    report["results"]["wall_seconds"] = round((last_reply if all_arrived else drained) - wall_start, 1)
    report["memory"] = {name: tree.summary() for name, tree in memory.items()}
    report["database"] = database_counts(database_url)


def checks(report: dict) -> dict[str, bool]:
    """Name each pass/fail condition of the run."""
    results, jobs, stored = report["results"], report["jobs"], report["database"]
    expected_stored = {"user/answered": results["unique_messages"], "assistant/sent": results["unique_messages"]}
    return {
        "every webhook answered 200": results["webhook_not_200"] == 0,
        "no message lost": results["lost"] == 0,
        "no message answered twice": results["doubled"] == 0,
        "replies in each sender's order": results["out_of_order"] == 0,
        "no unexpected replies": results["unexpected_replies"] == 0,
        "stored once each, all answered and sent": stored["messages"] == expected_stored,
        "every redelivery logged as duplicate":
            stored["webhook_log_verdicts"].get("duplicate", 0) == results["duplicates_posted"],
        "no failed or retrying jobs": jobs["failed"] == 0 and jobs["waiting_for_retry"] == 0,
        "no errors in the logs": not report["log_errors"],
    }


# --- report ------------------------------------------------------------------------------------

def print_report(report: dict) -> None:
    setup, results = report["setup"], report.get("results")
    print()
    print(f"Soak: {setup['messages']} messages from {setup['senders']} senders, "
          f"{setup['connections']} connections, {setup['workers']} worker(s) x WORKER_CONCURRENCY "
          f"{setup['worker_concurrency']}, "
          f"{setup['database']}, LLM delay {setup['llm_delay']:g}s, "
          f"{'paced at ' + format(setup['rate'], 'g') + '/s' if setup['rate'] else 'unpaced'}")
    print(f"Machine: {setup['cpus']} CPU(s), load average {setup['load_average_before']} before the run; "
          f"gunicorn {setup['web_concurrency']} workers x {setup['gunicorn_threads']} thread(s)")
    print()
    print(f"  unique messages   {results['unique_messages']:>6}   ({results['messages_in_bursts']} of them in bursts "
          f"of 5-10 from {results['senders_with_bursts']} senders)")
    print(f"  duplicates posted {results['duplicates_posted']:>6}   "
          f"({results['duplicates_concurrent']} concurrent, {results['duplicates_concurrent_overlapping']} of them "
          f"overlapping the original in flight; {results['duplicates_later']} later)")
    print(f"  webhooks posted   {results['posts']:>6}   of {results['posts_planned']} planned; outcomes: "
          + ", ".join(f"{outcome}: {count}" for outcome, count in sorted(results["webhook_outcomes"].items())))
    print(f"  replies           {results['replies']:>6}")
    print(f"  lost              {results['lost']:>6}")
    print(f"  doubled           {results['doubled']:>6}")
    print(f"  out of order      {results['out_of_order']:>6}")
    print(f"  unexpected        {results['unexpected_replies']:>6}")
    print()
    print(f"  webhook throughput {results['webhook_requests_per_second']:.1f} req/s "
          f"({results['posts']} posts in {results['webhook_seconds']:.1f}s); webhook latency "
          f"p50 {results['webhook_p50_ms']:.1f} ms, p99 {results['webhook_p99_ms']:.1f} ms, "
          f"max {results['webhook_max_ms']:.1f} ms")
    print(f"  end to end (POST -> Twilio send): p50 {results['end_to_end_p50_ms']:.0f} ms, "
          f"p99 {results['end_to_end_p99_ms']:.0f} ms, max {results['end_to_end_max_ms']:.0f} ms"
          + ("" if setup["rate"] else " (unpaced: mostly time spent queued behind the backlog)"))
    print(f"  wall time {results['wall_seconds']:.1f}s from the first POST to the last reply"
          + ("" if results["all_replies_within_timeout"] else " (gave up waiting)")
          + f"; {report['run_seconds']:.0f}s in all with start-up and shutdown")
    jobs = report["jobs"]
    print(f"  jobs: failed {jobs['failed']}, waiting for retry {jobs['waiting_for_retry']}, "
          f"still waiting {jobs['still_waiting']}")
    stored = report["database"]
    print("  stored: " + ", ".join(f"{k} {v}" for k, v in sorted(stored["messages"].items()))
          + "; webhook log: " + ", ".join(f"{k} {v}" for k, v in sorted(stored["webhook_log_verdicts"].items())))
    print()
    print(f"  {'memory (MiB)':<24}{'peak RSS':>10}{'peak PSS':>10}{'max VmHWM':>11}  long-lived RSS first -> last")
    for name, label in (("gunicorn", "gunicorn master+workers"), ("workers", "worker.py + children")):
        tree = report["memory"][name]
        print(f"  {label:<24}{tree['peak_rss_total_mib']:>10.1f}{tree['peak_pss_total_mib']:>10.1f}"
              f"{tree['largest_process_vmhwm_mib']:>11.1f}  "
              f"{tree['long_lived_rss_first_mib']:.1f} -> {tree['long_lived_rss_last_mib']:.1f}")
    horses = report["memory"]["workers"]
    print(f"  (sampled every {setup['sample_interval']:g}s; the RSS sum counts pages shared since fork in every "
          f"process, PSS splits them; {horses['work_horses_seen']} child processes of the workers caught alive, "
          f"largest VmHWM {horses['largest_work_horse_vmhwm_mib']:.1f} MiB)")
    examples = results["examples"]
    for name in ("lost", "doubled", "out_of_order", "unexpected"):
        if examples[name]:
            print(f"  first {name.replace('_', ' ')}: {examples[name][:5]}")
    if report["log_errors"]:
        print()
        print("Errors in the child process logs (logs kept in " + str(report["log_dir"]) + "):")
        for name, lines in report["log_errors"].items():
            print(f"  {name}: {len(lines)} line(s), first: {lines[0][:200]}")
    warnings = {name: lines for name, lines in report["log_trouble"].items() if name not in report["log_errors"]}
    for name, lines in warnings.items():
        print(f"  warnings in {name}: {len(lines)} line(s), first: {lines[0][:200]}")
    print()
    for name, passed in report["checks"].items():
        print(f"  {'PASS' if passed else 'FAIL'}  {name}")
    print()
    print("SOAK PASSED" if report["passed"] else "SOAK FAILED")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load = parser.add_argument_group("load")
    load.add_argument("--messages", type=int, default=5000, help="unique messages (default 5000)")
    load.add_argument("--senders", type=int, default=500, help="distinct senders (default 500)")
    load.add_argument("--connections", type=int, default=20, help="keep-alive connections (default 20)")
    load.add_argument("--rate", type=float, default=0.0,
                      help="unique messages per second to offer; 0 posts as fast as answers come back (default 0)")
    load.add_argument("--duplicates", type=float, default=0.05,
                      help="share of messages Twilio delivers twice (default 0.05)")
    load.add_argument("--concurrent-share", type=float, default=0.5,
                      help="share of the redeliveries posted alongside the original (default 0.5)")
    load.add_argument("--burst-senders", type=float, default=0.1,
                      help="share of senders who send in bursts of 5-10 back to back (default 0.1)")
    load.add_argument("--seed", type=int, default=1, help="seed of the plan (default 1)")
    pipeline = parser.add_argument_group("pipeline")
    pipeline.add_argument("--workers", type=int, default=2, help="`python worker.py` processes (default 2)")
    pipeline.add_argument("--worker-concurrency", type=int, default=16,
                          help="WORKER_CONCURRENCY of each worker process: jobs it runs at once (default 16)")
    pipeline.add_argument("--llm-delay", type=float, default=0.0,
                          help="seconds the fake OpenRouter takes per answer (default 0)")
    pipeline.add_argument("--postgres", action="store_true",
                          help="use a throwaway Postgres database instead of an SQLite file")
    pipeline.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                          help="the Postgres server's admin URL (default postgresql://postgres@127.0.0.1:5432/postgres)")
    pipeline.add_argument("--redis-url",
                          help="use this Redis database (flushed before and after) instead of a redis-server "
                               "of the run's own")
    bounds = parser.add_argument_group("time bounds")
    bounds.add_argument("--post-timeout", type=float, default=90.0,
                        help="stop posting after this many seconds (default 90)")
    bounds.add_argument("--drain-timeout", type=float, default=180.0,
                        help="seconds to wait for the last replies after posting (default 180)")
    parser.add_argument("--sample-interval", type=float, default=0.1,
                        help="seconds between memory samples (default 0.1)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp folder with the logs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.messages < args.senders:
        parser.error("--messages must be at least --senders (every sender sends one)")
    if args.worker_concurrency < 1:
        parser.error("--worker-concurrency must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Python leaves SIGINT ignored when started in the background of a script; Ctrl-C must still stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="chatbot-soak-"))
    children = Children(workdir)
    openrouter, twilio = FakeOpenRouter(), TimedTwilio()
    openrouter.delay_for = lambda messages: args.llm_delay
    # The run's own redis-server and Postgres database, stopped and dropped last of all.
    servers = ExitStack()
    redis = None
    report = {"setup": {
        "cpus": os.cpu_count(),
        "load_average_before": round(os.getloadavg()[0], 2),
        "database": "Postgres" if args.postgres else "SQLite",
        "web_concurrency": int(os.environ.get("WEB_CONCURRENCY", "2")),
        "gunicorn_threads": int(os.environ.get("GUNICORN_THREADS", "1")),
        **{name: getattr(args, name) for name in ("messages", "senders", "connections", "rate", "duplicates",
                                                  "burst_senders", "workers", "worker_concurrency", "llm_delay",
                                                  "sample_interval")},
    }}
    failed_to_run = None
    try:
        redis_url = args.redis_url
        if not redis_url:
            redis_server = start_redis(workdir)
            servers.callback(redis_server.stop)
            redis_url = redis_server.url
        redis = Redis.from_url(redis_url)
        redis.ping()
        openrouter.start()
        twilio.start()
        deployment = Deployment(workdir, redis_url, twilio.url, openrouter.url, children)
        if args.postgres:
            database_url = servers.enter_context(throwaway_postgres_database(args.postgres_url, "chatbot_soak"))
            deployment.init_schema(database_url)
        else:
            database_url = deployment.fresh_database("soak")
        soak(args, deployment, redis, twilio, database_url, report)
    except (KeyboardInterrupt, SystemExit) as exc:
        print("\ninterrupted; stopping the child processes", file=sys.stderr)
        failed_to_run = 130 if isinstance(exc, KeyboardInterrupt) else exc.code
    except (BenchError, RedisError, psycopg2.Error) as exc:
        print(f"soak failed to run: {exc}", file=sys.stderr)
        failed_to_run = 1
    finally:
        children.stop_all()
        for fake in (openrouter, twilio):
            if fake.thread.is_alive():
                fake.stop()
        if redis is not None:
            if args.redis_url:
                try:
                    redis.flushdb()
                except RedisError:
                    pass
            redis.close()
        try:
            servers.close()
        except psycopg2.Error as exc:
            print(f"could not drop the soak's Postgres database: {exc}", file=sys.stderr)
    report["log_trouble"] = trouble_lines(workdir)
    report["log_errors"] = {
        name: hits for name, lines in report["log_trouble"].items()
        if (hits := [line for line in lines if any(marker in line for marker in ERROR_MARKERS)])
    }
    if failed_to_run is None:
        report["checks"] = checks(report)
        report["passed"] = all(report["checks"].values())
    keep = args.keep_logs or failed_to_run is not None or bool(report["log_trouble"]) or not report["passed"]
    report["log_dir"] = str(workdir) if keep else None
    if keep:
        print(f"logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if failed_to_run is not None:
        return failed_to_run
    report["run_seconds"] = round(time.monotonic() - run_started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
