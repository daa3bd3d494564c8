"""Who may talk to the bot: everyone, an allowlist or everyone but a blocklist; what the operator
sets in the admin wins over the environment."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis

from chatbot.models import AccessEntry, Setting, Status
from chatbot.redact import mask_phone, sender_key
from chatbot.stages.base import Stage, Turn, Verdict
from config import ACCESS_MODES, e164

log = logging.getLogger(__name__)

# The Setting rows the admin writes; absent, the environment's value applies.
MODE_KEY = "ACCESS_MODE"
NOTICE_KEY = "ACCESS_NOTICE"
# The admin's list each mode consults (AccessEntry.kind).
KIND_OF_MODE = {"allowlist": "allow", "blocklist": "block"}
NOTICE_PREFIX = "chatbot:access-notice:"
# Kept a day past the day it stands for, so it is surely there while that day lasts.
NOTICE_TTL = 2 * 86400
# Numbers looked up in the admin's list per query (well under SQLite's limit on a query's parameters).
LOOKUP_CHUNK = 500
# What an operator pastes: numbers separated by commas, semicolons, spaces or new lines.
PASTE_SEPARATORS = re.compile(r"[,;\s]+")


@dataclass(frozen=True)
class Rules:
    """The access rules in force, and whether each came from the admin or the environment."""

    mode: str
    notice: str
    mode_from_admin: bool
    notice_from_admin: bool

    @property
    def kind(self) -> str | None:
        """The admin list the mode consults; None when access is open."""
        return KIND_OF_MODE.get(self.mode)


class AccessPolicy(Stage):
    """The access gate. Decides per message whether its sender may reach the AI: a query for the admin's settings and,
    unless access is open, one lookup in the admin's list; nothing is cached, so a change in the
    admin applies to the next message."""

    def __init__(self, redis: Redis, mode: str, listed: tuple[str, ...], notice: str):
        self.redis = redis
        self.mode = mode
        self.listed = frozenset(listed)
        self.notice = notice

    def rules(self) -> Rules:
        """Return the rules in force: the admin's values where set (and valid), else the environment's."""
        chosen = Setting.values(MODE_KEY, NOTICE_KEY)
        mode = chosen.get(MODE_KEY)
        if mode is not None and mode not in ACCESS_MODES:
            log.warning("access setting %s=%r is not a mode; the environment's %s applies", MODE_KEY, mode, self.mode)
            mode = None
        return Rules(mode=mode or self.mode, notice=chosen.get(NOTICE_KEY, self.notice),
                     mode_from_admin=mode is not None, notice_from_admin=NOTICE_KEY in chosen)

    def verdict(self, turn: Turn) -> Verdict | None:
        """Keep the message from the AI when its sender may not reach it, saying why; the first
        refusal of a sender's (UTC) day carries the notice."""
        sender = turn.conversation.user_phone
        if turn.conversation.paused_at is not None:
            # An operator took this conversation over: its messages wait for them, whoever sent them.
            return None
        rules = self.rules()
        if rules.kind is None:
            return None
        number = e164(sender) or sender
        reason = refusal(rules.mode, number in self.listed or AccessEntry.is_listed(number, rules.kind))
        if reason is None:
            return None
        log.info("sender=%s kept out: %s", mask_phone(sender), reason)
        notice = rules.notice if rules.notice and self._first_today(sender) else None
        return Verdict(status=Status.NOT_ALLOWED, reply=notice, kind="access", note={"access": reason},
                       refused="access")

    def kept_out(self, senders: list[str]) -> dict[str, str]:
        """Return why the rules in force keep each of `senders` out, for those they do: the rules read
        once, and the admin's list in one query per LOOKUP_CHUNK numbers (a campaign's audience)."""
        rules = self.rules()
        if rules.kind is None:
            return {}
        numbers = {sender: e164(sender) or sender for sender in senders}
        distinct = sorted(set(numbers.values()))
        listed = self.listed & set(distinct)
        for start in range(0, len(distinct), LOOKUP_CHUNK):
            listed |= {row.user_phone for row in AccessEntry.select(AccessEntry.user_phone).where(
                AccessEntry.user_phone.in_(distinct[start:start + LOOKUP_CHUNK]), AccessEntry.kind == rules.kind)}
        return {sender: reason for sender, number in numbers.items()
                if (reason := refusal(rules.mode, number in listed)) is not None}

    def _first_today(self, sender: str) -> bool:
        """Claim today's one notice for `sender`; False when it was claimed already."""
        day = datetime.now(UTC).date().isoformat()
        return bool(self.redis.set(f"{NOTICE_PREFIX}{sender_key(sender)}:{day}", 1, nx=True, ex=NOTICE_TTL))


def refusal(mode: str, listed: bool) -> str | None:
    """Say why access mode `mode` keeps out a number that is (or is not) on its list; None lets it in."""
    if mode == "allowlist" and not listed:
        return "not on the allowlist"
    if mode == "blocklist" and listed:
        return "on the blocklist"
    return None


def parse_numbers(pasted: str) -> tuple[list[str], list[str]]:
    """Split what an operator pasted into E.164 numbers (each once, in order) and the items that are not."""
    numbers, invalid = [], []
    for item in filter(None, PASTE_SEPARATORS.split(pasted)):
        number = e164(item)
        if number is None:
            invalid.append(item)
        elif number not in numbers:
            numbers.append(number)
    return numbers, invalid
