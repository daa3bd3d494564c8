"""Clean what users send and what the assistant says before it is stored, shown or sent."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from config import WHATSAPP_ADDRESS_SHAPE

TRIMMED_NOTE = "(Your message was too long, so I only read the first {limit} characters.)"
# Real graphemes are short: the longest emoji sequences have about ten code points. A longer one (a
# chain of a thousand joiners, say) is an attack, not writing, and is cut where the text must be cut.
MAX_GRAPHEME_CHARS = 32
# Unicode's stream-safe format (UAX #15) allows 30 combining marks in a row; more are vandalism
# ("Zalgo"), and NFC's reordering of a long mixed run takes time that grows with its square.
MAX_COMBINING_RUN = 30

# Control characters (C0, DEL, C1) except tab and newlines; lone surrogates; and the
# non-characters XML 1.0 forbids. Everything else, emoji and every script included, stays.
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
# The largest whole number every supported database keeps in an integer column (Postgres's
# `integer`; SQLite's reach further): a larger one from a form is out of range, not a database error.
MAX_STORED_INT = 2**31 - 1
# ASCII digits only: str.isdigit() also passes "²", which int() refuses.
_DIGITS = re.compile(r"[0-9]+")


def whole_number(text: str, minimum: int = 0, maximum: int = MAX_STORED_INT) -> int | None:
    """Return `text` (ASCII digits, nothing else) as a whole number from `minimum` to `maximum`, or
    None when it is anything else: a number a request carries never reaches the database unchecked."""
    text = text.strip()
    if not _DIGITS.fullmatch(text):
        return None
    # Measured before int() reads it: thirty digits are out of range, four thousand would raise.
    text = text.lstrip("0") or "0"
    if len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None


@dataclass(frozen=True)
class CleanText:
    text: str
    trimmed: bool


def clean_text(text: str, max_chars: int | None = None) -> CleanText:
    """Normalise to NFC, drop control characters (keeping newlines and tabs) and combining marks past
    MAX_COMBINING_RUN in a row, trim to `max_chars`."""
    text = _limit_combining_runs(_UNSAFE.sub("", text.replace("\r\n", "\n").replace("\r", "\n")))
    # NFC can turn one mark into several, so the runs are limited again after it.
    text = _limit_combining_runs(unicodedata.normalize("NFC", text))
    if max_chars is not None and len(text) > max_chars:
        text = text.lstrip()  # blank padding must not push the words out
        return CleanText(text[:grapheme_cut(text, max_chars)].rstrip(), trimmed=True)
    return CleanText(text, trimmed=False)


def _limit_combining_runs(text: str) -> str:
    """Drop every combining mark past MAX_COMBINING_RUN in a row."""
    if not any(map(unicodedata.combining, text)):
        return text
    kept, run = [], 0
    for char in text:
        run = run + 1 if unicodedata.combining(char) else 0
        if run <= MAX_COMBINING_RUN:
            kept.append(char)
    return "".join(kept)


def _joins_previous(char: str) -> bool:
    """True for characters that belong to the grapheme before them (no cut just before one)."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or code == 0x200D  # zero-width joiner
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
        or 0xE0020 <= code <= 0xE007F  # tag sequences (subdivision flags)
    )


def _is_regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def keeps_graphemes_whole(text: str, index: int) -> bool:
    """True when cutting `text` before `index` keeps every grapheme whole: no flag, emoji sequence,
    skin tone or combining mark is split. The one rule for every place that cuts text."""
    if index <= 0 or index >= len(text):
        return True
    if _joins_previous(text[index]) or ord(text[index - 1]) == 0x200D:
        return False
    if _is_regional_indicator(text[index]) and _is_regional_indicator(text[index - 1]):
        run = 0
        while index - run - 1 >= 0 and _is_regional_indicator(text[index - run - 1]):
            run += 1
        return run % 2 == 0
    return True


def grapheme_cut(text: str, index: int) -> int:
    """Return where to cut `text` at or before `index`: the nearest place that keeps graphemes whole
    within MAX_GRAPHEME_CHARS (0 when the first grapheme reaches past `index`), else `index` itself,
    inside a grapheme too long to be real."""
    for cut in range(index, max(index - MAX_GRAPHEME_CHARS, 0) - 1, -1):
        if keeps_graphemes_whole(text, cut):
            return cut
    return index


def is_whatsapp_address(value: str) -> bool:
    """True for `whatsapp:+` followed by an E.164 number."""
    return bool(WHATSAPP_ADDRESS_SHAPE.match(value or ""))
