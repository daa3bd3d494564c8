"""Clean what users send and what the assistant says before it is stored, shown or sent."""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

WHATSAPP_ADDRESS = re.compile(r"^whatsapp:\+[1-9][0-9]{6,14}$")
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
        # Never leave half of an emoji sequence or a combining mark at the end.
        while cut > 0 and (unicodedata.combining(text[cut]) or text[cut] in "\u200d\ufe0f"
                           or 0x1F3FB <= ord(text[cut]) <= 0x1F3FF):
            cut -= 1
        return CleanText(text[:cut].rstrip(), trimmed=True)
    return CleanText(text, trimmed=False)


def is_whatsapp_address(value: str) -> bool:
    """True for `whatsapp:+` followed by an E.164 number."""
    return bool(WHATSAPP_ADDRESS.match(value or ""))
