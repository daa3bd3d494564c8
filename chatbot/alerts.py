"""The ErrorHandler: failures logged by category, and the operator alerted at most once per error type an hour:
in the panel's notices always, and at ALERT_WEBHOOK_URL when it is set."""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable

import requests
from peewee import PeeweeException
from redis.exceptions import RedisError

from chatbot.errors import USER_MESSAGES, Category, UpstreamError
from chatbot.redact import mask_phones_in

log = logging.getLogger(__name__)

SEVERITY = {
    Category.WEBHOOK: logging.WARNING,
    Category.AI: logging.ERROR,
    Category.WHATSAPP: logging.ERROR,
    Category.SYSTEM: logging.CRITICAL,
}
ALERT_INTERVAL = 3600
# Alerts waiting for the sender thread. They are already one per type per interval, so a full
# queue means many kinds of failure at once: the ALERT log lines still tell them all.
ALERT_QUEUE_SIZE = 100
# At exit, wait this long for alerts still being posted: one post to a live webhook fits, and a
# worker's shutdown grace plus this stays inside the 30 s a platform gives between SIGTERM and SIGKILL.
ALERT_FLUSH_ON_EXIT = 2.0


class ErrorHandler:
    """Logs failures by category and alerts the operator at most once per error type per hour.

    The ALERT log line and the panel's notice are written at once; the post to ALERT_WEBHOOK_URL goes
    from a background thread, so a slow or unreachable alert webhook never holds up a webhook request
    or a job.
    """

    def __init__(self, redis, alert_webhook_url: str = "", session: requests.Session | None = None,
                 alert_interval: int = ALERT_INTERVAL, timeout: float = 5.0, clock=time.monotonic,
                 queue_size: int = ALERT_QUEUE_SIZE, keep_notice: Callable[[str, str], object] | None = None):
        self.redis = redis
        # Writes the panel's notice of an alert (kind, text): Notice.keep where there is a database.
        self.keep_notice = keep_notice
        self.alert_webhook_url = alert_webhook_url
        self.session = session or requests.Session()
        self.alert_interval = alert_interval
        self.timeout = timeout
        self.clock = clock
        self.queue_size = queue_size
        self.dropped = 0
        # When Redis cannot say, this process remembers when it last alerted each type.
        self._alerted_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._outbox: queue.Queue | None = None
        self._outbox_pid: int | None = None
        self._unsent = 0

    @staticmethod
    def user_message(category: Category) -> str:
        """Return what the WhatsApp user is told after a failure of this category ('' for nothing)."""
        return USER_MESSAGES[category]

    def handle(self, category: Category, error: Exception, context: str = "") -> None:
        """Log `error` at its category's severity and alert the operator about its type (with every
        phone number in its text masked: a database or library error may quote one too)."""
        text = mask_phones_in(str(error))
        log.log(SEVERITY[category], "%s failure %s: %s", category.value, context, text)
        self.send_admin_alert(f"{category.value}:{error_type(error)}", f"{category.value} failure: {text}")

    def send_admin_alert(self, error_type: str, text: str) -> bool:
        """Tell the operator (log and the panel's notices now, ALERT_WEBHOOK_URL in the background when
        set); False when this type was already alerted within the interval."""
        if not self._first_in_interval(error_type):
            return False
        log.error("ALERT %s: %s", error_type, text)
        try:
            if self.keep_notice is not None:
                self.keep_notice(error_type, mask_phones_in(text))
        except PeeweeException as error:
            # The database may be what failed: the ALERT line above and the webhook still tell it.
            log.error("alert %s not kept as a notice: %s", error_type, error)
        if self.alert_webhook_url:
            self._queue_post(self.alert_webhook_url, f"[WhatsApp assistant] {text}")
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for queued alerts to be posted; False if some are still waiting."""
        with self._settled:
            return self._settled.wait_for(lambda: self._unsent == 0 or self._outbox_pid != os.getpid(), timeout)

    def _first_in_interval(self, error_type: str) -> bool:
        try:
            return bool(self.redis.set(f"chatbot:alert:{error_type}", 1, nx=True, ex=self.alert_interval))
        except RedisError:
            # Better a repeated alert than a silent outage, but not one per request: without Redis
            # each process keeps the same rule in memory.
            return self._first_in_process(error_type)

    def _first_in_process(self, error_type: str) -> bool:
        now = self.clock()
        with self._lock:
            last = self._alerted_at.get(error_type)
            if last is not None and now - last < self.alert_interval:
                return False
            # Forget what has expired, so a long outage with many kinds of failure cannot grow this.
            self._alerted_at = {kind: at for kind, at in self._alerted_at.items() if now - at < self.alert_interval}
            self._alerted_at[error_type] = now
            return True

    def _queue_post(self, url: str, text: str) -> None:
        with self._lock:
            outbox = self._outbox_of_this_process()
            try:
                outbox.put_nowait((url, text))
            except queue.Full:
                self.dropped += 1
                dropped = self.dropped
            else:
                self._unsent += 1
                return
        # Its ALERT line is in the log already; only the post is lost.
        log.warning("alert queue full; alert dropped (dropped=%d)", dropped)

    def _outbox_of_this_process(self) -> queue.Queue:
        """Return the queue the sender thread reads, starting both on first use (and in a forked
        child, which inherits the queue but not the thread)."""
        if self._outbox_pid != os.getpid():
            self._outbox = queue.Queue(self.queue_size)
            self._outbox_pid = os.getpid()
            self._unsent = 0
            # A daemon, so that nothing waits on it at exit beyond the short flush registered here.
            threading.Thread(target=self._post_forever, args=(self._outbox,), name="alert-sender",
                             daemon=True).start()
            atexit.register(self.flush, ALERT_FLUSH_ON_EXIT)
        return self._outbox

    def _post_forever(self, outbox: queue.Queue) -> None:
        while True:
            url, text = outbox.get()
            try:
                self._post(url, text)
            except Exception:
                # The thread's boundary: a surprise here must not stop every later alert.
                log.exception("alert could not be posted")
            finally:
                with self._settled:
                    self._unsent -= 1
                    self._settled.notify_all()

    def _post(self, url: str, text: str) -> None:
        try:
            response = self.session.post(url, json={"text": text}, timeout=self.timeout)
            if response.status_code >= 400:
                log.warning("alert webhook answered %d", response.status_code)
        except requests.RequestException as exc:
            log.warning("alert webhook unreachable: %s", exc.__class__.__name__)


def error_type(error: Exception) -> str:
    """A short, stable name for grouping alerts: the class and, for upstream errors, the status/code."""
    if isinstance(error, UpstreamError):
        return f"{error.__class__.__name__}:{error.code or error.status or 'none'}"
    return error.__class__.__name__

