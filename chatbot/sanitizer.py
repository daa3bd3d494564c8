"""Clean what users send and what the assistant says before it is stored, shown or sent."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from config import WHATSAPP_ADDRESS_SHAPE

TRIMMED_NOTE = "(Your message was too long, so I only read the first {limit} characters.)"

# Control characters (C0, DEL, C1) except tab and newlines; lone surrogates; and the
# non-characters XML 1.0 forbids. Everything else, emoji and every script included, stays.
_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class CleanText:
    text: str
    trimmed: bool


def clean_text(text: str, max_chars: int | None = None) -> CleanText:
    """Normalise to NFC, drop control characters (keeping newlines and tabs), trim to `max_chars`."""
    text = _UNSAFE.sub("", unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")))
    if max_chars is not None and len(text) > max_chars:
        cut = max_chars
        while cut > 0 and not keeps_graphemes_whole(text, cut):
            cut -= 1
        return CleanText(text[:cut].rstrip(), trimmed=True)
    return CleanText(text, trimmed=False)


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


def is_whatsapp_address(value: str) -> bool:
    """True for `whatsapp:+` followed by an E.164 number."""
    return bool(WHATSAPP_ADDRESS_SHAPE.match(value or ""))
