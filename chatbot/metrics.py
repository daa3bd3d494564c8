"""Prometheus metrics: what each process counts, and GET /metrics, which adds every process up.

Labels are verdicts, outcomes and model slugs only: never a phone number, a message or an amount
that could single a user out.
"""
from __future__ import annotations

import hmac
import os
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import SimpleNamespace

from flask import Blueprint, Response, abort, current_app, request
from redis.exceptions import RedisError

bp = Blueprint("metrics", __name__)
METRICS_PATH = "/metrics"

# prometheus_client decides, when first imported, whether values live in this folder's files.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# A model answers in about a second to a minute (AI_DEADLINE is at most 120 s).
AI_LATENCY_BUCKETS = (0.5, 1, 2, 4, 8, 15, 30, 60, 120)

_shared_directory: str | None = None


def share_between_processes(directory: str, remove_stale: bool = False) -> None:
    """Have this process and the ones it starts count into `directory`, for /metrics to add up.

    Call it before anything is counted: prometheus_client is imported (and picks its mode) only
    then. `remove_stale` deletes the files of processes no longer running, i.e. an earlier run's:
    only the web's start asks for it, and a running worker's files stay. Share the folder only
    between processes of one deployment on one machine: the check sees this machine's processes,
    and would take another deployment's ended ones for stale.
    """
    global _shared_directory
    # The deployment's own: other users of the machine neither read its counts nor add to them.
    Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[MULTIPROC_VARIABLE] = directory
    _shared_directory = directory
    if remove_stale:
        for path in Path(directory).glob("*.db"):
            if not _running(path.stem.rpartition("_")[2]):
                path.unlink(missing_ok=True)


def forget_process(pid: int) -> None:
    """Drop a dead process's live gauges (gunicorn's child_exit); its counters keep counting in the sum."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, _shared_directory)


def _running(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


@cache
def _instruments() -> SimpleNamespace:
    # Imported here, not at the top: share_between_processes must run first in the entry points.
    # A process started with the folder named but not made (`flask chat` before any web process)
    # would fail at its first count.
    if os.environ.get(MULTIPROC_VARIABLE):
        Path(os.environ[MULTIPROC_VARIABLE]).mkdir(mode=0o700, parents=True, exist_ok=True)
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    return SimpleNamespace(
        registry=registry,
        webhooks=Counter("chatbot_webhook_requests_total", "Webhook requests by verdict.", ["verdict"],
                         registry=registry),
        jobs=Counter("chatbot_jobs_total", "Message jobs by outcome.", ["outcome"], registry=registry),
        ai_calls=Counter("chatbot_ai_calls_total", "AI calls by outcome.", ["outcome"], registry=registry),
        ai_latency=Histogram("chatbot_ai_latency_seconds", "Seconds until the model answered, by the model "
                             "that answered.", ["model"], buckets=AI_LATENCY_BUCKETS, registry=registry),
        ai_tokens=Counter("chatbot_ai_tokens_total", "Tokens by the model that answered and kind.",
                          ["model", "kind"], registry=registry),
        ai_cost=Counter("chatbot_ai_cost_usd_total", "OpenRouter's reported cost by the model that answered.",
                        ["model"], registry=registry),
        sends=Counter("chatbot_whatsapp_sends_total", "Reply parts sent to Twilio by outcome.", ["outcome"],
                      registry=registry),
        refusals=Counter("chatbot_refusals_total", "Messages kept from the AI by a budget or the access list.",
                         ["reason"], registry=registry),
        handoffs=Counter("chatbot_handoffs_total", "Conversations handed to a person, by reason.", ["reason"],
                         registry=registry),
        ratings=Counter("chatbot_ratings_total", "Customers' answers to \"How did I do?\" (1-5), by number and "
                        "AI configuration.", ["number", "ai_configuration", "score"], registry=registry),
        first_human_reply=Histogram("chatbot_handoff_first_reply_seconds", "Seconds from a handoff to the first "
                                    "reply of a person.", buckets=(60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
                                    registry=registry),
    )


def count_webhook(verdict: str) -> None:
    """Count a webhook request by its verdict (allowed, sender_limited, duplicate, bad_signature, ...)."""
    _instruments().webhooks.labels(verdict).inc()


def count_job(outcome, gave_up: bool = False) -> None:
    """Count a finished message job by what its processor `outcome` says happened."""
    if gave_up:
        label = "gave_up"
    elif outcome.failed:
        label = "failed"
    elif outcome.answered:
        label = "answered"
    else:
        label = "no_ai_answer"  # a command, a takeover, or nothing left to answer
    _instruments().jobs.labels(label).inc()


def count_job_error(retries_left: int | None) -> None:
    """Count a message job that raised: RQ runs it again, or it failed for good."""
    _instruments().jobs.labels("retrying" if retries_left else "failed_for_good").inc()


def record_ai_reply(reply, seconds: float) -> None:
    """Count a model's answer: its latency, tokens and cost, under the model that answered."""
    metrics, usage = _instruments(), reply.usage
    metrics.ai_calls.labels("answered").inc()
    metrics.ai_latency.labels(reply.model).observe(seconds)
    for kind in ("prompt", "completion"):
        if isinstance(usage.get(f"{kind}_tokens"), int):
            metrics.ai_tokens.labels(reply.model, kind).inc(usage[f"{kind}_tokens"])
    if isinstance(usage.get("cost"), (int, float)):
        metrics.ai_cost.labels(reply.model).inc(usage["cost"])


def count_ai_failure(error) -> None:
    """Count an AI call that failed after the adapter's own retries."""
    _instruments().ai_calls.labels("transient_failure" if error.retryable else "permanent_failure").inc()


def count_send(error=None) -> None:
    """Count a reply part Twilio took (no `error`) or refused."""
    outcome = "sent" if error is None else ("failed_transient" if error.retryable else "failed_permanent")
    _instruments().sends.labels(outcome).inc()


def count_rating(rating) -> None:
    """Count a customer's rating under its number ("default" for the main one) and AI configuration."""
    configuration = rating.ai_source.removeprefix("db:") if rating.ai_source.startswith("db:") else "environment"
    _instruments().ratings.labels(rating.number or "default", configuration, str(rating.score)).inc()


def count_handoff(reason: str) -> None:
    """Count a conversation handed to a person, by why."""
    _instruments().handoffs.labels(reason).inc()


def observe_first_human_reply(seconds: float) -> None:
    """Record how long a customer waited for a person's first reply after a handoff."""
    _instruments().first_human_reply.observe(seconds)


def count_refusal(reason: str) -> None:
    """Count a message kept from the AI: `reason` is "budget" or "access"."""
    _instruments().refusals.labels(reason).inc()


class QueueCollector:
    """The message queue's depth and its oldest job's age, read from Redis at scrape time."""

    def __init__(self, queue):
        self.queue = queue

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        reachable = GaugeMetricFamily("chatbot_queue_reachable", "1 when Redis answered this scrape.")
        try:
            depth = self.queue.count
            oldest_ids = self.queue.get_job_ids(0, 0)
            oldest = self.queue.fetch_job(oldest_ids[0]) if oldest_ids else None
        except RedisError:
            reachable.add_metric([], 0)
            yield reachable
            return
        reachable.add_metric([], 1)
        yield reachable
        yield GaugeMetricFamily("chatbot_queue_depth", "Jobs waiting in the message queue.", value=depth)
        yield GaugeMetricFamily("chatbot_queue_oldest_job_age_seconds", "Seconds the oldest waiting job has "
                                "waited (0 when none waits).", value=_age(oldest.enqueued_at if oldest else None))


def _age(enqueued_at: datetime | None) -> float:
    if enqueued_at is None:
        return 0.0
    if enqueued_at.tzinfo is None:
        enqueued_at = enqueued_at.replace(tzinfo=UTC)  # RQ stores UTC
    return max(0.0, (datetime.now(UTC) - enqueued_at).total_seconds())


@bp.get(METRICS_PATH)
def scrape():
    """Every process's counts in Prometheus's text format, for a bearer of METRICS_TOKEN."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    services = current_app.extensions["chatbot"]
    token = services.config.metrics_token
    if not token:
        abort(404)
    if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()):
        return Response("a valid bearer token is required\n", status=401, mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    if _shared_directory:
        counted = CollectorRegistry()
        MultiProcessCollector(counted, path=_shared_directory)
    else:
        counted = _instruments().registry
    queue = CollectorRegistry()
    queue.register(QueueCollector(services.queue))
    return Response(generate_latest(counted) + generate_latest(queue), content_type=CONTENT_TYPE_LATEST)
