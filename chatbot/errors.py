"""The exceptions that cross module boundaries, where a failure happened, and what the user is told."""
from __future__ import annotations

import logging
from enum import StrEnum

from chatbot.redact import mask_phones_in

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
        # Upstreams quote the numbers they refuse ("The 'To' number whatsapp:+1555… is not valid"): masked
        # here, so no log line, alert or stored error carries a whole number.
        super().__init__(mask_phones_in(message))
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


class CampaignBusy(Exception):
    """Another job holds this campaign's lock: it is sending the campaign."""


class JobDeadlineReached(Exception):
    """The job ran out of time with messages still to answer; its next run takes them."""


class NothingToRetry(Exception):
    """What an operator asked to retry is failed no longer: another retry (a second click) put it back first."""


class Category(StrEnum):
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

