"""Keep secrets and whole phone numbers out of logs, Redis keys and stored audit records."""
from __future__ import annotations

import hashlib

SECRET_HEADERS = {
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-twilio-signature",
    "x-api-key",
}
REDACTED = "[redacted]"


def mask_phone(address: str) -> str:
    """Return `whatsapp:+1555•••1234` for `whatsapp:+15550001234`."""
    prefix, _, number = address.rpartition(":")
    if len(number) <= 7:
        return f"{prefix}:{'•' * len(number)}" if prefix else "•" * len(number)
    masked = f"{number[:5]}•••{number[-4:]}"
    return f"{prefix}:{masked}" if prefix else masked


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
