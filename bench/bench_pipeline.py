"""Measure webhook throughput against a bare Flask endpoint, the webhook-to-Twilio overhead, and a burst.

Run by hand: `python bench/bench_pipeline.py` (see `--help` and bench/README.md).
"""
from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from cryptography.fernet import Fernet  # noqa: E402
from redis import Redis  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402
from rq import Queue, Worker  # noqa: E402
from rq.rate_limit import RateLimitRegistry  # noqa: E402
from rq.registry import FailedJobRegistry, ScheduledJobRegistry  # noqa: E402

from bench.proc_memory import MemorySampler, TreeMemory  # noqa: E402
from chatbot.services import QUEUE_NAME  # noqa: E402
from config import Config  # noqa: E402
from tests.fakes import FakeOpenRouter, FakeTwilio, Recorded, Scripted  # noqa: E402
from tests.support import (  # noqa: E402
    ACCOUNT_SID,
    AUTH_TOKEN,
    BOT_NUMBER,
    RedisServer,
    free_port,
    inbound_form,
    sign,
)

WEBHOOK_PATH = "/whatsapp/webhook"
# The fake LLM answers `Answer to: <body>`, which ties each reply to its message.
REPLY_PREFIX = "Answer to: "
PUBLIC_BASE_URL = "https://bench.example.com"
TARGET_RATIO = 0.35
TARGET_P99_MS = 25.0
TARGET_PIPELINE_P50_MS = 25.0
TARGET_PIPELINE_P99_MS = 60.0
STARTUP_TIMEOUT = 30
STOP_TIMEOUT = 15
# Lines in a child's log that mean something went wrong (access-log lines never contain these).
TROUBLE_MARKERS = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback",
                   "[WARNING]", "[ERROR]", "[CRITICAL]", "WORKER TIMEOUT")


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a setup step failed)."""


# --- child processes ---------------------------------------------------------------------------

class Children:
    """The processes this run started; every one is stopped on exit, on error and on Ctrl-C."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.running: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        """Start `args` in the project folder, in its own process group, logging to `<name>.log`."""
        with open(self.log_dir / f"{name}.log", "ab") as log_file:
            process = subprocess.Popen(
                args, cwd=PROJECT_DIR, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        process.bench_name = name
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        """Ask for a graceful stop, then kill what is left of the process's own group."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"  {process.bench_name} (pid {process.pid}) ignored SIGTERM; killing it", file=sys.stderr)
        try:
            # The group is the child's own (start_new_session), so this reaches only its leftovers.
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            self.stop(process)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def trouble_lines(log_dir: Path) -> dict[str, list[str]]:
    """Return the lines of each child log that report a warning, an error or a traceback."""
    found = {}
    for path in sorted(log_dir.glob("*.log")):
        hits = [line for line in path.read_text(errors="replace").splitlines()
                if any(marker in line for marker in TROUBLE_MARKERS)]
        if hits:
            found[path.name] = hits
    return found


def start_redis(workdir: Path) -> RedisServer:
    """Start a redis-server of this run's own on a free loopback port."""
    # Its log is not redis-server.log: Redis logs harmless "# WARNING" lines about the host, and
    # trouble_lines() reads every *.log in the folder.
    try:
        return RedisServer(workdir, logfile=workdir / "redis-server.txt").start()
    except (OSError, RuntimeError) as exc:
        raise BenchError(f"could not start redis-server (or pass --redis-url): {exc}") from exc


def wait_until_answering(port: int, path: str, process: subprocess.Popen, children: Children,
                         ok_statuses: tuple[int, ...]) -> None:
    """Poll `GET path` on the server until it answers with one of `ok_statuses`."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{process.bench_name} exited with {process.returncode}:\n"
                             + children.log_tail(process.bench_name))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status in ok_statuses:
                return
            last = f"HTTP {response.status}"
        except OSError as exc:
            last = exc.__class__.__name__
        finally:
            connection.close()
        time.sleep(0.1)
    raise BenchError(f"{process.bench_name} did not answer GET {path} within {STARTUP_TIMEOUT}s ({last})")


# --- the deployment under test -----------------------------------------------------------------

@dataclass
class Deployment:
    """Settings shared by every process of one run, and how to start each kind of process."""

    workdir: Path
    redis_url: str
    twilio_url: str
    openrouter_url: str
    children: Children
    field_encryption_key: str = field(default_factory=lambda: Fernet.generate_key().decode())
    secret_key: str = field(default_factory=lambda: "bench-secret-" + uuid.uuid4().hex)

    def env(self, database_url: str, port: int | None = None) -> dict:
        env = dict(os.environ)
        env.update({
            "SECRET_KEY": self.secret_key,
            "FIELD_ENCRYPTION_KEY": self.field_encryption_key,
            "DATABASE_URL": database_url,
            "REDIS_URL": self.redis_url,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "TWILIO_WHATSAPP_NUMBER": BOT_NUMBER,
            "TWILIO_API_BASE_URL": self.twilio_url,
            "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
            "OPENROUTER_API_KEY": "sk-or-v1-bench-key",
            "OPENROUTER_BASE_URL": self.openrouter_url + "/api/v1",
            "PYTHONUNBUFFERED": "1",
            # Lift the rate limits: every benchmark request must take the full path to the AI.
            "RATE_LIMIT_MESSAGES": "1000000",
            "RATE_LIMIT_GLOBAL": "1000000",
            "RATE_LIMIT_WINDOW": "3600",
        })
        if port is not None:
            env["PORT"] = str(port)
        return env

    def fresh_database(self, name: str) -> str:
        """Create an SQLite file with the schema and return its URL."""
        url = f"sqlite:///{self.workdir / (name + '.sqlite3')}"
        self.init_schema(url)
        return url

    def init_schema(self, database_url: str) -> None:
        """Create the schema with `flask --app wsgi init-db`."""
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", "init-db"],
            cwd=PROJECT_DIR, env=self.env(database_url), capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise BenchError(f"init-db failed:\n{result.stdout}{result.stderr}")

    def start_gunicorn(self, name: str, app_spec: str, database_url: str) -> tuple[subprocess.Popen, int]:
        """Serve `app_spec` with the project's gunicorn.conf.py, bound to loopback on a free port."""
        port = free_port()
        # gunicorn.conf.py binds 0.0.0.0:$PORT; the command line wins, keeping the bench on loopback.
        # The control socket would otherwise take ~/.gunicorn/gunicorn.ctl from a real deployment.
        process = self.children.start(name, [
            sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
            "--bind", f"127.0.0.1:{port}", "--no-control-socket", app_spec,
        ], self.env(database_url, port))
        return process, port

    def start_worker(self, name: str, database_url: str, concurrency: int | None = None,
                     script: str = "worker.py") -> subprocess.Popen:
        """Start a worker line with WORKER_CONCURRENCY set to `concurrency`, or unset when it is None."""
        env = self.env(database_url)
        if concurrency is None:
            # Unset rather than inherited from the shell, so config.py's default is what gets measured.
            env.pop("WORKER_CONCURRENCY", None)
        else:
            env["WORKER_CONCURRENCY"] = str(concurrency)
        return self.children.start(name, [sys.executable, script], env)


def wait_for_workers(redis: Redis, processes: list[subprocess.Popen], children: Children,
                     expected: int | None = None) -> None:
    """Wait until `expected` RQ workers (one per process by default) have registered with Redis."""
    expected = len(processes) if expected is None else expected
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while Worker.count(connection=redis) < expected:
        for process in processes:
            if process.poll() is not None:
                raise BenchError(f"{process.bench_name} exited with {process.returncode}:\n"
                                 + children.log_tail(process.bench_name))
        if time.monotonic() > deadline:
            raise BenchError(f"the workers did not register with Redis in time "
                             f"({Worker.count(connection=redis)} of {expected})")
        time.sleep(0.1)


# --- load generation ---------------------------------------------------------------------------

@dataclass
class SignedRequest:
    body: bytes
    headers: dict


def signed_post(path: str, form: dict) -> SignedRequest:
    """Build a form post to `path`, signed as Twilio signs it for the public URL."""
    return SignedRequest(urlencode(form).encode(), {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": sign(PUBLIC_BASE_URL + path, form),
        "User-Agent": "TwilioProxy/1.1",
    })


def signed_webhook(text: str, sender: str, sid: str | None = None) -> SignedRequest:
    """Build one signed inbound-message webhook (a fresh MessageSid unless `sid` is given)."""
    return signed_post(WEBHOOK_PATH, inbound_form(text, sender, sid=sid))


def signed_webhooks(count: int, senders: list[str], label: str) -> list[SignedRequest]:
    """Build `count` signed inbound-message webhooks with unique MessageSids, round-robin over senders."""
    return [signed_webhook(f"{label} message {number}", senders[number % len(senders)]) for number in range(count)]


def percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[int(rank) - 1]


@dataclass
class LoadResult:
    completed: int
    seconds: float
    latencies_ms: list[float]
    failures: dict[str, int]
    client_cpu_percent: float

    @property
    def requests_per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {
            "requests": self.completed,
            "seconds": round(self.seconds, 3),
            "requests_per_second": round(self.requests_per_second, 1),
            "p50_ms": round(percentile(self.latencies_ms, 50), 2),
            "p99_ms": round(percentile(self.latencies_ms, 99), 2),
            "max_ms": round(percentile(self.latencies_ms, 100), 2),
            "failures": self.failures,
            "load_generator_cpu_percent_of_one_core": round(self.client_cpu_percent),
        }


def hammer(port: int, requests: list[SignedRequest], connections: int, max_seconds: float) -> LoadResult:
    """POST every request over `connections` keep-alive connections, as fast as answers come back."""
    next_index = itertools.count()  # its next() is atomic under the GIL: each request is sent once
    latencies: list[list[float]] = [[] for _ in range(connections)]
    failures: list[Counter] = [Counter() for _ in range(connections)]
    clock = {}

    def note_start():
        clock["start"] = time.perf_counter()
        clock["deadline"] = clock["start"] + max_seconds
        clock["cpu"] = time.process_time()

    barrier = threading.Barrier(connections, action=note_start)

    def client(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        barrier.wait()
        while time.perf_counter() < clock["deadline"]:
            index = next(next_index)
            if index >= len(requests):
                break
            request = requests[index]
            started = time.perf_counter()
            try:
                connection.request("POST", WEBHOOK_PATH, request.body, request.headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                failures[slot][exc.__class__.__name__] += 1
                connection.close()
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            if response.status == 200:
                latencies[slot].append(elapsed_ms)
            else:
                failures[slot][f"HTTP {response.status}"] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(slot,), daemon=True) for slot in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - clock["start"]
    cpu = time.process_time() - clock["cpu"]
    ordered = sorted(itertools.chain.from_iterable(latencies))
    return LoadResult(
        completed=len(ordered),
        seconds=seconds,
        latencies_ms=ordered,
        failures=dict(sum(failures, Counter())),
        client_cpu_percent=100 * cpu / seconds if seconds else 0.0,
    )


# --- (a) throughput: webhook vs bare Flask -----------------------------------------------------

def jobs_waiting(redis: Redis) -> int:
    """Count jobs on the queue plus those RQ holds back because their sender already has one queued."""
    held = sum(registry.get_rate_limited_job_count() for registry in RateLimitRegistry.all(redis))
    return Queue(QUEUE_NAME, connection=redis).count + held


def measure_throughput(args, deployment: Deployment, redis: Redis) -> dict:
    senders = [f"whatsapp:+1555{number:07d}" for number in range(args.senders)]
    warmup = signed_webhooks(args.warmup, senders, "warm-up")
    measured = signed_webhooks(args.requests, senders, "measured")
    results = {}
    for name, app_spec in (("bare", "bench.bare_app:app"), ("webhook", "wsgi:app")):
        redis.flushdb()
        database_url = deployment.fresh_database(f"throughput-{name}")
        progress(f"(a) starting gunicorn for the {name} endpoint")
        server, port = deployment.start_gunicorn(f"gunicorn-{name}", app_spec, database_url)
        try:
            wait_until_answering(port, WEBHOOK_PATH, server, deployment.children, (200, 405))
            progress(f"(a) {name}: {len(warmup)} warm-up requests, then {len(measured)} measured "
                     f"over {args.connections} connections")
            warm = hammer(port, warmup, args.connections, args.max_seconds)
            run = hammer(port, measured, args.connections, args.max_seconds)
        finally:
            deployment.children.stop(server)
        results[name] = run.summary()
        if name == "webhook":
            results[name]["jobs_created"] = jobs_waiting(redis)
            results[name]["requests_accepted"] = warm.completed + run.completed
        redis.flushdb()
    bare, webhook = results["bare"], results["webhook"]
    ratio = webhook["requests_per_second"] / bare["requests_per_second"] if bare["requests_per_second"] else 0.0
    results["ratio_webhook_to_bare"] = round(ratio, 3)
    results["targets"] = {
        "ratio_met": ratio >= TARGET_RATIO,
        "webhook_p99_met": webhook["p99_ms"] < TARGET_P99_MS,
    }
    return results


# --- (b) pipeline overhead: webhook arrival to the Twilio send ---------------------------------

class TimedTwilio(FakeTwilio):
    """FakeTwilio that notes when each outbound message body arrives."""

    def __init__(self):
        super().__init__()
        self.arrivals: dict[str, list[float]] = defaultdict(list)

    def default_answer(self, request: Recorded) -> Scripted:
        if request.method == "POST" and request.path.endswith("/Messages.json"):
            arrived = time.perf_counter()
            with self.lock:
                self.arrivals[request.body.get("Body", "")].append(arrived)
        return super().default_answer(request)

    def arrived(self, body: str) -> bool:
        with self.lock:
            return body in self.arrivals


class WebhookPoster:
    """Posts signed webhooks on one keep-alive connection and remembers when each was posted."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.posted_at: dict[str, float] = {}
        self.webhook_ms: list[float] = []
        self.refused: Counter = Counter()

    def post(self, text: str, sender: str) -> None:
        form = inbound_form(text, sender)
        body = urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": sign(PUBLIC_BASE_URL + WEBHOOK_PATH, form)}
        started = time.perf_counter()
        self.posted_at[text] = started
        try:
            self.connection.request("POST", WEBHOOK_PATH, body, headers)
            response = self.connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.refused[exc.__class__.__name__] += 1
            self.connection.close()
            return
        self.webhook_ms.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            self.refused[f"HTTP {response.status}"] += 1

    def close(self) -> None:
        self.connection.close()


def send_spaced(poster: WebhookPoster, texts: list[str], senders: list[str], rate: float) -> None:
    """Post one webhook per text on a fixed schedule of `rate` per second, senders taking turns."""
    start = time.perf_counter()
    for number, text in enumerate(texts):
        delay = start + number / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        poster.post(text, senders[number % len(senders)])


def wait_for_replies(twilio: TimedTwilio, texts: list[str], timeout: float) -> bool:
    """Wait until the fake Twilio has a reply to every text; False when `timeout` passed first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(twilio.arrived(REPLY_PREFIX + text) for text in texts):
            return True
        time.sleep(0.05)
    return False


def late_positions(order: list[int]) -> list[int]:
    """Return the positions in `order` whose number is smaller than one that came before it."""
    late, latest = [], -1
    for position, number in enumerate(order):
        if number < latest:
            late.append(position)
        latest = max(latest, number)
    return late


def measure_pipeline(args, deployment: Deployment, redis: Redis, twilio: TimedTwilio) -> dict:
    redis.flushdb()
    database_url = deployment.fresh_database("pipeline")
    progress(f"(b) starting gunicorn (the app) and {args.workers} worker(s)")
    server, port = deployment.start_gunicorn("gunicorn-pipeline", "wsgi:app", database_url)
    workers = [deployment.start_worker(f"worker-{number}", database_url, args.concurrency)
               for number in range(1, args.workers + 1)]
    wait_until_answering(port, "/health", server, deployment.children, (200,))
    wait_for_workers(redis, workers, deployment.children)

    senders = [f"whatsapp:+1556{number:07d}" for number in range(args.pipeline_senders)]
    run_id = uuid.uuid4().hex[:8]
    warm_texts = [f"warm-up {number} {run_id}" for number in range(args.pipeline_warmup)]
    texts = [f"question {number} {run_id}" for number in range(args.messages)]
    poster = WebhookPoster(port)
    try:
        progress(f"(b) {len(warm_texts)} warm-up messages")
        send_spaced(poster, warm_texts, senders, args.rate)
        wait_for_replies(twilio, warm_texts, args.pipeline_timeout)
        poster.webhook_ms.clear()
        progress(f"(b) {len(texts)} messages at {args.rate:g}/s from {len(senders)} senders "
                 f"(~{len(texts) / args.rate:.0f}s)")
        send_spaced(poster, texts, senders, args.rate)
        wait_for_replies(twilio, texts, args.pipeline_timeout)
        time.sleep(1)  # a reply sent twice would arrive just after the first; give it the chance
    finally:
        poster.close()
    queue = Queue(QUEUE_NAME, connection=redis)
    failed_jobs = FailedJobRegistry(queue=queue).count
    retrying_jobs = ScheduledJobRegistry(queue=queue).count
    for process in [server, *workers]:
        deployment.children.stop(process)
    redis.flushdb()

    overheads, lost, duplicated = [], 0, 0
    with twilio.lock:
        arrivals = {body: list(times) for body, times in twilio.arrivals.items()}
    for text in texts:
        times = arrivals.get(REPLY_PREFIX + text)
        if not times:
            lost += 1
            continue
        duplicated += len(times) > 1
        overheads.append((min(times) - poster.posted_at[text]) * 1000)
    overheads.sort()
    webhook_ms = sorted(poster.webhook_ms)
    p50, p99 = percentile(overheads, 50), percentile(overheads, 99)
    return {
        "messages": len(texts),
        "delivered": len(overheads),
        "lost": lost,
        "delivered_more_than_once": duplicated,
        "webhook_refusals": dict(poster.refused),
        "failed_jobs": failed_jobs,
        "jobs_waiting_for_retry": retrying_jobs,
        "p50_ms": round(p50, 1),
        "p90_ms": round(percentile(overheads, 90), 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(percentile(overheads, 100), 1),
        "webhook_p50_ms": round(percentile(webhook_ms, 50), 1),
        "webhook_p99_ms": round(percentile(webhook_ms, 99), 1),
        "targets": {"p50_met": p50 < TARGET_PIPELINE_P50_MS, "p99_met": p99 < TARGET_PIPELINE_P99_MS},
    }


# --- (c) burst: every sender at the same moment, a slow model ----------------------------------

# The worker lines a burst can measure: the product's threaded worker, or RQ's forking WorkerPool.
WORKER_LINE_SCRIPTS = {"threads": "worker.py", "pool": "bench/worker_pool_line.py"}
# How long the registered, idle worker line is sampled before the burst.
IDLE_SECONDS = 1.0
# Settle time after the last expected reply, so a reply sent twice can still show up.
SETTLE_SECONDS = 2.0
# The memory goal is in MB; /proc reports KiB.
BYTES_PER_MB = 1_000_000
TARGET_BURST_PSS_MB = 250
TARGET_BURST_PSS_CONCURRENCY = 32


@dataclass(frozen=True)
class MakespanGoal:
    """A burst goal, judged only on a run with its setup and one message per sender."""

    senders: int
    concurrency: int | None  # WORKER_CONCURRENCY, or None for unset (config.py's default)
    max_delay_multiple: float
    exactly_once_in_order: bool

    def describe(self) -> str:
        settings = "default settings" if self.concurrency is None else f"WORKER_CONCURRENCY={self.concurrency}"
        counts = ", 0 lost/doubled/out of order" if self.exactly_once_in_order else ""
        return f"{self.senders} senders, {settings}: makespan <= {self.max_delay_multiple:g}x the LLM delay{counts}"

    def applies_to(self, burst: dict) -> bool:
        return (burst["senders"], burst["concurrency_setting"], burst["messages_per_sender"]) == (
            self.senders, self.concurrency, 1)

    def options(self) -> str:
        """Name the bench options of a run this goal is judged on."""
        concurrency = "no --concurrency" if self.concurrency is None else f"--concurrency {self.concurrency}"
        return f"--burst-senders {self.senders}, {concurrency}, --burst-messages-per-sender 1"

    def met_by(self, burst: dict) -> bool:
        met = burst["lost"] == 0 and burst["makespan_delay_multiple"] <= self.max_delay_multiple
        if self.exactly_once_in_order:
            met = met and burst["doubled"] == 0 and burst["out_of_order"] == 0
        return met


MAKESPAN_GOALS = (MakespanGoal(40, None, 2.5, exactly_once_in_order=False),
                  MakespanGoal(200, 64, 5.0, exactly_once_in_order=True))


@dataclass
class BurstMessage:
    """One webhook of the burst; `seq` is its place among its sender's messages."""

    sender_index: int
    seq: int
    text: str
    request: SignedRequest
    posted_at: float | None = None
    outcome: str = "not posted"  # "200", "HTTP 503", or the exception that stopped the post


def plan_burst(senders: int, messages_per_sender: int, run_id: str) -> list[list[BurstMessage]]:
    """Return each sender's messages in the order the sender posts them."""
    plans = []
    for index in range(senders):
        sender = f"whatsapp:+1558{index:07d}"
        texts = [f"burst {run_id} sender {index:03d} seq {seq:02d}" for seq in range(messages_per_sender)]
        plans.append([BurstMessage(index, seq, text, signed_webhook(text, sender)) for seq, text in enumerate(texts)])
    return plans


def post_burst(port: int, plans: list[list[BurstMessage]]) -> None:
    """Post every sender's messages on a connection of its own, all senders starting at the same moment.

    A sender posts its next message once the previous one was answered, so its order is defined.
    """
    barrier = threading.Barrier(len(plans))

    def sender(messages: list[BurstMessage]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.connect()  # before the barrier, so that the posts leave together
        except OSError:
            pass  # the first post connects again and records what goes wrong
        try:
            barrier.wait()
            for message in messages:
                message.posted_at = time.perf_counter()
                try:
                    connection.request("POST", WEBHOOK_PATH, message.request.body, message.request.headers)
                    response = connection.getresponse()
                    response.read()
                    message.outcome = str(response.status) if response.status == 200 else f"HTTP {response.status}"
                except (OSError, http.client.HTTPException) as exc:
                    message.outcome = exc.__class__.__name__
                    connection.close()
        finally:
            connection.close()

    threads = [threading.Thread(target=sender, args=(messages,), daemon=True) for messages in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def burst_deliveries(plans: list[list[BurstMessage]], twilio: TimedTwilio) -> dict:
    """Match the replies at the fake Twilio to the burst's messages: when, how often, in what order."""
    messages = {REPLY_PREFIX + message.text: message for sender in plans for message in sender}
    with twilio.lock:
        arrivals = {body: min(times) for body, times in twilio.arrivals.items() if body in messages}
        doubled = sum(len(times) > 1 for body, times in twilio.arrivals.items() if body in messages)
        sent = [request.body.get("Body", "") for request in twilio.requests
                if request.method == "POST" and request.path.endswith("/Messages.json")]
    arrival_order: dict[int, list[int]] = defaultdict(list)
    seen = set()
    for body in sent:
        if body in messages and body not in seen:
            seen.add(body)
            arrival_order[messages[body].sender_index].append(messages[body].seq)
    return {
        "replied": len(arrivals),
        "lost": len(messages) - len(arrivals),
        "doubled": doubled,
        "out_of_order": sum(len(late_positions(order)) for order in arrival_order.values()),
        "last_reply_at": max(arrivals.values(), default=None),
    }


def start_worker_line(args, deployment: Deployment, redis: Redis, database_url: str) -> subprocess.Popen:
    """Start the worker line under test and wait until all its RQ workers have registered."""
    line = deployment.start_worker(f"worker-line-{args.worker_line}", database_url, args.concurrency,
                                   WORKER_LINE_SCRIPTS[args.worker_line])
    # The thread worker is one RQ worker; the pool registers one per process.
    expected = 1 if args.worker_line == "threads" else effective_concurrency(args)
    wait_for_workers(redis, [line], deployment.children, expected)
    return line


def effective_concurrency(args) -> int:
    return args.concurrency or Config.worker_concurrency


def concurrency_label(concurrency: int | None) -> str:
    if concurrency is None:
        return f"WORKER_CONCURRENCY unset (default {Config.worker_concurrency})"
    return f"WORKER_CONCURRENCY={concurrency}"


def idle_memory(pid: int, interval: float) -> TreeMemory:
    """Sample the worker line's memory for IDLE_SECONDS while it waits for work."""
    idle = TreeMemory([pid], transient_descendants=True)
    sampler = MemorySampler({"worker line": idle}, interval)
    sampler.start()
    time.sleep(IDLE_SECONDS)
    sampler.stop()
    return idle


def pss_mb(tree: TreeMemory) -> float:
    return round(tree.peak_pss_kib * 1024 / BYTES_PER_MB, 1)


def measure_burst(args, deployment: Deployment, redis: Redis, openrouter: FakeOpenRouter,
                  twilio: TimedTwilio) -> dict:
    redis.flushdb()
    database_url = deployment.fresh_database("burst")
    progress(f"(c) starting gunicorn (the app) and the worker line ({args.worker_line}, "
             f"{concurrency_label(args.concurrency)})")
    server, port = deployment.start_gunicorn("gunicorn-burst", "wsgi:app", database_url)
    line = start_worker_line(args, deployment, redis, database_url)
    wait_until_answering(port, "/health", server, deployment.children, (200,))

    plans = plan_burst(args.burst_senders, args.burst_messages_per_sender, uuid.uuid4().hex[:8])
    texts = [message.text for sender in plans for message in sender]
    idle = idle_memory(line.pid, args.sample_interval)
    busy = TreeMemory([line.pid], transient_descendants=True)
    sampler = MemorySampler({"worker line": busy}, args.sample_interval)
    instant_llm = openrouter.delay_for
    openrouter.delay_for = lambda messages: args.llm_delay
    with openrouter.lock:
        openrouter.max_in_flight = 0
    load_at_start = round(os.getloadavg()[0], 2)
    progress(f"(c) {len(texts)} messages from {len(plans)} senders at once, fake LLM {args.llm_delay:g}s")
    sampler.start()
    try:
        post_burst(port, plans)
        all_replied = wait_for_replies(twilio, texts, args.burst_timeout)
        gave_up_at = time.perf_counter()
        if all_replied:
            time.sleep(SETTLE_SECONDS)
    finally:
        sampler.stop()
        openrouter.delay_for = instant_llm
    load_at_end = round(os.getloadavg()[0], 2)
    queue = Queue(QUEUE_NAME, connection=redis)
    failed_jobs = FailedJobRegistry(queue=queue).count
    retrying_jobs = ScheduledJobRegistry(queue=queue).count
    for process in (server, line):
        deployment.children.stop(process)
    redis.flushdb()

    deliveries = burst_deliveries(plans, twilio)
    first_post = min(message.posted_at for sender in plans for message in sender if message.posted_at is not None)
    last_reply_at = deliveries.pop("last_reply_at")
    makespan = (last_reply_at if all_replied else gave_up_at) - first_post
    burst = {
        "worker_line": args.worker_line,
        "concurrency_setting": args.concurrency,
        "concurrency": effective_concurrency(args),
        "senders": len(plans),
        "messages_per_sender": args.burst_messages_per_sender,
        "messages": len(texts),
        "llm_delay": args.llm_delay,
        "all_replied_within_timeout": all_replied,
        "makespan_seconds": round(makespan, 2),
        "makespan_delay_multiple": round(makespan / args.llm_delay, 2),
        **deliveries,
        "webhook_outcomes": dict(Counter(message.outcome for sender in plans for message in sender)),
        "failed_jobs": failed_jobs,
        "jobs_waiting_for_retry": retrying_jobs,
        "llm_calls_in_flight_at_most": openrouter.max_in_flight,
        "pss_idle_mb": pss_mb(idle),
        "pss_peak_mb": pss_mb(busy),
        "processes_seen": len(busy.processes_seen),
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_at_end,
    }
    burst["goals"] = burst_goals(burst)
    return burst


def burst_goals(burst: dict) -> list[dict]:
    """Judge each goal this run's setup can speak for; `met` is None for the others."""
    goals = [{"goal": goal.describe(), "met": goal.met_by(burst) if goal.applies_to(burst) else None,
              "judged_with": goal.options()}
             for goal in MAKESPAN_GOALS]
    pss_applies = burst["concurrency"] == TARGET_BURST_PSS_CONCURRENCY
    goals.append({"goal": f"worker line PSS at concurrency {TARGET_BURST_PSS_CONCURRENCY} "
                          f"<= {TARGET_BURST_PSS_MB} MB",
                  "met": burst["pss_peak_mb"] <= TARGET_BURST_PSS_MB if pss_applies else None,
                  "judged_with": f"no --concurrency or --concurrency {TARGET_BURST_PSS_CONCURRENCY}"})
    return goals


# --- report ------------------------------------------------------------------------------------

def progress(text: str) -> None:
    print(f"... {text}", file=sys.stderr, flush=True)


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def print_report(report: dict) -> None:
    setup = report["setup"]
    print()
    print(f"Machine: {setup['cpus']} CPU(s), load average {setup['load_average_before']} before the run "
          "(anything else running skews these numbers)")
    print(f"Python {setup['python']}; gunicorn.conf.py: "
          f"{setup['gunicorn']['workers']} workers x {setup['gunicorn']['threads']} threads "
          f"({setup['gunicorn']['worker_class']}), keepalive {setup['gunicorn']['keepalive']}s, access log on")
    throughput = report.get("throughput")
    if throughput:
        print()
        print(f"(a) POST {WEBHOOK_PATH}, {setup['connections']} keep-alive connections, "
              f"{setup['requests']} signed requests after {setup['warmup']} warm-up, {setup['senders']} senders")
        print(f"    {'endpoint':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}  failures")
        for name, label in (("bare", "bare Flask (baseline)"), ("webhook", "webhook (the app)")):
            row = throughput[name]
            failures = ", ".join(f"{k}: {v}" for k, v in row["failures"].items()) or "none"
            print(f"    {label:<22}{row['requests_per_second']:>10.0f}{row['p50_ms']:>10.2f}"
                  f"{row['p99_ms']:>10.2f}{row['max_ms']:>10.2f}  {failures}")
        webhook = throughput["webhook"]
        print(f"    ratio webhook/bare throughput: {throughput['ratio_webhook_to_bare']:.2f}"
              f"   target >= {TARGET_RATIO:g}: {verdict(throughput['targets']['ratio_met'])}")
        print(f"    webhook p99: {webhook['p99_ms']:.2f} ms"
              f"   target < {TARGET_P99_MS:g} ms: {verdict(throughput['targets']['webhook_p99_met'])}")
        print(f"    jobs created by the webhook: {webhook['jobs_created']} for "
              f"{webhook['requests_accepted']} accepted requests (warm-up included; no worker ran)")
        print(f"    note: the load generator is Python threads in this process, sharing the "
              f"{setup['cpus']} CPU(s) with gunicorn")
        print(f"          (it used ~{throughput['bare']['load_generator_cpu_percent_of_one_core']}% of a core "
              f"against bare, ~{webhook['load_generator_cpu_percent_of_one_core']}% against the webhook),")
        print("          so both rates are lower bounds and latencies include client-side queueing;")
        print(f"          with {setup['connections']} closed-loop connections, mean latency ~= "
              f"{setup['connections']} / throughput (Little's law).")
    pipeline = report.get("pipeline")
    if pipeline:
        print()
        print(f"(b) webhook POST -> Twilio Messages.json, instant fake LLM, {setup['workers']} worker(s) "
              f"({concurrency_label(setup['concurrency'])}), {pipeline['messages']} messages at {setup['rate']:g}/s "
              f"from {setup['pipeline_senders']} senders")
        print(f"    {'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        print(f"    {pipeline['p50_ms']:>10.1f}{pipeline['p90_ms']:>10.1f}{pipeline['p99_ms']:>10.1f}"
              f"{pipeline['max_ms']:>10.1f}")
        print(f"    target p50 < {TARGET_PIPELINE_P50_MS:g} ms: {verdict(pipeline['targets']['p50_met'])}"
              f"   target p99 < {TARGET_PIPELINE_P99_MS:g} ms: {verdict(pipeline['targets']['p99_met'])}")
        refusals = ", ".join(f"{k}: {v}" for k, v in pipeline["webhook_refusals"].items()) or "none"
        print(f"    delivered {pipeline['delivered']}/{pipeline['messages']}, lost {pipeline['lost']}, "
              f"delivered twice {pipeline['delivered_more_than_once']}, webhook refusals {refusals}, "
              f"failed jobs {pipeline['failed_jobs']}, jobs waiting for retry {pipeline['jobs_waiting_for_retry']}")
        print(f"    the webhook itself answered these spaced requests in {pipeline['webhook_p50_ms']:.1f} ms at p50, "
              f"{pipeline['webhook_p99_ms']:.1f} ms at p99")
    burst = report.get("burst")
    if burst:
        print()
        print_burst(burst, setup["sample_interval"])
    print()
    trouble = report["log_trouble"]
    if trouble:
        print("Warnings or errors in the child process logs (logs kept in " + report["log_dir"] + "):")
        for name, lines in trouble.items():
            print(f"  {name}: {len(lines)} line(s), first: {lines[0][:200]}")
    else:
        print("No warnings, errors or tracebacks in the gunicorn and worker logs.")


def print_burst(burst: dict, sample_interval: float) -> None:
    line = "threads (`python worker.py`)" if burst["worker_line"] == "threads" else (
        f"RQ WorkerPool of {burst['concurrency']} forking workers (bench/worker_pool_line.py)")
    print(f"(c) burst: {burst['senders']} senders x {burst['messages_per_sender']} message(s) posted at once, "
          f"fake LLM {burst['llm_delay']:g}s per answer")
    print(f"    worker line: {line}, {concurrency_label(burst['concurrency_setting'])}")
    print(f"    makespan {burst['makespan_seconds']:.2f}s = {burst['makespan_delay_multiple']:.2f}x the LLM delay "
          "(first POST -> last reply at the fake Twilio)"
          + ("" if burst["all_replied_within_timeout"] else " (gave up waiting)"))
    order_note = "" if burst["messages_per_sender"] > 1 else " (one message per sender: order not exercised)"
    print(f"    replies to {burst['replied']}/{burst['messages']} messages: lost {burst['lost']}, "
          f"doubled {burst['doubled']}, out of order {burst['out_of_order']}{order_note}")
    outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(burst["webhook_outcomes"].items()))
    print(f"    webhook answers {outcomes}; failed jobs {burst['failed_jobs']}, "
          f"jobs waiting for retry {burst['jobs_waiting_for_retry']}; "
          f"at most {burst['llm_calls_in_flight_at_most']} LLM calls in flight")
    print(f"    worker line PSS (the process and all its descendants, {burst['processes_seen']} process(es) seen, "
          f"sampled every {sample_interval:g}s): idle {burst['pss_idle_mb']:.1f} MB, "
          f"peak {burst['pss_peak_mb']:.1f} MB")
    print(f"    load average (1 min): {burst['load_average_at_start']} at the start of the burst, "
          f"{burst['load_average_at_end']} at the end")
    for goal in burst["goals"]:
        if goal["met"] is None:
            print(f"    goal {goal['goal']}: not judged by this run (needs {goal['judged_with']})")
        else:
            print(f"    goal {goal['goal']}: {verdict(goal['met'])}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("throughput", "pipeline", "burst"), help="run one part only")
    parser.add_argument("--concurrency", type=positive_int,
                        help="WORKER_CONCURRENCY for the workers of (b) and (c); unset by default, so "
                             f"config.py's default ({Config.worker_concurrency}) applies")
    throughput = parser.add_argument_group("(a) throughput")
    throughput.add_argument("--connections", type=int, default=20, help="keep-alive connections (default 20)")
    throughput.add_argument("--requests", type=int, default=5000, help="measured requests per endpoint (default 5000)")
    throughput.add_argument("--warmup", type=int, default=500, help="warm-up requests per endpoint (default 500)")
    throughput.add_argument("--max-seconds", type=float, default=20.0,
                            help="stop a load run after this long even if requests remain (default 20)")
    throughput.add_argument("--senders", type=int, default=300, help="distinct senders (default 300)")
    pipeline = parser.add_argument_group("(b) pipeline overhead")
    pipeline.add_argument("--messages", type=int, default=300, help="measured messages (default 300)")
    pipeline.add_argument("--rate", type=float, default=10.0, help="messages per second (default 10)")
    pipeline.add_argument("--pipeline-senders", type=int, default=20, help="distinct senders (default 20)")
    pipeline.add_argument("--pipeline-warmup", type=int, default=10, help="unmeasured first messages (default 10)")
    pipeline.add_argument("--workers", type=int, default=2, help="`python worker.py` processes (default 2)")
    pipeline.add_argument("--pipeline-timeout", type=float, default=30.0,
                          help="seconds to wait for the last replies (default 30)")
    burst = parser.add_argument_group("(c) burst")
    burst.add_argument("--burst-senders", type=positive_int, default=40,
                       help="senders posting at the same moment (default 40)")
    burst.add_argument("--burst-messages-per-sender", type=positive_int, default=1,
                       help="messages each sender posts back to back, to check their order (default 1)")
    burst.add_argument("--llm-delay", type=positive_float, default=2.0,
                       help="seconds the fake LLM takes per answer (default 2)")
    burst.add_argument("--worker-line", choices=tuple(WORKER_LINE_SCRIPTS), default="threads",
                       help="threads: `python worker.py`; pool: RQ's WorkerPool with one forking worker "
                            "per unit of concurrency (default threads)")
    burst.add_argument("--burst-timeout", type=float, default=120.0,
                       help="seconds to wait for the last replies (default 120)")
    burst.add_argument("--sample-interval", type=float, default=0.1,
                       help="seconds between memory samples of the worker line (default 0.1)")
    parser.add_argument("--redis-url",
                        help="use this Redis database (flushed before, between parts and after) instead of "
                             "a redis-server of the run's own")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp folder with the logs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return parser.parse_args(argv)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {value:g}")
    return value


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="chatbot-bench-"))
    children = Children(workdir)
    openrouter, twilio = FakeOpenRouter().start(), TimedTwilio().start()
    redis = redis_server = None
    gunicorn_settings = runpy.run_path(str(PROJECT_DIR / "gunicorn.conf.py"))
    report = {"setup": {
        "cpus": os.cpu_count(),
        "load_average_before": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "redis": args.redis_url or "a redis-server of the run's own",
        "gunicorn": {name: gunicorn_settings[name] for name in ("workers", "threads", "worker_class", "keepalive")},
        **{name: getattr(args, name) for name in ("connections", "requests", "warmup", "senders", "messages",
                                                  "rate", "pipeline_senders", "workers", "concurrency",
                                                  "sample_interval")},
    }}
    keep = args.keep_logs
    try:
        if not args.redis_url:
            redis_server = start_redis(workdir)
        redis_url = args.redis_url or redis_server.url
        redis = Redis.from_url(redis_url)
        redis.ping()
        deployment = Deployment(workdir, redis_url, twilio.url, openrouter.url, children)
        if args.only in (None, "throughput"):
            report["throughput"] = measure_throughput(args, deployment, redis)
        if args.only in (None, "pipeline"):
            report["pipeline"] = measure_pipeline(args, deployment, redis, twilio)
        if args.only in (None, "burst"):
            report["burst"] = measure_burst(args, deployment, redis, openrouter, twilio)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the child processes", file=sys.stderr)
        keep = True
        return 130
    except (BenchError, RedisError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        keep = True
        return 1
    finally:
        children.stop_all()
        openrouter.stop()
        twilio.stop()
        if redis is not None:
            if args.redis_url:
                try:
                    redis.flushdb()
                except RedisError:
                    pass
            redis.close()
        if redis_server is not None:
            redis_server.stop()
        report["log_trouble"] = trouble_lines(workdir)
        keep = keep or bool(report["log_trouble"])
        report["log_dir"] = str(workdir) if keep else None
        if keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
