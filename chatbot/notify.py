"""Telling the team a customer waits for a person: a chat webhook and e-mail (being written)."""
from __future__ import annotations


class Notifier:
    """Announces handoffs on every configured channel; see announce()."""

    def __init__(self, config, session, errors):
        self.config = config
        self.session = session
        self.errors = errors

    def announce(self, handoff_id: int, reminder: bool = False, final_attempt: bool = True) -> dict:
        raise NotImplementedError
