"""The budget gate: whether a user message may still go to the AI under the spending caps, judged
from the answers' stored costs."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from redis import Redis
from redis.exceptions import RedisError

from chatbot.alerts import ErrorHandler
from chatbot.models import Message, Setting, Status, utcnow
from chatbot.redact import mask_phone, sender_key
from chatbot.stages.base import Stage, Turn, Verdict
from config import amount_problem

log = logging.getLogger(__name__)

# The Setting rows through which the operator overrides the environment's caps in the admin.
SENDER_DAILY_SETTING = "budget_per_sender_daily"
MONTHLY_SETTING = "budget_monthly"
# How long a process trusts the overrides it read: an admin change reaches every worker within this.
OVERRIDES_TTL = 10.0
NOTICE_PREFIX = "chatbot:budget:notice:"
ALERT_PREFIX = "chatbot:budget:alerted:"
# Past midnight UTC in every time zone: the day's notice marker never outlives its day by much.
NOTICE_LIFETIME = 2 * 86400
ALERT_LIFETIME = 32 * 86400

SENDER_DAILY_NOTICE = ("You have reached today's usage limit for this assistant. "
                       "It will answer again tomorrow.")
MONTHLY_NOTICE = ("This assistant has reached its usage limit for now and cannot answer. "
                  "Please try again later.")


class Cap(StrEnum):
    """Which spending cap held a message back."""

    SENDER_DAILY = "sender_daily"
    MONTHLY = "monthly"
    NUMBER_MONTHLY = "number_monthly"


NOTICES = {Cap.SENDER_DAILY: SENDER_DAILY_NOTICE, Cap.MONTHLY: MONTHLY_NOTICE, Cap.NUMBER_MONTHLY: MONTHLY_NOTICE}


@dataclass(frozen=True)
class Caps:
    """The caps in force, in USD (None: no cap), and whether each comes from the admin."""

    sender_daily: float | None
    monthly: float | None
    sender_daily_overridden: bool = False
    monthly_overridden: bool = False


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


class Budgets(Stage):
    """The budget gate. Checks the caps before each AI call against what answers already cost (Message.cost).

    Answers are counted once stored, so jobs already past the check when a cap is reached still
    finish: each sender's jobs run one at a time, so a sender overshoots their daily cap by at most
    one answer; everyone together overshoots the monthly cap by at most one answer per job running
    at that moment (WORKER_CONCURRENCY per worker process).
    """

    def __init__(self, redis: Redis, errors: ErrorHandler, sender_daily: float | None, monthly: float | None,
                 now: Callable[[], datetime] = utcnow, clock: Callable[[], float] = time.monotonic):
        self.redis = redis
        self.errors = errors
        self.environment = Caps(sender_daily, monthly)
        self.now = now
        self.clock = clock
        self._overrides: tuple[float, Caps] | None = None

    def caps(self, fresh: bool = False) -> Caps:
        """Return the caps in force: the admin's overrides, else the environment's."""
        if not fresh and self._overrides and self.clock() - self._overrides[0] < OVERRIDES_TTL:
            return self._overrides[1]
        stored = Setting.values(SENDER_DAILY_SETTING, MONTHLY_SETTING)
        caps = Caps(
            sender_daily=_stored_amount(stored, SENDER_DAILY_SETTING, self.environment.sender_daily),
            monthly=_stored_amount(stored, MONTHLY_SETTING, self.environment.monthly),
            sender_daily_overridden=SENDER_DAILY_SETTING in stored,
            monthly_overridden=MONTHLY_SETTING in stored,
        )
        self._overrides = (self.clock(), caps)
        return caps

    def override(self, key: str, value: float | None) -> None:
        """Set the admin's override for one cap (`key` is a setting name), or clear it with None."""
        if value is None:
            Setting.forget(key)
        else:
            Setting.put(key, repr(value))
        self._overrides = None

    def verdict(self, turn: Turn) -> Verdict | None:
        """Keep the message from the AI when a cap is reached; the first refusal of a sender's day
        on a number carries the notice."""
        sender, number, now = turn.conversation.user_phone, turn.conversation.number, self.now()
        cap = self.cap_reached(sender, number, turn.assistant.monthly_budget, now)
        if cap is None:
            return None
        notice = NOTICES[cap] if self._first_notice_today(sender, number, now) else None
        return Verdict(status=Status.OVER_BUDGET, reply=notice, kind=f"budget_{cap.value}", refused="budget")

    def cap_reached(self, sender: str, number: str = "", number_monthly: float | None = None,
                    now: datetime | None = None) -> Cap | None:
        """Return the cap that keeps `sender`'s next message to `number` (a conversation key, "" for
        the default number) from the AI, or None when none does. The daily cap counts each sender's
        spend per number; the monthly cap everyone's on all numbers, `number_monthly` everyone's on this one."""
        caps = self.caps()
        if caps.sender_daily is None and caps.monthly is None and number_monthly is None:
            return None
        now = now or self.now()
        monthly_wanted = caps.monthly is not None or number_monthly is not None
        sender_today, everyone, this_number = Message.spent_for_budgets(
            sender, number, day_start(now), month_start(now) if monthly_wanted else None)
        if caps.monthly is not None and everyone >= caps.monthly:
            self._alert_monthly(caps.monthly, everyone, now)
            cap = Cap.MONTHLY
        elif number_monthly is not None and this_number >= number_monthly:
            self._alert_monthly(number_monthly, this_number, now, number)
            cap = Cap.NUMBER_MONTHLY
        elif caps.sender_daily is not None and sender_today >= caps.sender_daily:
            cap = Cap.SENDER_DAILY
        else:
            return None
        log.info("budget reached cap=%s sender=%s number=%s", cap.value, mask_phone(sender),
                 mask_phone(number) if number else "default")
        return cap

    def _first_notice_today(self, sender: str, number: str, now: datetime) -> bool:
        on_number = f":{sender_key(number)}" if number else ""
        key = f"{NOTICE_PREFIX}{sender_key(sender)}{on_number}:{now:%Y-%m-%d}"
        try:
            return bool(self.redis.set(key, 1, nx=True, ex=NOTICE_LIFETIME))
        except RedisError as error:
            # Better no notice than one per message: the message is still held back from the AI.
            log.warning("budget notice not claimed sender=%s: %s", mask_phone(sender), error)
            return False

    def _alert_monthly(self, cap: float, spent: float, now: datetime, number: str | None = None) -> None:
        # Once per cap and month: the operator is told when it is reached, not on every message after.
        scope = "all" if number is None else (number or "default")
        key = f"{ALERT_PREFIX}{now:%Y-%m}:{scope}:{cap!r}"
        try:
            first = self.redis.set(key, 1, nx=True, ex=ALERT_LIFETIME)
        except RedisError:
            first = True  # send_admin_alert still keeps it to one per hour
        if not first:
            return
        if number is None:
            self.errors.send_admin_alert(
                "budget:monthly",
                f"monthly budget reached: ${spent:.4f} spent this month of a ${cap:g} cap; the bot answers "
                "no one until the month ends or the cap is raised (admin → Spending)")
        else:
            self.errors.send_admin_alert(
                f"budget:monthly:{scope}",
                f"monthly budget of number {mask_phone(number) if number else 'default'} reached: ${spent:.4f} "
                f"spent this month of its ${cap:g} cap; it answers no one until the month ends or its cap is "
                "raised (admin → Numbers, or .venv/bin/flask numbers update)")


def _stored_amount(stored: dict, key: str, default: float | None) -> float | None:
    if key not in stored:
        return default
    if amount_problem(stored[key]):
        log.error("setting %s=%r is not an amount; using the environment's cap", key, stored[key])
        return default
    return float(stored[key])
