"""Times in Flask-Admin's list and detail pages: shown and filtered in ADMIN_TIMEZONE, the zone named.

Every model view of the panel takes these from PanelModelView, so no view formats or filters a time
of its own. A filter value is read in ADMIN_TIMEZONE, or at the offset it names
(`2026-12-06 00:00:00+01:00`: the dashboard's links name it, so that an hour a change of the clocks
repeats is still the one meant).
"""
from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask import current_app
from flask_admin.contrib.peewee import filters
from flask_admin.model import typefmt

from chatbot import clock


def admin_zone() -> str:
    """ADMIN_TIMEZONE, as this app was configured."""
    return current_app.extensions["chatbot"].config.admin_timezone


def shown_in_zone(view, value: datetime, name: str) -> str:
    """A stored time in a list or detail page: in ADMIN_TIMEZONE, to the second, its zone named."""
    return clock.shown(value, admin_zone(), seconds=True)


LIST_FORMATTERS = {**typefmt.BASE_FORMATTERS, datetime: shown_in_zone}
DETAIL_FORMATTERS = {**typefmt.DETAIL_FORMATTERS, datetime: shown_in_zone}


def filter_value(moment: datetime, zone_name: str) -> str:
    """A stored (naive UTC) time as a filter's value: its time in the zone, with the offset."""
    return clock.in_zone(moment, zone_name).isoformat(sep=" ")


def stored_time(text: str) -> datetime:
    """Read a filter's value (in ADMIN_TIMEZONE unless it names its offset) as the naive UTC stored."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(admin_zone()))
    return moment.astimezone(UTC).replace(tzinfo=None)


class InZone:
    """A time filter whose value is read in ADMIN_TIMEZONE."""

    def clean(self, value: str) -> datetime:
        return stored_time(value)


class EqualInZone(InZone, filters.DateTimeEqualFilter):
    """At a time read in ADMIN_TIMEZONE."""


class NotEqualInZone(InZone, filters.DateTimeNotEqualFilter):
    """Not at a time read in ADMIN_TIMEZONE."""


class GreaterInZone(InZone, filters.DateTimeGreaterFilter):
    """After a time read in ADMIN_TIMEZONE."""


class SmallerInZone(InZone, filters.DateTimeSmallerFilter):
    """Before a time read in ADMIN_TIMEZONE."""


class FromInZone(InZone, filters.DateTimeGreaterFilter):
    """At or after a time: where a dashboard figure's period or bucket begins."""

    def apply(self, query, value):
        return query.filter(self.column >= value)

    def operation(self) -> str:
        return "from"


class BetweenInZone(filters.DateTimeBetweenFilter):
    """Between two times read in ADMIN_TIMEZONE, written "FROM to UNTIL"."""

    def clean(self, value: str) -> list[datetime]:
        return [stored_time(part) for part in value.split(" to ")]

    def validate(self, value: str) -> bool:
        try:
            times = self.clean(value)
        except ValueError:
            return False
        return len(times) == 2 and times[0] <= times[1]


class NotBetweenInZone(BetweenInZone, filters.DateTimeNotBetweenFilter):
    """Outside two times read in ADMIN_TIMEZONE."""


class FilterConverter(filters.FilterConverter):
    """Flask-Admin's filters for a peewee model, its time filters read in ADMIN_TIMEZONE."""

    datetime_filters = (EqualInZone, NotEqualInZone, GreaterInZone, FromInZone, SmallerInZone, BetweenInZone,
                        NotBetweenInZone, filters.FilterEmpty)
