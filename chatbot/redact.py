"""Keep secrets and whole phone numbers out of logs, Redis keys and stored audit records."""
from __future__ import annotations

import hashlib
import re

SECRET_HEADERS = {
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-twilio-signature",
    "x-api-key",
}
REDACTED = "[redacted]"
# A phone number inside free text: E.164 with its +, plain or URL-encoded, after an optional scheme
# (`whatsapp:+1555…`, `whatsapp%3A%2B1555…`, `+1555…`), or a bare run of 10–15 digits (WhatsApp's wa_id).
PHONE_IN_TEXT = re.compile(r"(?P<prefix>(?:(?:whatsapp|tel|sms)(?::|%3A))?(?:\+|%2B))"
                           r"(?P<number>[1-9][0-9]{6,14})(?![0-9])"
                           r"|(?<![0-9A-Za-z])(?P<bare>[1-9][0-9]{9,14})(?![0-9])", re.IGNORECASE)


def mask_phone(address: str) -> str:
    """Return `whatsapp:+1555•••1234` for `whatsapp:+15550001234`."""
    prefix, _, number = address.rpartition(":")
    if len(number) <= 7:
        return f"{prefix}:{'•' * len(number)}" if prefix else "•" * len(number)
    masked = f"{number[:5]}•••{number[-4:]}"
    return f"{prefix}:{masked}" if prefix else masked


def mask_phones_in(text: str) -> str:
    """Mask every phone number in `text` (an upstream's error message, a raw request body) as
    mask_phone does: the first four digits and the last four stay."""
    return PHONE_IN_TEXT.sub(_mask_number, text) if text else text


def _mask_number(match: re.Match) -> str:
    prefix, digits = match.group("prefix") or "", match.group("number") or match.group("bare")
    return f"{prefix}{digits[:4]}•••{digits[-4:]}"


def redact_headers(headers) -> dict:
    """Return the headers as a dict with secret values replaced."""
    return {
        name: (REDACTED if name.lower() in SECRET_HEADERS else value)
        for name, value in headers.items()
    }


def mask_secret(secret: str) -> str:
    """Show at most a recognisable prefix and the last four characters: `sk-or-…a1b2`."""
    if not secret:
        return ""
    if len(secret) < 12:
        return "…" + secret[-2:] if len(secret) > 4 else "…"
    prefix = secret[:6] if secret.startswith("sk-") else ""
    return f"{prefix}…{secret[-4:]}"


def sender_key(sender: str) -> str:
    """Name a sender in Redis without storing the phone number."""
    return "sender:" + hashlib.sha256(sender.encode()).hexdigest()[:20]
