"""The exceptions that cross module boundaries, and the ErrorHandler that reports failures."""
from __future__ import annotations

import logging
from enum import Enum

import requests
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """An outside service failed; `retryable` says whether trying again may help."""

    upstream = "upstream"

    def __init__(
        self,
        message: str,
        retryable: bool,
        status: int | None = None,
        code=None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        details = ", ".join(
            part for part in (
                f"status={self.status}" if self.status is not None else "",
                f"code={self.code}" if self.code is not None else "",
                "retryable" if self.retryable else "permanent",
            ) if part
        )
        return f"{self.upstream}: {self.args[0]} ({details})"


class AIError(UpstreamError):
    """The AI provider did not give a usable answer."""

    upstream = "openrouter"

    def __init__(self, message: str, retryable: bool, deadline_exceeded: bool = False, **details):
        super().__init__(message, retryable, **details)
        # The AI deadline ran out: the user has waited long enough and gets the apology now.
        self.deadline_exceeded = deadline_exceeded


class WhatsAppError(UpstreamError):
    """Twilio did not accept a message for sending."""

    upstream = "twilio"


class SenderBusy(Exception):
    """Another worker holds this sender's lock; the job should run again later."""


class JobDeadlineReached(Exception):
    """The job ran out of time with messages still to answer; its next run takes them."""


class Category(str, Enum):
    """Where a failure happened; decides what the user is told and how loudly the operator hears."""

    WEBHOOK = "webhook"
    AI = "ai"
    WHATSAPP = "whatsapp"
    SYSTEM = "system"


USER_MESSAGES = {
    Category.AI: "Sorry, I can't answer right now because of a technical problem. "
                 "Please try again in a few minutes.",
    Category.SYSTEM: "Sorry, something went wrong on our side. Please try again later.",
    # A webhook failure is answered to Twilio (which retries); a WhatsApp failure cannot reach the user.
    Category.WEBHOOK: "",
    Category.WHATSAPP: "",
}
SEVERITY = {
    Category.WEBHOOK: logging.WARNING,
    Category.AI: logging.ERROR,
    Category.WHATSAPP: logging.ERROR,
    Category.SYSTEM: logging.CRITICAL,
}
ALERT_INTERVAL = 3600


class ErrorHandler:
    """Logs failures by category and alerts the operator at most once per error type per hour."""

    def __init__(self, redis, alert_webhook_url: str = "", session: requests.Session | None = None,
                 alert_interval: int = ALERT_INTERVAL, timeout: float = 5.0):
        self.redis = redis
        self.alert_webhook_url = alert_webhook_url
        self.session = session or requests.Session()
        self.alert_interval = alert_interval
        self.timeout = timeout

    @staticmethod
    def user_message(category: Category) -> str:
        """Return what the WhatsApp user is told after a failure of this category ('' for nothing)."""
        return USER_MESSAGES[category]

    def handle(self, category: Category, error: Exception, context: str = "") -> None:
        """Log `error` at its category's severity and alert the operator about its type."""
        log.log(SEVERITY[category], "%s failure %s: %s", category.value, context, error)
        self.send_admin_alert(f"{category.value}:{error_type(error)}", f"{category.value} failure: {error}")

    def send_admin_alert(self, error_type: str, text: str) -> bool:
        """Tell the operator (log, plus ALERT_WEBHOOK_URL when set); False when this type was already
        alerted within the hour."""
        try:
            first = self.redis.set(f"chatbot:alert:{error_type}", 1, nx=True, ex=self.alert_interval)
        except RedisError:
            first = True  # better a repeated alert than a silent outage
        if not first:
            return False
        log.error("ALERT %s: %s", error_type, text)
        if self.alert_webhook_url:
            try:
                response = self.session.post(self.alert_webhook_url, json={"text": f"[WhatsApp assistant] {text}"},
                                             timeout=self.timeout)
                if response.status_code >= 400:
                    log.warning("alert webhook answered %d", response.status_code)
            except requests.RequestException as exc:
                log.warning("alert webhook unreachable: %s", exc.__class__.__name__)
        return True


def error_type(error: Exception) -> str:
    """A short, stable name for grouping alerts: the class and, for upstream errors, the status/code."""
    if isinstance(error, UpstreamError):
        return f"{error.__class__.__name__}:{error.code or error.status or 'none'}"
    return error.__class__.__name__
