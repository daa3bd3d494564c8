"""The RQ worker that answers messages: `python worker.py` runs WORKER_CONCURRENCY jobs at once."""
from __future__ import annotations

import logging

from rq.worker import BaseWorker

from chatbot import metrics
from chatbot.jobs import queueing, tasks
from chatbot.jobs.worker import ThreadPoolWorker
from chatbot.logs import RoutineWorkerLines, configure_logging
from chatbot.services import build_services
from config import Config

# Heroku and Render send SIGKILL 30 s after SIGTERM: finish what we can, hand back the rest before.
SHUTDOWN_GRACE = 25


class ChatbotWorker(ThreadPoolWorker):
    """Many jobs at once, with abandoned jobs detected within seconds rather than minutes.

    A worker that dies mid-job (SIGKILL, OOM, a lost dyno) stops renewing its jobs' heartbeats; a job
    counts as abandoned once its heartbeat is `heartbeat_grace` seconds overdue, and the next
    maintenance pass of any live worker retries it (RQ's defaults: +60 s, every 10 minutes; ours come
    from WORKER_HEARTBEAT_INTERVAL, WORKER_HEARTBEAT_GRACE and WORKER_MAINTENANCE_INTERVAL).
    """

    def __init__(self, *args, heartbeat_grace: int = Config.worker_heartbeat_grace, **kwargs):
        super().__init__(*args, **kwargs)
        self.heartbeat_grace = heartbeat_grace

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        return self.job_monitoring_interval + self.heartbeat_grace


def build_worker(services, worker_class: type[BaseWorker] = ChatbotWorker, **options) -> BaseWorker:
    """Return a worker on the message queue; jobs use `services`."""
    tasks.install(services)
    config = services.config
    if issubclass(worker_class, ThreadPoolWorker):
        options.setdefault("concurrency", config.worker_concurrency)
        options.setdefault("shutdown_grace", SHUTDOWN_GRACE)
    if issubclass(worker_class, ChatbotWorker):
        options.setdefault("heartbeat_grace", config.worker_heartbeat_grace)
    return worker_class(
        [services.queue],
        connection=services.redis,
        maintenance_interval=config.worker_maintenance_interval,
        job_monitoring_interval=config.worker_heartbeat_interval,
        **options,
    )


def main() -> None:
    configure_logging()
    # The minute sweep runs all day; it speaks (as a warning) only when it finds work.
    logging.getLogger("rq.worker").addFilter(RoutineWorkerLines((queueing.SWEEP_JOB, "sweep_pending_messages()")))
    config = Config.from_env_or_exit()
    # Counted into the folder the web's /metrics reads, when they share a machine.
    metrics.share_between_processes(config.metrics_dir)
    worker = build_worker(build_services(config))
    # The scheduler process moves jobs waiting for a retry interval back onto the queue.
    worker.work(with_scheduler=True)


if __name__ == "__main__":
    main()
