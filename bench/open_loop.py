"""Offer one WhatsApp number's ceiling of traffic on a fixed schedule; time each answer from its due time.

Run by hand: `python bench/open_loop.py` (see `--help` and bench/README.md).
"""
from __future__ import annotations

import argparse
import heapq
import http.client
import itertools
import json
import os
import queue
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

import psycopg2  # noqa: E402
from playhouse.db_url import connect  # noqa: E402
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
    Recorded,
    Scripted,
    SignedRequest,
    TimedTwilio,
    jobs_waiting,
    percentile,
    positive_float,
    positive_int,
    progress,
    signed_post,
    signed_webhook,
    start_redis,
    trouble_lines,
    wait_for_workers,
    wait_until_answering,
)
from bench.proc_memory import parent_map  # noqa: E402
from bench.soak import ERROR_MARKERS, IDLE_RECONNECT, SETTLE_SECONDS, wait_for_all_replies  # noqa: E402
from chatbot.services import QUEUE_NAME  # noqa: E402
from chatbot.whatsapp import STATUS_CALLBACK_PATH  # noqa: E402
from tests.fakes import FakeOpenRouter  # noqa: E402
from tests.support import ACCOUNT_SID, BOT_NUMBER, LOCAL_POSTGRES_URL, throwaway_postgres_database  # noqa: E402

# One WhatsApp number (a Twilio "sender") at Twilio's ceiling: inbound messages, and a sent, a
# delivered and a read receipt for each reply.
INBOUND_PER_SECOND = 50.0
RECEIPTS_PER_SECOND = 150.0
RECEIPT_STATUSES = ("sent", "delivered", "read")
# A reply's next receipt is due this long after Twilio took it, or after its previous receipt was answered.
RECEIPT_GAP = 0.2
WEBHOOK, STATUS = "webhook", "status"
REQUEST_TIMEOUT = 10
# Twilio waits this long for an answer to a webhook, then logs error 11200 and gives up on it.
TWILIO_TIMEOUT = 15.0
# The schedule starts this long after the senders are up, so the first requests are not late.
LEAD_IN = 0.2
WARMUP_RATE = 10.0
# Senders started before the schedule; more start whenever a request finds none free.
INITIAL_CONNECTIONS = 32


# --- the schedule ------------------------------------------------------------------------------

@dataclass
class Request:
    """One request of the schedule; times are seconds after the schedule's start."""

    due: float
    kind: str
    text: str = ""  # an inbound message's body
    signed: SignedRequest | None = None  # an inbound webhook, signed in advance
    receipt: str = ""  # a receipt's MessageStatus, or "unknown" for a SID Twilio never handed out
    sent: float | None = None
    answered: float | None = None
    outcome: str = "not sent"  # "2xx", "HTTP 503", or the exception that ended the request

    @property
    def latency_ms(self) -> float:
        return (self.answered - self.due) * 1000


def arrival_times(rate: float, seconds: float, arrivals: str, rng: random.Random) -> list[float]:
    """Return the due times of `rate` requests a second over `seconds`: evenly spaced or a Poisson process."""
    if arrivals == "even":
        phase = rng.random() / rate
        return [phase + number / rate for number in range(round(rate * seconds))]
    times, due = [], rng.expovariate(rate)
    while due < seconds:
        times.append(due)
        due += rng.expovariate(rate)
    return times


def plan(inbound_rate: float, receipt_rate: float, seconds: float, arrivals: str, users: int, seed: int,
         label: str) -> list[Request]:
    """Return every request of the run in the order they are due; a receipt's SID is picked when it is due."""
    rng = random.Random(seed)
    senders = [f"whatsapp:+1559{number:07d}" for number in range(users)]
    requests = []
    for number, due in enumerate(arrival_times(inbound_rate, seconds, arrivals, rng)):
        text = f"open-loop {label} message {number:06d}: what are your opening hours?"
        requests.append(Request(due, WEBHOOK, text=text, signed=signed_webhook(text, rng.choice(senders))))
    if receipt_rate:
        requests += [Request(due, STATUS) for due in arrival_times(receipt_rate, seconds, arrivals, rng)]
    return sorted(requests, key=lambda request: request.due)


# --- receipts for the replies Twilio took ------------------------------------------------------

class ReceiptFeed:
    """The reply SIDs the fake Twilio handed out, each with its next receipt and the time it is due."""

    def __init__(self, gap: float = RECEIPT_GAP):
        self.gap = gap
        self.lock = threading.Lock()
        self.due: list[tuple[float, int, int, dict]] = []  # (due at, tie-breaker, step, Twilio's message)
        self.order = itertools.count()
        self.handed_out: set[str] = set()
        # The latest receipt of each SID that the service answered 2xx.
        self.acknowledged: dict[str, str] = {}

    def _schedule(self, step: int, message: dict) -> None:
        heapq.heappush(self.due, (time.perf_counter() + self.gap, next(self.order), step, message))

    def reply_taken(self, message: dict) -> None:
        with self.lock:
            self.handed_out.add(message["sid"])
            self._schedule(0, message)

    def take(self) -> tuple[int, dict] | None:
        """Return the receipt due first (its step and message), or None when none is due yet."""
        with self.lock:
            if self.due and self.due[0][0] <= time.perf_counter():
                _, _, step, message = heapq.heappop(self.due)
                return step, message
        return None

    def answered(self, step: int, message: dict, acknowledged: bool) -> None:
        """Note how the service answered a receipt and line up the SID's next one."""
        with self.lock:
            if acknowledged:
                self.acknowledged[message["sid"]] = RECEIPT_STATUSES[step]
            if step + 1 < len(RECEIPT_STATUSES):
                self._schedule(step + 1, message)

    def owed(self) -> int:
        """Count the SIDs with receipts still unsent."""
        with self.lock:
            return len({message["sid"] for _, _, _, message in self.due})


class ReceiptingTwilio(TimedTwilio):
    """TimedTwilio that hands each message it takes to the receipt feed."""

    def __init__(self, feed: ReceiptFeed):
        super().__init__()
        self.feed = feed

    def default_answer(self, request: Recorded) -> Scripted:
        answer = super().default_answer(request)
        if request.method == "POST" and request.path.endswith("/Messages.json") and answer.status == 201:
            self.feed.reply_taken(answer.body)
        return answer


def signed_receipt(status: str, message: dict) -> SignedRequest:
    """Build the signed status callback Twilio posts for `message`."""
    return signed_post(STATUS_CALLBACK_PATH, {
        "MessageSid": message["sid"], "SmsSid": message["sid"], "MessageStatus": status, "SmsStatus": status,
        "AccountSid": message["account_sid"], "From": message["from"], "To": message["to"],
        "ApiVersion": "2010-04-01", "ChannelPrefix": "whatsapp",
    })


def unknown_message() -> dict:
    """A message Twilio never handed us, as a receipt names it."""
    return {"sid": "SM" + uuid.uuid4().hex, "account_sid": ACCOUNT_SID, "from": BOT_NUMBER,
            "to": "whatsapp:+15550000000"}


# --- the load generator ------------------------------------------------------------------------

class OpenLoop:
    """Issues each request at its due time, whatever happened to the ones before.

    One thread releases the requests on schedule into a queue; sender threads, each with a
    keep-alive connection of its own, take them from it. A slow answer holds one connection, not
    the schedule: when a request is released and no sender is free, another sender starts, up to
    `max_connections`. Past that a request waits in the queue, and since latency counts from the
    due time, that wait counts too.
    """

    def __init__(self, port: int, requests: list[Request], max_connections: int, feed: ReceiptFeed):
        self.port = port
        self.requests = requests
        self.max_connections = max_connections
        self.feed = feed
        self.ready: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self.senders: list[threading.Thread] = []
        self.idle = 0
        self.idle_lock = threading.Lock()
        self.start = 0.0

    def _post(self, connection: http.client.HTTPConnection, request: Request) -> None:
        if request.kind == WEBHOOK:
            path, signed, receipt = WEBHOOK_PATH, request.signed, None
        else:
            receipt = self.feed.take()
            step, message = receipt or (1, unknown_message())
            request.receipt = RECEIPT_STATUSES[step] if receipt else "unknown"
            path, signed = STATUS_CALLBACK_PATH, signed_receipt(RECEIPT_STATUSES[step], message)
        request.sent = time.perf_counter() - self.start
        try:
            connection.request("POST", path, signed.body, signed.headers)
            response = connection.getresponse()
            response.read()
            request.outcome = "2xx" if 200 <= response.status < 300 else f"HTTP {response.status}"
        finally:
            request.answered = time.perf_counter() - self.start
            if receipt:
                self.feed.answered(step, message, request.outcome == "2xx")

    def _next(self) -> Request | None:
        with self.idle_lock:
            self.idle += 1
        request = self.ready.get()
        with self.idle_lock:
            self.idle -= 1
        return request

    def _add_sender(self) -> None:
        sender = threading.Thread(target=self._sender, daemon=True)
        sender.start()
        self.senders.append(sender)

    def _sender(self) -> None:
        connection, last_used = None, 0.0
        while (request := self._next()) is not None:
            if connection is None or time.perf_counter() - last_used > IDLE_RECONNECT:
                if connection is not None:
                    connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
            try:
                self._post(connection, request)
            except (OSError, http.client.HTTPException) as exc:
                request.outcome = exc.__class__.__name__
                connection.close()
                connection = None
            last_used = time.perf_counter()
        if connection is not None:
            connection.close()

    def run(self) -> None:
        """Release every request at its due time, then wait for the last answers."""
        for _ in range(min(INITIAL_CONNECTIONS, self.max_connections)):
            self._add_sender()
        self.start = time.perf_counter() + LEAD_IN
        try:
            for request in self.requests:
                wait = self.start + request.due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                self.ready.put(request)
                if self.ready.qsize() > self.idle and len(self.senders) < self.max_connections:
                    self._add_sender()
        finally:
            for _ in self.senders:
                self.ready.put(None)
            for sender in self.senders:
                sender.join(REQUEST_TIMEOUT + 5)


# --- the figures -------------------------------------------------------------------------------

def latency_summary(requests: list[Request], seconds: float) -> dict:
    """Count outcomes and take the latency percentiles, from the due time, of the requests answered 2xx."""
    outcomes = Counter(request.outcome for request in requests)
    answered = [request for request in requests if request.outcome == "2xx"]
    latencies = sorted(request.latency_ms for request in answered)
    last = max((request.answered for request in answered), default=0.0)
    return {
        "planned": len(requests),
        "offered_per_second": round(len(requests) / seconds, 1),
        "answered_2xx": len(answered),
        "achieved_per_second": round(len(answered) / max(last, seconds), 1),
        "non_2xx": sum(count for outcome, count in outcomes.items() if outcome.startswith("HTTP ")),
        "connection_errors": sum(count for outcome, count in outcomes.items()
                                 if outcome not in ("2xx", "not sent") and not outcome.startswith("HTTP ")),
        "not_sent": outcomes["not sent"],
        "later_than_twilio_waits": sum(latency > TWILIO_TIMEOUT * 1000 for latency in latencies),
        "outcomes": dict(outcomes),
        **{f"p{rank}_ms": round(percentile(latencies, rank), 1) for rank in (50, 90, 99)},
        "max_ms": round(percentile(latencies, 100), 1),
    }


def most_in_flight(requests: list[Request]) -> int:
    """The most requests between their due time and their answer at any one moment."""
    events = sorted(itertools.chain(((request.due, 1) for request in requests if request.answered is not None),
                                    ((request.answered, -1) for request in requests if request.answered is not None)))
    return max(itertools.accumulate(change for _, change in events), default=0)


def replies_once(twilio: TimedTwilio, requests: list[Request], start: float) -> dict:
    """Count the messages answered at the fake Twilio not at all and more than once; time the replies."""
    with twilio.lock:
        arrivals = {body: list(times) for body, times in twilio.arrivals.items()}
    counts = Counter(len(arrivals.get(REPLY_PREFIX + request.text, ())) for request in requests)
    end_to_end = sorted((min(times) - start - request.due) * 1000 for request in requests
                        if (times := arrivals.get(REPLY_PREFIX + request.text)))
    return {
        "messages": len(requests),
        "answered_once": counts[1],
        "lost": counts[0],
        "doubled": sum(count for replies, count in counts.items() if replies > 1),
        "end_to_end_p50_ms": round(percentile(end_to_end, 50), 1),
        "end_to_end_p99_ms": round(percentile(end_to_end, 99), 1),
        "end_to_end_max_ms": round(percentile(end_to_end, 100), 1),
    }


def tree_cpu_seconds(roots: list[int]) -> float:
    """Sum the CPU time, user and system, that the live processes under `roots` (themselves included) have used."""
    children, pending, ticks = parent_map(), list(roots), 0
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/stat") as stat:
                # utime and stime: the 12th and 13th fields after the command name's ")".
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """The CPU time every process on the machine has used since boot, idle and I/O wait left out."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def stored_receipts(database_url: str) -> tuple[dict[str, str], set[str]]:
    """Read each reply part's delivery status as the service stored it, and the SIDs of the receipts
    it acknowledged without finding their part (their audit rows say so)."""
    database = connect(database_url)
    try:
        parts = dict(database.execute_sql("SELECT twilio_sid, status FROM reply_part").fetchall())
        unknown = database.execute_sql(f"SELECT message_sid FROM webhook_log WHERE verdict = {database.param} "
                                       f"AND error LIKE {database.param}",
                                       ("status_callback", "unknown MessageSid%")).fetchall()
        return parts, {sid for (sid,) in unknown}
    finally:
        database.close()


def receipt_figures(requests: list[Request], feed: ReceiptFeed, database_url: str) -> dict:
    sent = Counter(request.receipt for request in requests if request.sent is not None)
    parts, unknown = stored_receipts(database_url)
    # A receipt that comes before the worker has stored the part Twilio just took is acknowledged
    # and dropped: when every later one came early too, the part stays behind.
    early = unknown & feed.handed_out
    behind = {sid for sid, status in feed.acknowledged.items() if parts.get(sid) != status}
    return {
        "reply_sids_handed_out": len(feed.handed_out),
        "by_status": {status: sent[status] for status in (*RECEIPT_STATUSES, "unknown")},
        "sids_with_receipts_owed": feed.owed(),
        "sids_acknowledged": len(feed.acknowledged),
        "stored_as_acknowledged": len(feed.acknowledged) - len(behind),
        "sids_with_a_receipt_before_their_part": len(early),
        "behind_after_an_early_receipt": len(behind & early),
        "behind_otherwise": len(behind - early),
    }


# --- the run -----------------------------------------------------------------------------------

def warm_up(port: int, feed: ReceiptFeed, twilio: TimedTwilio, redis: Redis, messages: int) -> None:
    """Send a few messages and wait for their replies, so the processes have loaded everything."""
    if not messages:
        return
    requests = plan(WARMUP_RATE, 0, messages / WARMUP_RATE, "even", 10, 0, "warm-up")
    progress(f"warming up with {len(requests)} messages")
    OpenLoop(port, requests, 4, feed).run()
    expected = {REPLY_PREFIX + request.text for request in requests}
    if not wait_for_all_replies(twilio, expected, redis, 60):
        raise BenchError("the warm-up messages were not all answered within 60 s")


def open_loop(args, deployment: Deployment, redis: Redis, twilio: ReceiptingTwilio, database_url: str,
              report: dict) -> None:
    progress(f"starting gunicorn (wsgi:app) and {args.workers} worker(s)")
    server, port = deployment.start_gunicorn("gunicorn", "wsgi:app", database_url)
    workers = [deployment.start_worker(f"worker-{number}", database_url, args.worker_concurrency)
               for number in range(1, args.workers + 1)]
    wait_until_answering(port, "/health", server, deployment.children, (200,))
    wait_for_workers(redis, workers, deployment.children)
    warm_up(port, twilio.feed, twilio, redis, args.warmup)

    requests = plan(INBOUND_PER_SECOND * args.rate_scale, RECEIPTS_PER_SECOND * args.rate_scale, args.duration,
                    args.arrivals, args.users, args.seed, uuid.uuid4().hex[:8])
    webhooks = [request for request in requests if request.kind == WEBHOOK]
    load = OpenLoop(port, requests, args.max_connections, twilio.feed)
    progress(f"{len(webhooks)} messages and {len(requests) - len(webhooks)} receipts over {args.duration:g}s "
             f"({args.arrivals} arrivals), up to {args.max_connections} connections")
    report["load_average_at_start"] = round(os.getloadavg()[0], 2)
    cpu = {"load": time.process_time(), "web": tree_cpu_seconds([server.pid]),
           "workers": tree_cpu_seconds([worker.pid for worker in workers]),
           "machine": machine_busy_seconds(), "ours": tree_cpu_seconds([os.getpid()])}
    load.run()
    seconds = time.perf_counter() - load.start
    report["load_generator_cpu_percent_of_one_core"] = round(100 * (time.process_time() - cpu["load"]) / seconds)
    # Whatever else ran on the machine meanwhile: this run's processes are this one and its descendants.
    others = machine_busy_seconds() - cpu["machine"] - (tree_cpu_seconds([os.getpid()]) - cpu["ours"])
    report["other_processes_cpus"] = round(max(others, 0.0) / seconds, 2)
    # The web's share ends with the last answer, the workers' with the last reply.
    web_cpu = tree_cpu_seconds([server.pid]) - cpu["web"]
    report["load_average_at_end"] = round(os.getloadavg()[0], 2)
    progress(f"schedule done; waiting up to {args.drain_timeout:g}s for the last replies")
    expected = {REPLY_PREFIX + request.text for request in webhooks}
    drained = wait_for_all_replies(twilio, expected, redis, args.drain_timeout)
    gave_up = time.perf_counter()
    workers_cpu = tree_cpu_seconds([worker.pid for worker in workers]) - cpu["workers"]
    report["cpu_ms"] = {"web_per_request": round(1000 * web_cpu / len(requests), 2),
                        "workers_per_message": round(1000 * workers_cpu / len(webhooks), 2)}
    if drained:
        time.sleep(SETTLE_SECONDS)  # a reply sent twice would arrive just after the first
    for process in [server, *workers]:
        deployment.children.stop(process)
    report["jobs"] = job_counts(redis)
    with twilio.lock:
        last_reply = max((max(times) for body, times in twilio.arrivals.items() if body in expected), default=gave_up)
    schedule_end = load.start + args.duration
    report["drained_seconds_after_schedule"] = round((last_reply if drained else gave_up) - schedule_end, 1)

    receipts = [request for request in requests if request.kind == STATUS]
    report["requests"] = {WEBHOOK: latency_summary(webhooks, args.duration),
                          STATUS: latency_summary(receipts, args.duration),
                          "all": latency_summary(requests, args.duration)}
    lags = sorted((request.sent - request.due) * 1000 for request in requests if request.sent is not None)
    report["client_lag_ms"] = {"p50": round(percentile(lags, 50), 2), "p99": round(percentile(lags, 99), 2),
                               "max": round(percentile(lags, 100), 2)}
    report["most_in_flight"] = most_in_flight(requests)
    report["connections_opened"] = len(load.senders)
    report["replies"] = {**replies_once(twilio, webhooks, load.start), "drained": drained}
    report["receipts"] = receipt_figures(receipts, twilio.feed, database_url)


def job_counts(redis: Redis) -> dict:
    """Count the message jobs RQ failed, holds for a retry, or still has to run."""
    registries = {"failed": FailedJobRegistry, "waiting_for_retry": ScheduledJobRegistry}
    counts = {name: registry(queue=Queue(QUEUE_NAME, connection=redis)).count for name, registry in registries.items()}
    return {**counts, "still_waiting": jobs_waiting(redis)}


def checks(report: dict) -> dict[str, bool]:
    """Name each pass/fail condition of the run."""
    every = report["requests"]["all"]
    replies, receipts = report["replies"], report["receipts"]
    return {
        "every request answered 2xx, none refused or cut off": every["answered_2xx"] == every["planned"],
        "every message answered exactly once": replies["answered_once"] == replies["messages"],
        "each reply part stored with its last acknowledged receipt (early receipts aside)":
            receipts["behind_otherwise"] == 0,
        "no failed or retrying jobs": report["jobs"]["failed"] == 0 and report["jobs"]["waiting_for_retry"] == 0,
        "no errors in the logs": not report["log_errors"],
    }


# --- report ------------------------------------------------------------------------------------

def print_report(report: dict) -> None:
    setup = report["setup"]
    print()
    print(f"Open loop: {setup['inbound_per_second']:g} messages/s + {setup['receipts_per_second']:g} receipts/s "
          f"({setup['rate_scale']:g}x) for {setup['duration']:g}s, {setup['arrivals']} arrivals "
          f"(seed {setup['seed']}), {setup['users']} users, {setup['database']}, LLM delay {setup['llm_delay']:g}s")
    print(f"Machine: {setup['cpus']} CPU(s), load average {setup['load_average_before']} before, "
          f"{report['load_average_at_start']} at the start, {report['load_average_at_end']} at the end; "
          f"gunicorn {setup['web_concurrency']} x {setup['gunicorn_threads']} threads, {setup['workers']} worker.py "
          f"x WORKER_CONCURRENCY {setup['worker_concurrency'] or 'default'}, "
          f"{report['connections_opened']} client connections opened (at most {setup['max_connections']})")
    print()
    print("  latency from each request's due time to its answer (ms), 2xx answers only; "
          f">{TWILIO_TIMEOUT:g}s: answered after Twilio stops waiting")
    print(f"  {'':<9}{'planned':>8}{'offered/s':>10}{'achieved/s':>11}{'non-2xx':>8}{'conn err':>9}"
          f"{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{f'>{TWILIO_TIMEOUT:g}s':>8}")
    for name in (WEBHOOK, STATUS, "all"):
        row = report["requests"][name]
        print(f"  {name:<9}{row['planned']:>8}{row['offered_per_second']:>10.1f}{row['achieved_per_second']:>11.1f}"
              f"{row['non_2xx']:>8}{row['connection_errors'] + row['not_sent']:>9}"
              f"{row['p50_ms']:>8.1f}{row['p90_ms']:>8.1f}{row['p99_ms']:>8.1f}{row['max_ms']:>8.1f}"
              f"{row['later_than_twilio_waits']:>8}")
    lag = report["client_lag_ms"]
    print(f"  client lag (due -> POST begins): p50 {lag['p50']:.2f} ms, p99 {lag['p99']:.2f} ms, "
          f"max {lag['max']:.2f} ms; at most {report['most_in_flight']} requests due and unanswered at once; "
          f"this process (load + fakes) used {report['load_generator_cpu_percent_of_one_core']}% of a core")
    print(f"  CPU (user + system): gunicorn {report['cpu_ms']['web_per_request']:.2f} ms a request, "
          f"the workers {report['cpu_ms']['workers_per_message']:.2f} ms a message; other processes on the machine "
          f"kept {report['other_processes_cpus']:.2f} of its {report['setup']['cpus']} CPUs busy during the load")
    replies = report["replies"]
    print()
    drain = "last reply" if replies["drained"] else "gave up waiting"
    print(f"  replies: {replies['answered_once']}/{replies['messages']} messages answered exactly once, "
          f"lost {replies['lost']}, doubled {replies['doubled']}; {drain} "
          f"{report['drained_seconds_after_schedule']:g}s after the schedule ended")
    print(f"  end to end (due -> reply at Twilio): p50 {replies['end_to_end_p50_ms']:.0f} ms, "
          f"p99 {replies['end_to_end_p99_ms']:.0f} ms, max {replies['end_to_end_max_ms']:.0f} ms")
    receipts = report["receipts"]
    print("  receipts sent: " + ", ".join(f"{status} {count}" for status, count in receipts["by_status"].items())
          + f" (for {receipts['reply_sids_handed_out']} reply SIDs; {receipts['sids_with_receipts_owed']} still owed "
          f"receipts at the end)")
    print(f"  stored status = last acknowledged receipt for {receipts['stored_as_acknowledged']}"
          f"/{receipts['sids_acknowledged']} SIDs; {receipts['sids_with_a_receipt_before_their_part']} SIDs had a "
          f"receipt arrive before the worker had stored their part, which left "
          f"{receipts['behind_after_an_early_receipt']} of them behind")
    jobs = report["jobs"]
    print(f"  jobs: failed {jobs['failed']}, waiting for retry {jobs['waiting_for_retry']}, "
          f"still waiting {jobs['still_waiting']}")
    for name, lines in report["log_trouble"].items():
        print(f"  {name}: {len(lines)} warning/error line(s), first: {lines[0][:200]}")
    print()
    for name, passed in report["checks"].items():
        print(f"  {'PASS' if passed else 'FAIL'}  {name}")
    print()
    print("OPEN LOOP PASSED" if report["passed"] else "OPEN LOOP FAILED")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load = parser.add_argument_group("load")
    load.add_argument("--rate-scale", type=positive_float, default=1.0,
                      help=f"multiply the rates ({INBOUND_PER_SECOND:g} messages/s, "
                           f"{RECEIPTS_PER_SECOND:g} receipts/s) by this (default 1)")
    load.add_argument("--duration", type=positive_float, default=60.0, help="seconds of load (default 60)")
    load.add_argument("--arrivals", choices=("poisson", "even"), default="poisson",
                      help="due times as a Poisson process or evenly spaced (default poisson)")
    load.add_argument("--seed", type=int, default=1, help="seed of the schedule and the senders (default 1)")
    load.add_argument("--users", type=positive_int, default=500, help="distinct WhatsApp users writing (default 500)")
    load.add_argument("--max-connections", type=positive_int, default=1000,
                      help="most client connections, each with a thread of its own; they open as requests find "
                           "none free (default 1000)")
    load.add_argument("--warmup", type=int, default=20, help="messages sent and answered before the load (default 20)")
    pipeline = parser.add_argument_group("pipeline")
    pipeline.add_argument("--workers", type=positive_int, default=2, help="`python worker.py` processes (default 2)")
    pipeline.add_argument("--worker-concurrency", type=positive_int,
                          help="WORKER_CONCURRENCY of each worker; unset by default, so config.py's default applies")
    pipeline.add_argument("--postgres", action="store_true",
                          help="run on a throwaway database of the Postgres server at --postgres-url, not SQLite")
    pipeline.add_argument("--postgres-url", default=LOCAL_POSTGRES_URL,
                          help=f"that server's admin URL (default {LOCAL_POSTGRES_URL})")
    pipeline.add_argument("--llm-delay", type=float, default=0.0,
                          help="seconds the fake LLM takes to answer (default 0: at once)")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds to wait for the last replies after the schedule (default 60)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp folder with the logs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="chatbot-open-loop-"))
    children = Children(workdir)
    openrouter, twilio = FakeOpenRouter(), ReceiptingTwilio(ReceiptFeed())
    openrouter.delay_for = lambda messages: args.llm_delay
    report = {"setup": {
        "cpus": os.cpu_count(),
        "load_average_before": round(os.getloadavg()[0], 2),
        "database": "Postgres" if args.postgres else "SQLite",
        "inbound_per_second": INBOUND_PER_SECOND * args.rate_scale,
        "receipts_per_second": RECEIPTS_PER_SECOND * args.rate_scale,
        "web_concurrency": int(os.environ.get("WEB_CONCURRENCY", "2")),
        "gunicorn_threads": int(os.environ.get("GUNICORN_THREADS", "8")),
        **{name: getattr(args, name) for name in ("rate_scale", "duration", "arrivals", "seed", "users",
                                                  "max_connections", "workers", "worker_concurrency", "llm_delay")},
    }}
    failed_to_run = None
    # Stopped last of all, in reverse: the fakes, the run's redis-server, its Postgres database.
    with ExitStack() as servers:
        try:
            redis_server = start_redis(workdir)
            servers.callback(redis_server.stop)
            redis = Redis.from_url(redis_server.url)
            servers.callback(redis.close)
            for fake in (openrouter, twilio):
                servers.callback(fake.stop)
                fake.start()
            deployment = Deployment(workdir, redis_server.url, twilio.url, openrouter.url, children)
            if args.postgres:
                database_url = servers.enter_context(throwaway_postgres_database(args.postgres_url, "open_loop"))
                deployment.init_schema(database_url)
            else:
                database_url = deployment.fresh_database("open-loop")
            open_loop(args, deployment, redis, twilio, database_url, report)
        except KeyboardInterrupt:
            print("\ninterrupted; stopping the child processes", file=sys.stderr)
            failed_to_run = 130
        except (BenchError, RedisError, psycopg2.Error) as exc:
            print(f"open loop failed to run: {exc}", file=sys.stderr)
            failed_to_run = 1
        finally:
            children.stop_all()
    trouble = report["log_trouble"] = trouble_lines(workdir)
    report["log_errors"] = {name: errors for name, lines in trouble.items()
                            if (errors := [line for line in lines if any(mark in line for mark in ERROR_MARKERS)])}
    if failed_to_run is None:
        report["checks"] = checks(report)
        report["passed"] = all(report["checks"].values())
    if args.keep_logs or trouble or not report.get("passed"):
        report["log_dir"] = str(workdir)
        print(f"logs kept in {workdir}", file=sys.stderr)
    else:
        report["log_dir"] = None
        shutil.rmtree(workdir, ignore_errors=True)
    if failed_to_run is not None:
        return failed_to_run
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
