"""Register the periodic jobs with rq-scheduler and run it: `python scheduler.py`."""
from __future__ import annotations

import logging
import time
import warnings
from datetime import UTC, datetime

from redis.exceptions import RedisError
from rq_scheduler import Scheduler

from chatbot.jobs import queueing, tasks
from chatbot.logs import configure_logging
from chatbot.services import QUEUE_NAME, build_services
from config import Config

log = logging.getLogger(__name__)

CLEANUP_CRON = "0 */6 * * *"
SWEEP_INTERVAL = 60
# A periodic job's return value is kept this long (long enough to read in `rq info`), not forever.
PERIODIC_RESULT_TTL = 6 * 3600

# rq-scheduler calls crontab's next() without default_utc, and crontab warns about it on every
# start. Our cron jobs run in UTC either way (use_local_timezone=False passes a UTC "now").
warnings.filterwarnings("ignore", message=r"Version 0\.22\.0\+ of crontab", category=FutureWarning)


def register_jobs(scheduler: Scheduler) -> None:
    """Replace earlier registrations so a restart never doubles a periodic job."""
    for job in scheduler.get_jobs():
        if job.id in (queueing.CLEANUP_JOB, queueing.SWEEP_JOB):
            scheduler.cancel(job)
    scheduler.cron(
        CLEANUP_CRON,
        func=tasks.cleanup_expired_conversations,
        id=queueing.CLEANUP_JOB,
        queue_name=QUEUE_NAME,
        use_local_timezone=False,
        result_ttl=PERIODIC_RESULT_TTL,
    )
    scheduler.schedule(
        scheduled_time=datetime.now(UTC),
        func=tasks.sweep_pending_messages,
        interval=SWEEP_INTERVAL,
        repeat=None,
        id=queueing.SWEEP_JOB,
        queue_name=QUEUE_NAME,
        result_ttl=PERIODIC_RESULT_TTL,
    )


class SelfHealingScheduler(Scheduler):
    """Registers the periodic jobs again whenever Redis has lost them (it may keep nothing on disk)."""

    def enqueue_jobs(self):
        if queueing.CLEANUP_JOB not in self or queueing.SWEEP_JOB not in self:
            log.warning("periodic jobs missing from Redis (restarted or flushed?); registering them again")
            register_jobs(self)
        return super().enqueue_jobs()


def main() -> None:
    configure_logging()
    config = Config.from_env_or_exit()
    services = build_services(config)
    while True:
        try:
            # A new instance (a new name) each time: the last one's registration may still be in Redis.
            scheduler = SelfHealingScheduler(queue_name=QUEUE_NAME, connection=services.redis,
                                             interval=config.scheduler_poll_interval)
            register_jobs(scheduler)
            scheduler.run()
            return
        except RedisError as error:
            # Outlive a Redis outage instead of exiting: the sweep is what recovers from it.
            log.error("Redis unavailable (%s); the scheduler retries in %d s",
                      error.__class__.__name__, config.scheduler_poll_interval)
            time.sleep(config.scheduler_poll_interval)


if __name__ == "__main__":
    main()
