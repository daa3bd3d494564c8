"""Who a campaign goes to: the numbers of a CSV file, or everyone who wrote to the number lately; each
number once, and every line left out named with its reason and line number."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from chatbot.models import Conversation, Message, OptOut, Origin, Role
from chatbot.redact import mask_phone
from config import e164

# Delimiters spreadsheets write a CSV with (Excel in much of Europe uses ";").
DELIMITERS = ",;\t"
# How much of the file the delimiter is guessed from.
SNIFF_BYTES = 4096
# An invalid cell is quoted back at most this long.
QUOTED_CHARS = 40


class AudienceError(Exception):
    """The audience cannot be read at all (not text, not CSV); the message says what to fix."""


class SkipKind(StrEnum):
    INVALID = "invalid"  # not a number, or a variable it needs is empty
    DUPLICATE = "duplicate"
    OPTED_OUT = "opted_out"  # wrote STOP to the number
    KEPT_OUT = "kept_out"  # the access list keeps it out (blocklisted, or not on the allowlist)


@dataclass(frozen=True)
class Candidate:
    """A number the audience names, with its line and the file's other cells on that line."""

    phone: str  # whatsapp:+E.164
    line: int | None
    cells: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skip:
    """A line (or a number) left out, and why, in words with the number masked."""

    line: int | None
    kind: SkipKind
    reason: str

    def as_text(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line is not None else self.reason


@dataclass
class Audience:
    """The numbers to send to, each once, what was left out, and the file's column names (if any)."""

    source: str
    candidates: list[Candidate] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    # The header row's cells, column 1 (the number) first; () when the file has none.
    header: tuple[str, ...] = ()
    # The most cells any line has: what a variable may name by position.
    columns: int = 1


def decode(data: bytes) -> str:
    """The text of an uploaded file: UTF-8 (a spreadsheet's byte-order mark dropped)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise AudienceError(f"the file is not UTF-8 text (byte {error.start} cannot be read): save it as "
                            "CSV UTF-8 and try again") from error


def from_csv(text: str, name: str) -> Audience:
    """Read a CSV whose first column is the number (E.164, with or without `whatsapp:`; a header row
    allowed); the other columns are kept for the template's variables. Blank lines are passed over;
    an invalid number or a number seen before is left out with its line number."""
    try:
        dialect = csv.Sniffer().sniff(text[:SNIFF_BYTES], delimiters=DELIMITERS)
    except csv.Error:
        dialect = csv.excel  # one column, or too little to tell: commas
    reader = csv.reader(io.StringIO(text), dialect)
    audience = Audience(source=name)
    first_line_of: dict[str, int] = {}
    try:
        for row in reader:
            cells = tuple(cell.strip() for cell in row)
            if not any(cells):
                continue
            line = reader.line_num
            if not audience.candidates and not audience.skips and not audience.header and _is_header(cells[0]):
                audience.header = cells
                audience.columns = max(audience.columns, len(cells))
                continue
            audience.columns = max(audience.columns, len(cells))
            # A cell holds one number, so its spaces are punctuation ("+49 151 2345678"), as dashes are.
            number = e164("".join(cells[0].split()))
            if number is None:
                audience.skips.append(Skip(line, SkipKind.INVALID, f"not a phone number in E.164 form "
                                                                   f"(+ and country code): {_quoted(cells[0])}"))
                continue
            phone = "whatsapp:" + number
            if phone in first_line_of:
                audience.skips.append(Skip(line, SkipKind.DUPLICATE, f"{shown(number)} again "
                                                                     f"(first on line {first_line_of[phone]})"))
                continue
            first_line_of[phone] = line
            audience.candidates.append(Candidate(phone, line, cells[1:]))
    except csv.Error as error:
        raise AudienceError(f"line {reader.line_num}: not CSV ({error})") from error
    return audience


def recent_writers(number: str, days: int, now: datetime) -> Audience:
    """Everyone who wrote to `number` (a conversation key) through WhatsApp in the `days` days before `now`."""
    phones = (Conversation.select(Conversation.user_phone).distinct()
              .join(Message, on=(Message.conversation == Conversation.id))
              .where(Conversation.number == number, Conversation.on_whatsapp(), Message.role == Role.USER.value,
                     Message.origin == Origin.WHATSAPP.value, Message.created_at >= now - timedelta(days=days))
              .order_by(Conversation.user_phone))
    return Audience(source=f"wrote to the number in the last {days} day{'s' if days != 1 else ''}",
                    candidates=[Candidate(row.user_phone, None) for row in phones])


def exclusion_reasons(phones: list[str], number: str, access) -> dict[str, tuple[SkipKind, str]]:
    """Return why each of `phones` may not be sent to from `number` (a conversation key), for those
    that may not: they wrote STOP to it, or the access rules in force (`access`, the AccessPolicy)
    keep them out."""
    reasons = {phone: (SkipKind.KEPT_OUT, f"{shown(phone)} is {why}") for phone, why in access.kept_out(phones).items()}
    for phone in OptOut.among(phones, number):
        reasons[phone] = (SkipKind.OPTED_OUT, f"{shown(phone)} wrote STOP to this number")
    return reasons


def exclude(audience: Audience, number: str, access) -> None:
    """Leave out the candidates that may not be sent to (see exclusion_reasons), each named in `skips`."""
    reasons = exclusion_reasons([candidate.phone for candidate in audience.candidates], number, access)
    kept = []
    for candidate in audience.candidates:
        if candidate.phone in reasons:
            kind, reason = reasons[candidate.phone]
            audience.skips.append(Skip(candidate.line, kind, reason))
        else:
            kept.append(candidate)
    audience.candidates = kept


def shown(phone: str) -> str:
    """A recipient's number as the operator reads it in a report: `+1555•••0006`."""
    return mask_phone(phone.removeprefix("whatsapp:"))


def _is_header(cell: str) -> bool:
    """A first line whose first cell has no digit names the columns ("phone", "Number")."""
    return not any(char.isdigit() for char in cell)


def _quoted(cell: str) -> str:
    """An invalid cell as the report quotes it: cut short, its digits past the first three and
    before the last two masked (it may be a number written some other way)."""
    positions = [index for index, char in enumerate(cell) if char.isdigit()]
    hidden = set(positions[3:-2])
    masked = "".join("•" if index in hidden else char for index, char in enumerate(cell))
    return repr(masked if len(masked) <= QUOTED_CHARS else masked[:QUOTED_CHARS] + "…")
