"""Run RQ's own WorkerPool on the message queue: WORKER_CONCURRENCY forking workers, for comparison only.

The benchmark starts it for `python bench/bench_pipeline.py --worker-line pool`; production runs
`python worker.py`.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rq.worker_pool import WorkerPool  # noqa: E402

from chatbot.jobs import tasks  # noqa: E402
from chatbot.logs import configure_logging  # noqa: E402
from chatbot.services import QUEUE_NAME, build_services  # noqa: E402
from config import Config  # noqa: E402


def main() -> None:
    configure_logging()
    services = build_services(Config.from_env())
    # Installed before the pool forks: every worker and the work horse it forks per job inherit the
    # job module and the built clients, instead of importing and building them again for each job.
    tasks.install(services)
    pool = WorkerPool([QUEUE_NAME], connection=services.redis, num_workers=services.config.worker_concurrency)
    pool.start()


if __name__ == "__main__":
    main()
