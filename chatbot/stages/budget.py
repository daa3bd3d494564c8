"""The budget gate: whether a user message may still go to the AI under the spending caps.

Budgets are a promise about money, so a message's expected cost is reserved before the AI is asked
and settled with the real cost once its answer is stored (or let go when it never gets one).
Concurrent jobs therefore cannot spend money that is not there: a message goes on only when what
the stored answers cost (Message.cost), plus every reservation held, plus its own expected cost fits
under each cap that applies (the sender's day on the number, the number's month, everyone's month).

Reservations live in Redis, one hash per cap and period, each entry `amount:expires_at:settled`, and
are checked and taken for all caps at once by one Lua script, so two jobs never both take the last
room. An entry expires RESERVATION_TTL seconds after it was taken, so a killed worker's hold is let
go. A settled entry holds the real cost for SETTLED_GRACE seconds more with a sequence number: a
check counts it only when it was settled after the check began reading the stored costs, which may
not include that answer yet (counted twice at worst, for a moment; never missed).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from redis import Redis
from redis.exceptions import RedisError

from chatbot.alerts import ErrorHandler
from chatbot.clock import day_start, in_zone, month_start
from chatbot.models import KnowledgeSpend, Message, Setting, Status, utcnow
from chatbot.numbers import Assistant
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
# Past the day's end in every time zone: the day's notice marker never outlives its day by much.
NOTICE_LIFETIME = 2 * 86400
ALERT_LIFETIME = 32 * 86400
HELD_PREFIX = "chatbot:budget:held:"
SETTLED_KEY = "chatbot:budget:settled"
# Twice a job's whole deadline (chatbot.jobs.tasks.JOB_DEADLINE, 150 s): a reservation outlives any
# answer it stands for, and a killed worker's is let go within this.
RESERVATION_TTL = 300
# Far longer than a check takes from reading the stored costs to counting the reservations.
SETTLED_GRACE = 60
# A hundred-millionth of a dollar: sums of float costs must not refuse an answer that fits exactly.
ROOM_TOLERANCE = 1e-8

# KEYS: one hash per cap, then SETTLED_KEY. ARGV: the message id, its expected cost, the TTL, the
# settle sequence read before the stored costs, then each cap's (cap, stored spend). Returns 0 and
# holds the expected cost in every hash, or the (1-based) number of the first cap without room.
RESERVE = """
local now = tonumber(redis.call('TIME')[1])
local id, amount, ttl, mark = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, #KEYS - 1 do
  local held = 0
  local entries = redis.call('HGETALL', KEYS[i])
  for j = 1, #entries, 2 do
    local reserved, expires, settled = string.match(entries[j + 1], '^([^:]+):([^:]+):([^:]+)$')
    if tonumber(expires) <= now then
      redis.call('HDEL', KEYS[i], entries[j])
    elseif entries[j] ~= id and (tonumber(settled) == 0 or tonumber(settled) > mark) then
      held = held + tonumber(reserved)
    end
  end
  local cap, spent = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  if spent + held >= cap or spent + held + amount > cap + tonumber(ARGV[#ARGV]) then
    return i
  end
end
for i = 1, #KEYS - 1 do
  redis.call('HSET', KEYS[i], id, ARGV[2] .. ':' .. (now + ttl) .. ':0')
  redis.call('EXPIRE', KEYS[i], ttl)
end
return 0
"""
# KEYS: the hashes the message's reservation is in, then SETTLED_KEY. ARGV: the message id, the
# answer's cost ("" lets the reservation go: nothing was spent, or nothing known), SETTLED_GRACE.
SETTLE = """
local now = tonumber(redis.call('TIME')[1])
local sequence = nil
for i = 1, #KEYS - 1 do
  if redis.call('HEXISTS', KEYS[i], ARGV[1]) == 1 then
    if ARGV[2] == '' then
      redis.call('HDEL', KEYS[i], ARGV[1])
    else
      sequence = sequence or redis.call('INCR', KEYS[#KEYS])
      redis.call('HSET', KEYS[i], ARGV[1], ARGV[2] .. ':' .. (now + tonumber(ARGV[3])) .. ':' .. sequence)
      if redis.call('TTL', KEYS[i]) < tonumber(ARGV[3]) then
        redis.call('EXPIRE', KEYS[i], ARGV[3])
      end
    end
  end
end
return 0
"""

SENDER_DAILY_NOTICE = ("You have reached today's usage limit for this assistant. "
                       "It will answer again tomorrow.")
MONTHLY_NOTICE = ("This assistant has reached its usage limit for now and cannot answer. "
                  "Please try again later.")


class Cap(StrEnum):
    """Which spending cap held a message back."""

    SENDER_DAILY = "sender_daily"
    MONTHLY = "monthly"
    NUMBER_MONTHLY = "number_monthly"


# Where a refused message's metadata names the cap that refused it and its amount in USD.
CAP_NOTE = "cap"
CAP_USD_NOTE = "cap_usd"

NOTICES = {Cap.SENDER_DAILY: SENDER_DAILY_NOTICE, Cap.MONTHLY: MONTHLY_NOTICE, Cap.NUMBER_MONTHLY: MONTHLY_NOTICE}


@dataclass(frozen=True)
class Caps:
    """The caps in force, in USD (None: no cap), and whether each comes from the admin."""

    sender_daily: float | None
    monthly: float | None
    sender_daily_overridden: bool = False
    monthly_overridden: bool = False


def period_of(cap: Cap, now: datetime, zone_name: str) -> tuple[datetime, datetime]:
    """Return when the period `cap` counts over began and when the next one begins (naive UTC, in the
    days and months of `zone_name`): a sender's day, or a month (the number's, everyone's). Refused
    until then, or until the cap is raised."""
    if cap is Cap.SENDER_DAILY:
        start = day_start(now, zone_name)
        return start, day_start(start + timedelta(hours=36), zone_name)
    start = month_start(now, zone_name)
    return start, month_start(start + timedelta(days=40), zone_name)


class Budgets(Stage):
    """The budget gate. Reserves each message's expected cost under the caps before the AI call (see
    the module's docstring); refuses the message when a cap has no room for it."""

    def __init__(self, redis: Redis, errors: ErrorHandler, sender_daily: float | None, monthly: float | None,
                 expected_cost: Callable[[Turn], float], now: Callable[[], datetime] = utcnow,
                 clock: Callable[[], float] = time.monotonic, zone: str = "UTC"):
        self.redis = redis
        # Days and months are those of ADMIN_TIMEZONE, as the panel shows them.
        self.zone = zone
        self.errors = errors
        self.environment = Caps(sender_daily, monthly)
        self.expected_cost = expected_cost
        self.now = now
        self.clock = clock
        self._overrides: tuple[float, Caps] | None = None
        self._reserve = redis.register_script(RESERVE)
        self._settle = redis.register_script(SETTLE)
        # The hashes each message's reservation is in, by message id, until it is settled.
        self._held: dict[int, list[str]] = {}

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
        """Reserve the message's expected cost, or keep it from the AI when a cap has no room for it;
        the first refusal of a sender's day on a number carries the notice."""
        sender, number, now = turn.conversation.user_phone, turn.conversation.number, self.now()
        refused_by = self._reserve_room(turn, now)
        if refused_by is None:
            return None
        cap, limit = refused_by
        notice = NOTICES[cap] if self._first_notice_today(sender, number, now) else None
        # Which cap, at what amount: the panel tells the caps reached (chatbot.spend_caps) from these.
        return Verdict(status=Status.OVER_BUDGET, reply=notice, kind=f"budget_{cap.value}", refused="budget",
                       note={CAP_NOTE: cap.value, CAP_USD_NOTE: limit})

    def settle(self, turn: Turn, cost: float | None) -> None:
        """Replace the message's reservation with what its answer cost, or let it go (None)."""
        held = self._held.pop(turn.question.id, None)
        if held is None:
            return
        try:
            self._settle(keys=[*held, SETTLED_KEY],
                         args=[turn.question.id, "" if not cost else repr(float(cost)), SETTLED_GRACE])
        except RedisError as error:
            # Not lost: the reservation expires by itself within RESERVATION_TTL.
            log.warning("budget reservation of message_id=%s not settled: %s", turn.question.id, error)

    def _reserve_room(self, turn: Turn, now: datetime) -> tuple[Cap, float] | None:
        """Reserve the message's expected cost under every cap that applies; return the first cap
        without room for it and its amount (nothing reserved then), or None when none is set or all
        have room."""
        caps = self.caps()
        sender, number = turn.conversation.user_phone, turn.conversation.number
        number_monthly = turn.assistant.monthly_budget
        if caps.sender_daily is None and caps.monthly is None and number_monthly is None:
            return None
        expected = self.expected_cost(turn)
        # Read before the stored costs: a reservation settled after it may be missing from them.
        mark = int(self.redis.get(SETTLED_KEY) or 0)
        monthly_wanted = caps.monthly is not None or number_monthly is not None
        month = month_start(now, self.zone)
        sender_today, everyone, this_number = Message.spent_for_budgets(
            sender, number, day_start(now, self.zone), month if monthly_wanted else None)
        if monthly_wanted:
            # Embedding the knowledge is money of the month too: every number's sources count against
            # the monthly budget, a number's own sources against that number's too.
            everyone += KnowledgeSpend.since(month)
            this_number += KnowledgeSpend.since(month, number)
        on_number = f":{sender_key(number)}" if number else ""
        local = in_zone(now, self.zone)
        scopes = [
            (Cap.MONTHLY, caps.monthly, everyone, f"{HELD_PREFIX}{local:%Y-%m}:all"),
            (Cap.NUMBER_MONTHLY, number_monthly, this_number, f"{HELD_PREFIX}{local:%Y-%m}:number{on_number}"),
            (Cap.SENDER_DAILY, caps.sender_daily, sender_today,
             f"{HELD_PREFIX}{local:%Y-%m-%d}:{sender_key(sender)}{on_number}"),
        ]
        scopes = [scope for scope in scopes if scope[1] is not None]
        args = [turn.question.id, repr(expected), RESERVATION_TTL, mark]
        for _, cap, spent, _ in scopes:
            args += [repr(float(cap)), repr(spent)]
        keys = [key for *_, key in scopes]
        refused = self._reserve(keys=[*keys, SETTLED_KEY], args=[*args, repr(ROOM_TOLERANCE)])
        if not refused:
            self._held[turn.question.id] = keys
            return None
        cap, limit, spent, _ = scopes[refused - 1]
        if cap is Cap.SENDER_DAILY:
            self._alert_sender_daily(limit, spent, now, sender, turn.assistant)
        else:
            self._alert_monthly(limit, spent, now, None if cap is Cap.MONTHLY else turn.assistant)
        log.info("budget reached cap=%s sender=%s number=%s expected=%.6f", cap.value, mask_phone(sender),
                 mask_phone(number) if number else "default", expected)
        return cap, float(limit)

    def _first_notice_today(self, sender: str, number: str, now: datetime) -> bool:
        on_number = f":{sender_key(number)}" if number else ""
        key = f"{NOTICE_PREFIX}{sender_key(sender)}{on_number}:{in_zone(now, self.zone):%Y-%m-%d}"
        try:
            return bool(self.redis.set(key, 1, nx=True, ex=NOTICE_LIFETIME))
        except RedisError as error:
            # Better no notice than one per message: the message is still held back from the AI.
            log.warning("budget notice not claimed sender=%s: %s", mask_phone(sender), error)
            return False

    def _first_alert(self, key: str) -> bool:
        # Once per cap and period: the operator is told when it is reached, not on every message after.
        try:
            return bool(self.redis.set(f"{ALERT_PREFIX}{key}", 1, nx=True, ex=ALERT_LIFETIME))
        except RedisError:
            return True  # send_admin_alert still keeps it to one per hour

    def _alert_monthly(self, cap: float, spent: float, now: datetime, assistant: Assistant | None) -> None:
        scope = "all" if assistant is None else (assistant.key or "default")
        if not self._first_alert(f"{in_zone(now, self.zone):%Y-%m}:{scope}:{cap!r}"):
            return
        # Refused with room left: too little for the next answer, or reserved by the jobs answering now.
        spent_text = f"${spent:.4f} spent this month" + (
            " (the rest too little for the next answer, or held by answers under way)" if spent < cap else "")
        if assistant is None:
            self.errors.send_admin_alert(
                "budget:monthly",
                f"monthly budget reached: {spent_text} of a ${cap:g} cap; the bot answers "
                "no one until the month ends or the cap is raised (admin → Spending)")
        else:
            self.errors.send_admin_alert(
                f"budget:monthly:{scope}",
                f"monthly budget of number {assistant.label} ({mask_phone(assistant.address)}) reached: "
                f"{spent_text} of its ${cap:g} cap; it answers no one until the month ends or its cap is "
                "raised (admin → Numbers, or .venv/bin/flask numbers update)")

    def _alert_sender_daily(self, cap: float, spent: float, now: datetime, sender: str, assistant: Assistant) -> None:
        on_number = f":{sender_key(assistant.key)}" if assistant.key else ""
        if not self._first_alert(f"{in_zone(now, self.zone):%Y-%m-%d}:{sender_key(sender)}{on_number}:{cap!r}"):
            return
        self.errors.send_admin_alert(
            f"budget:sender_daily:{sender_key(sender)}",
            f"daily budget per sender reached: {mask_phone(sender)} on {assistant.label}, ${spent:.4f} spent today "
            f"of a ${cap:g} cap; they are answered again tomorrow, or once the cap is raised (admin → Spending)")


def _stored_amount(stored: dict, key: str, default: float | None) -> float | None:
    if key not in stored:
        return default
    if amount_problem(stored[key]):
        log.error("setting %s=%r is not an amount; using the environment's cap", key, stored[key])
        return default
    return float(stored[key])
