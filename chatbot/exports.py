"""Conversation exports: every WhatsApp message as a row, written as CSV, JSON or JSON lines as it is read.

The one home of `flask conversations export` and the admin's Export buttons. Memory stays flat
whatever the size: messages are read PAGE_SIZE at a time in id order, each page starting after the
last id of the one before (keyset paging: no OFFSET, which would rescan every row it skips), and a
page's rows are written before the next page is read. Each page is read whole and its statement
closed, so no read stays open on the database while a slow reader downloads.

Times are stored as naive UTC; a row shows them in the business's time zone, with the offset.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from peewee import JOIN, Select

from chatbot.models import Conversation, Message, Rating
from chatbot.redact import mask_phone

PAGE_SIZE = 1000
# Text is joined up to about this many characters before it is written: a write per row would be a
# system call (or a WSGI chunk) per row.
CHUNK_CHARS = 64 * 1024
COLUMNS = ("conversation", "time", "number", "sender", "role", "text", "status", "model", "tokens", "cost",
           "rating")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MEDIA_TYPES = {"csv": "text/csv", "json": "application/json", "jsonl": "application/x-ndjson"}


@dataclass(frozen=True)
class Scope:
    """Which messages an export holds, and how it shows them."""

    zone: ZoneInfo
    # The address shown for conversations on the default number, which store "" as their number.
    default_number: str
    # Naive UTC, as stored: from `since` (inclusive) to `before` (exclusive).
    since: datetime | None = None
    before: datetime | None = None
    # A conversation key ("" the default number); None: every number.
    number: str | None = None
    # A query of conversation ids (the admin list's filters); None: every conversation.
    conversations: Select | None = None
    reveal: bool = False

    def conditions(self) -> list:
        # Only WhatsApp: the playground's and the console's conversations are operators trying the bot.
        chosen = [Message.from_whatsapp(), Conversation.on_whatsapp()]
        if self.since is not None:
            chosen.append(Message.created_at >= self.since)
        if self.before is not None:
            chosen.append(Message.created_at < self.before)
        if self.number is not None:
            chosen.append(Conversation.number == self.number)
        if self.conversations is not None:
            chosen.append(Message.conversation.in_(self.conversations))
        return chosen


def parse_moment(text: str) -> date | datetime:
    """A day (YYYY-MM-DD) or an ISO 8601 date and time, with or without its offset; ValueError otherwise."""
    text = text.strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        return datetime.fromisoformat(text)


def start_of(moment: date | datetime, zone: ZoneInfo) -> datetime:
    """The naive UTC moment `moment` starts: a day's midnight in `zone`; a time without an offset is in `zone`."""
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, time.min)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC).replace(tzinfo=None)


def end_of(moment: date | datetime, zone: ZoneInfo) -> datetime:
    """The naive UTC moment just after `moment` ends: a day is included whole, a time up to itself."""
    if isinstance(moment, datetime):
        # Stored times have microsecond resolution: "up to and including it" is "before the next microsecond".
        return start_of(moment, zone) + timedelta(microseconds=1)
    return start_of(moment + timedelta(days=1), zone)


def _page(scope: Scope, after_id: int) -> list:
    return list(
        Message.select(Message.id, Message.conversation, Message.created_at, Message.role, Message.content,
                       Message.status, Message.model, Message.total_tokens, Message.cost,
                       Conversation.number, Conversation.user_phone, Rating.score)
        .join(Conversation)
        # A conversation has one rating at most: the join never repeats a message.
        .join(Rating, JOIN.LEFT_OUTER, on=(Rating.conversation == Conversation.id))
        .where(Message.id > after_id, *scope.conditions())
        .order_by(Message.id)
        .limit(PAGE_SIZE)
        .namedtuples()
    )


def _row(scope: Scope, message) -> dict:
    return {
        "conversation": str(message.conversation),
        "time": message.created_at.replace(tzinfo=UTC).astimezone(scope.zone).isoformat(timespec="seconds"),
        "number": message.number or scope.default_number,
        "sender": message.user_phone if scope.reveal else mask_phone(message.user_phone),
        "role": message.role,
        "text": message.content,
        "status": message.status,
        "model": message.model,
        "tokens": message.total_tokens,
        "cost": message.cost,
        "rating": message.score,
    }


def rows(scope: Scope) -> Iterator[dict]:
    """Yield the scope's messages in id order, one dict a message, keyed by COLUMNS."""
    after_id = 0
    while True:
        page = _page(scope, after_id)
        for message in page:
            yield _row(scope, message)
        if len(page) < PAGE_SIZE:
            return
        after_id = page[-1].id


def inert(cell):
    """A cell a spreadsheet shows as text: one that would run as a formula gets a leading '."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return "" if cell is None else cell


def csv_text(messages: Iterable[dict]) -> Iterator[str]:
    """Yield a header line, then a line a message."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def taken() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(COLUMNS)
    yield taken()
    for message in messages:
        writer.writerow([inert(message[column]) for column in COLUMNS])
        yield taken()


def json_text(messages: Iterable[dict]) -> Iterator[str]:
    """Yield one JSON array of the messages, an object a line, without holding them all."""
    yield "["
    separator = "\n"
    for message in messages:
        yield separator + json.dumps(message, ensure_ascii=False)
        separator = ",\n"
    yield "\n]\n"


def jsonl_text(messages: Iterable[dict]) -> Iterator[str]:
    """Yield a JSON object a line."""
    for message in messages:
        yield json.dumps(message, ensure_ascii=False) + "\n"


WRITERS = {"csv": csv_text, "json": json_text, "jsonl": jsonl_text}


def in_chunks(pieces: Iterable[str], size: int = CHUNK_CHARS) -> Iterator[str]:
    """Join `pieces` into chunks of about `size` characters."""
    waiting, length = [], 0
    for piece in pieces:
        waiting.append(piece)
        length += len(piece)
        if length >= size:
            yield "".join(waiting)
            waiting, length = [], 0
    if waiting:
        yield "".join(waiting)


def export(scope: Scope, shape: str) -> Iterator[str]:
    """Yield the scope's messages written as `shape` (a key of WRITERS), in chunks."""
    return in_chunks(WRITERS[shape](rows(scope)))
