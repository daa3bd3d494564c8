"""The RQ worker that answers messages: `python worker.py`."""
from __future__ import annotations

from rq import Worker

from chatbot import tasks  # imported here, once, so forked work horses start with it loaded
from chatbot.logs import configure_logging
from chatbot.services import build_services
from config import Config

# How often a worker looks for jobs whose worker died (RQ's default is every 10 minutes).
MAINTENANCE_INTERVAL = 30
JOB_MONITORING_INTERVAL = 10


def build_worker(services, worker_class=Worker, **options) -> Worker:
    """Return a worker on the message queue; jobs use `services`."""
    tasks.install(services)
    return worker_class(
        [services.queue],
        connection=services.redis,
        maintenance_interval=MAINTENANCE_INTERVAL,
        job_monitoring_interval=JOB_MONITORING_INTERVAL,
        **options,
    )


def main() -> None:
    configure_logging()
    worker = build_worker(build_services(Config.from_env()))
    # The scheduler thread moves jobs waiting for a retry interval back onto the queue.
    worker.work(with_scheduler=True)


if __name__ == "__main__":
    main()
