"""One clock for people: stored times (naive UTC) shown in ADMIN_TIMEZONE, with the zone named."""
from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

MINUTES = "%Y-%m-%d %H:%M"
SECONDS = "%Y-%m-%d %H:%M:%S"


def in_zone(moment: datetime, zone_name: str) -> datetime:
    """A stored (naive UTC) time, or an aware one, in the named time zone."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(ZoneInfo(zone_name))


def shown(moment: datetime | None, zone_name: str, *, seconds: bool = False, empty: str = "—") -> str:
    """A time as people read it: '2026-12-06 09:15 CET' (the zone's abbreviation, or its name)."""
    if moment is None:
        return empty
    local = in_zone(moment, zone_name)
    abbreviation = local.strftime("%Z")
    # Some zones have no letters (tzdata gives "+03"): the zone's own name reads better then.
    zone = abbreviation if abbreviation and abbreviation[0].isalpha() else zone_name
    return f"{local.strftime(SECONDS if seconds else MINUTES)} {zone}"


def day_start(now: datetime, zone_name: str) -> datetime:
    """Where the day holding `now` (naive UTC) begins in the named zone, as naive UTC: the day of the
    spend figures and of the daily budget."""
    return _midnight(in_zone(now, zone_name).date(), zone_name)


def month_start(now: datetime, zone_name: str) -> datetime:
    """Where the month holding `now` (naive UTC) begins in the named zone, as naive UTC: the month of
    the spend figures and of the monthly budgets."""
    return _midnight(in_zone(now, zone_name).date().replace(day=1), zone_name)


def _midnight(day: date, zone_name: str) -> datetime:
    return datetime.combine(day, time(0), ZoneInfo(zone_name)).astimezone(UTC).replace(tzinfo=None)
