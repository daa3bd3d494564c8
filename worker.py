"""The RQ worker that answers messages: `python worker.py`."""
from __future__ import annotations

from rq import Worker

from chatbot import tasks  # imported here, once, so forked work horses start with it loaded
from chatbot.logs import configure_logging
from chatbot.services import build_services
from config import Config

# A worker that dies mid-job (SIGKILL, OOM, a lost dyno) stops renewing the job's heartbeat; the
# job counts as abandoned once the heartbeat is HEARTBEAT_GRACE seconds overdue, and the next
# maintenance pass of any live worker re-queues it (RQ's defaults: +60 s, every 10 minutes).
JOB_MONITORING_INTERVAL = 5
HEARTBEAT_GRACE = 15
MAINTENANCE_INTERVAL = 10


class ChatbotWorker(Worker):
    """RQ's forking worker, with abandoned jobs detected within seconds rather than minutes."""

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        if job.timeout and job.timeout > 0:
            return int(min(job.timeout - working_time, self.job_monitoring_interval)) + HEARTBEAT_GRACE
        return self.job_monitoring_interval + HEARTBEAT_GRACE


def build_worker(services, worker_class=ChatbotWorker, **options) -> Worker:
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
