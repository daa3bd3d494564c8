"""The numbers the assistant answers on: which number a message went to, and how to answer there."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from peewee import PeeweeException

from chatbot.models import WhatsAppNumber

log = logging.getLogger(__name__)

# How long a process trusts its copy of the numbers table: a change in the admin or the CLI reaches
# every process within this (a number added is found at once: an unknown `To` reads the table again).
DIRECTORY_TTL = 5.0
DEFAULT_LABEL = "Default number"
# What switching a number off does, in the admin's and the CLI's words: the webhook keeps no message
# for it, so no conversation, transcript or opt-out can hold one (chatbot.web.webhook._not_for_us).
SWITCHED_OFF = ("Off: its messages are acknowledged to Twilio and kept only in the webhook log (verdict "
                "number_inactive), never stored in a conversation or answered.")


@dataclass(frozen=True)
class Assistant:
    """One number and how the assistant answers on it."""

    # What the number's conversations store (Conversation.number): "" for the default number.
    key: str
    # Where its replies go out from: the `whatsapp:+E.164` address people write to.
    address: str
    label: str
    # False for a number the operator switched off (see SWITCHED_OFF).
    answers: bool = True
    # None: the active AI configuration, else the environment's settings.
    ai_configuration_id: int | None = None
    greeting: str = ""
    template_sid: str = ""
    monthly_budget: float | None = None


class NumberDirectory:
    """Resolves a `To` address or a conversation's number key to its Assistant, from a short-lived
    copy of the numbers table (the webhook must not read it on every message)."""

    def __init__(self, default_address: str, default_template_sid: str = "", ttl: float = DIRECTORY_TTL,
                 clock: Callable[[], float] = time.monotonic):
        self.default_address = default_address
        self.default_template_sid = default_template_sid
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._rows: dict[str, WhatsAppNumber] = {}
        self._read_at: float | None = None

    def for_recipient(self, address: str) -> Assistant | None:
        """Return the assistant answering messages sent to `address`, or None when it is not one of
        ours (neither the default number nor a number in the table)."""
        rows = self._rows_now(tolerate_outage=True)
        if address not in rows and address != self.default_address:
            rows = self._rows_now(refresh=True)
        if address in rows or address == self.default_address:
            return self._assistant(address, rows.get(address))
        if not self.default_address:
            # No default number configured: as before there were several, any other `To` is the default's.
            return Assistant(key="", address=address, label=DEFAULT_LABEL, template_sid=self.default_template_sid)
        return None

    def is_ours(self, address: str) -> bool:
        """True when `address` is the default number or one in the table (as last read)."""
        return address == self.default_address or address in self._rows_now(tolerate_outage=True)

    def for_key(self, key: str) -> Assistant:
        """Return the assistant of a conversation whose number is `key` ("" for the default number).
        A number removed since keeps answering the messages it already took, with the defaults."""
        address = key or self.default_address
        return self._assistant(address, self._rows_now().get(address))

    def forget(self) -> None:
        """Read the table again at the next lookup (after this process changed it)."""
        with self._lock:
            self._read_at = None

    def _assistant(self, address: str, row: WhatsAppNumber | None) -> Assistant:
        key = "" if address == self.default_address else address
        if row is None:
            return Assistant(key=key, address=address, label=DEFAULT_LABEL if not key else address,
                             template_sid=self.default_template_sid if not key else "")
        return Assistant(
            key=key,
            address=address,
            label=row.label,
            answers=row.is_active,
            ai_configuration_id=row.ai_configuration_id,
            greeting=row.greeting or "",
            template_sid=row.template_sid or (self.default_template_sid if not key else ""),
            monthly_budget=row.monthly_budget,
        )

    def _rows_now(self, refresh: bool = False, tolerate_outage: bool = False) -> dict[str, WhatsAppNumber]:
        """The table as last read, read again when older than the TTL or when `refresh` asks.

        With the database unreachable and `tolerate_outage` (the webhook's lookups) the last copy
        serves (empty before the first read), so the default number's messages go on to be stored
        (or refused with a 503 there); a `refresh` raises, as a message to a number not known yet
        cannot be placed, and so does a job's lookup, which must not answer with another number's
        settings: the job fails and runs again.
        """
        with self._lock:
            if refresh or self._read_at is None or self.clock() - self._read_at >= self.ttl:
                try:
                    self._rows = {row.address: row for row in WhatsAppNumber.select()}
                except PeeweeException:
                    if refresh or not tolerate_outage:
                        raise
                    log.warning("numbers table unreadable; using the copy read %s",
                                "never" if self._read_at is None else f"{self.clock() - self._read_at:.0f} s ago")
                    return self._rows
                self._read_at = self.clock()
            return self._rows
