"""The exceptions that cross module boundaries."""
from __future__ import annotations


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


class WhatsAppError(UpstreamError):
    """Twilio did not accept a message for sending."""

    upstream = "twilio"


class SenderBusy(Exception):
    """Another worker holds this sender's lock; the job should run again later."""
