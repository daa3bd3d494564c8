"""The admin's audit log: one row per thing a person did, written where it is done.

A row never holds a secret (passwords, codes, keys) or a full phone number: callers pass targets
that are masked already, and `record` masks any number left in them.
"""
from __future__ import annotations

import logging

from peewee import PeeweeException

from chatbot.models import AuditEvent
from chatbot.redact import mask_phones_in

log = logging.getLogger(__name__)


def record(action: str, actor: str = "", target: str = "", detail: str = "", address: str = "") -> None:
    """Write one audit row; a database that fails here is logged, never raised to the action."""
    try:
        AuditEvent.create(action=action[:64], actor=actor[:80], address=address[:64],
                          target=mask_phones_in(target)[:255], detail=mask_phones_in(detail)[:2000])
    except PeeweeException as error:
        log.error("audit row not written action=%s actor=%s: %s", action, actor, error)


def delete_before(cutoff) -> int:
    """Delete audit rows older than `cutoff` (RETENTION_DAYS); return how many."""
    return AuditEvent.delete().where(AuditEvent.at < cutoff).execute()
