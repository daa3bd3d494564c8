"""An RQ worker that runs up to N jobs at once in threads of one process.

Answering a message is almost all waiting (on the model, on Twilio), so threads give concurrency
for the memory of one process. RQ stays the engine: jobs are dequeued, registered, heart-beaten,
retried, rate-limited and finished by RQ's own code; only the job runs in a thread.

RQ has no thread worker of its own (rq/rq#1803, a multithread worker, was closed unmerged with
"dependencies and timed-out jobs' registries may not behave"; rq/rq#1804 is still open), so know
what this one does not do, as CVAT's port of the same idea also says:
- No job timeout is enforced. A thread cannot be killed safely, so RQ's `timeout` (JOB_TIMEOUT)
  and callback timeouts never fire (`NoDeathPenalty`). Every job must end itself: the jobs'
  JOB_DEADLINE, AI_DEADLINE, and a timeout on every HTTP call are what stop a stuck one.
- No stop-job or kill command. `rq`'s `send_stop_job_command` and `send_kill_horse_command`
  travel over pub/sub to a forked work horse; this worker has none and does not listen
  (`subscribe`), so a running job always runs to its own deadline.
- No dependencies between jobs. Ours have none; a job queued `depends_on` another would be
  promoted by RQ as usual, but nothing here was tested for it.
- One process for all. A job that leaks memory or holds the GIL in C code slows every job of
  the worker; each job opens and closes its own database connection (`connection_scope`).
"""
from __future__ import annotations

import signal
import threading
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import worker_registration
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import DequeueTimeout, NoSuchJobError
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import BaseDeathPenalty
from rq.utils import current_timestamp, now
from rq.worker import BaseWorker, DequeueStrategy, WorkerStatus

# How long one dequeue blocks: also how fast the main loop notices a stop request.
DEQUEUE_POLL_SECONDS = 1
MAX_REDIS_WAIT = 30.0


class NoDeathPenalty(BaseDeathPenalty):
    """Never interrupts a job: a thread cannot be killed safely, so each job keeps its own deadline."""

    def setup_death_penalty(self):
        """Set no alarm."""

    def cancel_death_penalty(self):
        """Nothing was set."""


class ThreadPoolWorker(BaseWorker):
    """Dequeues while a slot is free and runs each job in a thread of its own.

    A heartbeat thread refreshes the worker and every running job, so a killed process's jobs are
    found abandoned and handed to another worker as with RQ's forking worker. On SIGTERM it stops
    taking jobs, waits up to `shutdown_grace` seconds for the running ones, then hands back what is
    left so another worker retries it at once; a second SIGTERM hands back immediately.
    """

    death_penalty_class = NoDeathPenalty

    def __init__(self, *args, concurrency: int = 1, shutdown_grace: float = 25.0, **kwargs):
        super().__init__(*args, **kwargs)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.shutdown_grace = shutdown_grace
        self._slots = threading.BoundedSemaphore(concurrency)
        self._running: dict[str, tuple[Job, Execution]] = {}
        self._running_lock = threading.Lock()
        self._stop_heartbeats = threading.Event()
        self._hurry = threading.Event()

    # --- the work loop ------------------------------------------------------------------------

    def work(self, burst: bool = False, logging_level: str | None = None,
             date_format: str = DEFAULT_LOGGING_DATE_FORMAT, log_format: str = DEFAULT_LOGGING_FORMAT,
             max_jobs: int | None = None, max_idle_time: int | None = None, with_scheduler: bool = False,
             dequeue_strategy: DequeueStrategy = DequeueStrategy.DEFAULT) -> bool:
        """Take jobs until stopped (or, in burst mode, until the queues are empty and all jobs ended)."""
        self.bootstrap(logging_level, date_format, log_format)
        self._dequeue_strategy = dequeue_strategy
        self._install_signal_handlers()
        heartbeats = threading.Thread(target=self._heartbeat_loop, name="rq-heartbeats", daemon=True)
        heartbeats.start()
        started = 0
        redis_wait = 1.0
        try:
            while not self._stop_requested and (max_jobs is None or started < max_jobs):
                try:
                    self.check_for_suspension(burst)
                    if self.should_run_maintenance_tasks:
                        self.run_maintenance_tasks()
                    if with_scheduler:
                        self.enqueue_due_jobs()
                    if not self._slots.acquire(timeout=DEQUEUE_POLL_SECONDS):
                        continue
                    try:
                        result = self._dequeue(burst)
                    except BaseException:
                        self._slots.release()
                        raise
                    redis_wait = 1.0
                    if result is None:
                        self._slots.release()
                        if burst and self._wait_for_running(None) and self._queues_empty():
                            self.log.info("Worker %s: done, quitting", self.name)
                            break
                        continue
                    self._start(*result)
                    started += 1
                except (RedisConnectionError, RedisTimeoutError) as error:
                    self.log.error("Worker %s: Redis unavailable (%s); retrying in %.0f s",
                                   self.name, error.__class__.__name__, redis_wait)
                    time.sleep(redis_wait)
                    redis_wait = min(redis_wait * 2, MAX_REDIS_WAIT)
        finally:
            self.teardown()
        return bool(started)

    def enqueue_due_jobs(self) -> int:
        """Move jobs whose retry time has come from the scheduled registry to their queue.

        RQ's scheduler does this in a process of its own under a lock that outlives a killed
        holder by a minute, which would hold every retry back that long. Here each worker does
        it: whoever removes a job from the registry enqueues it, so no lock is needed and none
        goes stale. (A worker dying between the two leaves the message to the database sweeper.)
        """
        moved = 0
        for queue in self.queues:
            registry = queue.scheduled_job_registry
            for job_id in registry.get_jobs_to_schedule(current_timestamp()):
                if not self.connection.zrem(registry.key, job_id):
                    continue  # another worker took it
                try:
                    job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
                except NoSuchJobError:
                    continue
                queue.enqueue_job(job, at_front=job.should_enqueue_at_front())
                moved += 1
        return moved

    def _dequeue(self, burst: bool) -> tuple[Job, Queue] | None:
        try:
            result = self.queue_class.dequeue_any(
                self._ordered_queues,
                None if burst else DEQUEUE_POLL_SECONDS,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        except DequeueTimeout:
            return None
        if result is not None:
            job, queue = result
            self.reorder_queues(reference_queue=queue)
            self.log.info("Worker %s: %s: %s (%s)", self.name, queue.name, job.description, job.id)
        return result

    def _queues_empty(self) -> bool:
        return all(queue.count == 0 for queue in self.queues)

    def _start(self, job: Job, queue: Queue) -> None:
        job.redis_server_version = self.get_redis_server_version()
        execution = self.prepare_execution(job)
        with self._running_lock:
            self._running[execution.id] = (job, execution)
        thread = threading.Thread(target=self._run, args=(job, queue, execution),
                                  name=f"rq-job-{job.id}", daemon=True)
        thread.start()

    def _run(self, job: Job, queue: Queue, execution: Execution) -> None:
        try:
            self.perform_job(job, queue, execution)
        except Exception:
            self.log.exception("Worker %s: job %s could not be finalised", self.name, job.id)
        finally:
            with self._running_lock:
                self._running.pop(execution.id, None)
                idle = not self._running
            if idle:
                try:
                    self.set_state(WorkerStatus.IDLE)
                except RedisError as error:
                    # Only `rq info` is stale; the next dequeue sets the state again.
                    self.log.warning("Worker %s: could not record idle state (%s)", self.name,
                                     error.__class__.__name__)
            self._slots.release()

    def running_jobs(self) -> list[Job]:
        """Return the jobs this worker is running now."""
        with self._running_lock:
            return [job for job, _execution in self._running.values()]

    def set_state(self, state: str, pipeline=None):
        # RQ marks a worker idle each time it dequeues; it is busy while any job runs.
        if state == WorkerStatus.IDLE and self._running:
            state = WorkerStatus.BUSY
        super().set_state(state, pipeline=pipeline)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        # RQ's version also renames the process after the job; with many jobs at once that name lies.
        with self.connection.pipeline() as pipeline:
            heartbeat_ttl = self.get_heartbeat_ttl(job)
            job.heartbeat(now(), heartbeat_ttl, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            pipeline.persist(job.key)
            if remove_from_intermediate_queue:
                pipeline.lrem(Queue(job.origin, connection=self.connection).intermediate_queue_key, 1, job.id)
            pipeline.execute()

    # --- heartbeats ---------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stop_heartbeats.wait(self.job_monitoring_interval):
            try:
                self.send_heartbeats()
            except RedisError as error:
                self.log.warning("Worker %s: heartbeat failed (%s)", self.name, error.__class__.__name__)

    def send_heartbeats(self) -> None:
        """Refresh the worker and every running job in one round trip."""
        with self._running_lock:
            running = list(self._running.values())
        moment = now()
        worker_ttl = self.job_monitoring_interval + 60
        with self.connection.pipeline() as pipeline:
            self.heartbeat(worker_ttl, pipeline=pipeline)
            for job, execution in running:
                working_time = (moment - job.started_at).total_seconds() if job.started_at else 0.0
                ttl = int(self.get_heartbeat_ttl(job, working_time=working_time))
                execution.heartbeat(job.started_job_registry, ttl, pipeline=pipeline)
                job.heartbeat(moment, ttl, pipeline=pipeline, xx=True)
            worker_hash_was_gone = pipeline.execute()[0] == 1
        if worker_hash_was_gone:
            # Redis lost our registration (restarted empty, or flushed): register again, or `rq info`
            # and the other workers' maintenance would not know this worker is alive.
            with self.connection.pipeline() as pipeline:
                pipeline.hset(self.key, mapping=self.serialize())
                pipeline.expire(self.key, worker_ttl)
                worker_registration.register(self, pipeline)
                pipeline.execute()

    # --- stopping -----------------------------------------------------------------------------

    def subscribe(self):
        """Listen to no pubsub commands: RQ's stop and kill a forked work horse, and there is none."""

    def request_stop(self, signum, frame):
        """Warm shutdown: take no more jobs; the loop ends and teardown() waits for running ones."""
        self._shutdown_requested_date = now()
        self._stop_requested = True
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self.log.info("Worker %s: warm shutdown requested; finishing %d running job(s) within %.0f s",
                      self.name, len(self._running), self.shutdown_grace)

    def request_force_stop(self, signum, frame):
        """A second signal: hand the running jobs back now instead of waiting for them."""
        if self._shutdown_requested_date and (now() - self._shutdown_requested_date).total_seconds() < 1:
            return  # the same stop, delivered twice (e.g. to the process group and to the process)
        self.log.warning("Worker %s: cold shutdown requested", self.name)
        self._hurry.set()

    def _wait_for_running(self, timeout: float | None) -> bool:
        """Wait until no job runs (or `timeout` passes, or a cold stop); True when none runs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._running:
            if self._hurry.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(0.05)
        return True

    def teardown(self):
        if self._stop_requested:
            try:
                self.set_shutdown_requested_date()
            except RedisError as error:
                self.log.warning("Worker %s: could not record the shutdown request (%s)", self.name,
                                 error.__class__.__name__)
        if not self._wait_for_running(self.shutdown_grace):
            self.hand_back_running_jobs()
        self._stop_heartbeats.set()
        try:
            self.register_death()
        except RedisError:
            self.log.warning("Worker %s: could not register its death; it expires on its own", self.name)

    def hand_back_running_jobs(self) -> None:
        """Mark the running jobs abandoned now, so RQ retries them at once instead of after their
        heartbeats expire. A job that finishes after this is harmless: jobs are safe to run twice."""
        with self._running_lock:
            running = list(self._running.values())
        if not running:
            return
        self.log.warning("Worker %s: handing back %d unfinished job(s): %s", self.name, len(running),
                         ", ".join(job.id for job, _execution in running))
        registries = {}
        try:
            with self.connection.pipeline() as pipeline:
                for job, execution in running:
                    registry = job.started_job_registry
                    registries[registry.key] = registry
                    pipeline.zadd(registry.key, {execution.composite_key: 1}, xx=True)
                pipeline.execute()
            for registry in registries.values():
                registry.cleanup()
        except RedisError as error:
            self.log.error("Worker %s: could not hand back jobs (%s); they return when their heartbeats "
                           "expire", self.name, error.__class__.__name__)
