"""The console channel behind `flask chat`: typed lines in, stored as the webhook would, replies printed."""
from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator

from chatbot.models import Conversation, Message, Origin, Role, Status
from chatbot.models.db import database
from chatbot.redact import mask_phone
from chatbot.sanitizer import clean_text
from chatbot.whatsapp import split_message

CONSOLE_PHONE = "console:local"
CONSOLE_ADDRESS_SHAPE = re.compile(r"^console:[A-Za-z0-9_.-]{1,40}$")


class ConsoleWhatsApp:
    """Stands in for WhatsAppClient in `flask chat`: prints each part of a reply instead of sending it."""

    def __init__(self, echo: Callable[[str], None], prefix: str = ""):
        self.echo = echo
        self.prefix = prefix

    def send(self, to: str, body: str, already_sent: int = 0,
             on_part_sent: Callable[[int, str], None] | None = None,
             before_part: Callable[[int], None] | None = None, unconfirmed_since=None,
             from_number: str = "") -> list[str]:
        """Print `body` split as WhatsApp would receive it, skipping the first `already_sent` parts.

        A console line cannot be half-delivered, so there is nothing to confirm and no intent to note."""
        parts = split_message(body)
        ids = []
        for number, part in enumerate(parts, start=1):
            if number <= already_sent:
                continue
            if len(parts) > 1:
                self.echo(f"({number}/{len(parts)})")
            self.echo(f"{self.prefix}{part}")
            ids.append(f"console-{number}")
            if on_part_sent:
                on_part_sent(number, ids[-1])
        return ids


class ConversationBusy(Exception):
    """The conversation has messages waiting for the worker."""


def store_console_message(phone: str, text: str, config) -> int:
    """Store a typed line as the user's message, cleaned as the webhook cleans one; return its id."""
    body = clean_text(text, config.max_inbound_chars)
    metadata = {"trimmed": True} if body.trimmed else {}
    with database.atomic():
        conversation_id = Conversation.resume_or_start_id(phone, "", config.conversation_ttl)
        waiting = Message.outstanding(conversation_id, up_to_id=sys.maxsize).count()
        if waiting:
            raise ConversationBusy(f"{mask_phone(phone)} has {waiting} message(s) waiting for the worker")
        return Message.insert(
            conversation=conversation_id,
            role=Role.USER.value,
            content=body.text,
            status=Status.PENDING.value,
            metadata=metadata,
            origin=Origin.CONSOLE.value,
        ).execute()


def abandon_console_message(message_id: int) -> None:
    """Mark a typed line left unanswered as failed, so the scheduler's sweep never answers it through Twilio."""
    Message.update(status=Status.FAILED.value, error="console chat interrupted").where(
        Message.id == message_id, Message.status == Status.PENDING.value).execute()


def typed_lines(interactive: bool) -> Iterator[str]:
    """Yield each line typed (or piped) until end of input."""
    while True:
        if interactive:
            try:
                line = input("you> ")
            except EOFError:
                print()
                return
        else:
            line = sys.stdin.readline()
            if not line:
                return
        yield line.strip()
