"""Register the periodic jobs with rq-scheduler and run it: `python scheduler.py`."""
from __future__ import annotations

from datetime import datetime, timezone

from rq_scheduler import Scheduler

from chatbot import tasks
from chatbot.logs import configure_logging
from chatbot.services import QUEUE_NAME, build_services
from config import Config

CLEANUP_CRON = "0 */6 * * *"
SWEEP_INTERVAL = 60
POLL_INTERVAL = 10


def register_jobs(scheduler: Scheduler) -> None:
    """Replace earlier registrations so a restart never doubles a periodic job."""
    for job in scheduler.get_jobs():
        if job.id in ("cleanup-expired-conversations", "sweep-pending-messages"):
            scheduler.cancel(job)
    scheduler.cron(
        CLEANUP_CRON,
        func=tasks.cleanup_expired_conversations,
        id="cleanup-expired-conversations",
        queue_name=QUEUE_NAME,
        use_local_timezone=False,
    )
    scheduler.schedule(
        scheduled_time=datetime.now(timezone.utc),
        func=tasks.sweep_pending_messages,
        interval=SWEEP_INTERVAL,
        repeat=None,
        id="sweep-pending-messages",
        queue_name=QUEUE_NAME,
    )


def main() -> None:
    configure_logging()
    services = build_services(Config.from_env())
    scheduler = Scheduler(queue_name=QUEUE_NAME, connection=services.redis, interval=POLL_INTERVAL)
    register_jobs(scheduler)
    scheduler.run()


if __name__ == "__main__":
    main()
