"""Where each dashboard figure leads: the list of exactly the rows it counts.

A figure and its list share one definition (chatbot.reports: `figure_rows`, `active_conversations`),
applied here by the lists' Figure filters; the period is the lists' time filters, in ADMIN_TIMEZONE
with the offset named, and the number their Number filter.
"""
from __future__ import annotations

from datetime import datetime

from flask import url_for
from flask_admin.contrib.peewee.filters import FilterEqual

from chatbot.admin.times import filter_value
from chatbot.models import Conversation, Message, Status
from chatbot.reports import FIGURES, OUTCOMES, DashboardStats, active_conversations, figure_rows

# The filters' names in the lists' URLs (Flask-Admin's named filter URLs: name, then operation).
FIGURE = "flt0_figure_equals"
FROM = "flt1_created_at_from"
BEFORE = "flt2_created_at_smaller_than"
NUMBER = "flt3_number_equals"
STATUS = "flt4_status_equals"
ACTIVE = "active"


class MessageFigureFilter(FilterEqual):
    """The messages a dashboard figure counts, by the figure's name (see chatbot.reports.FIGURES)."""

    def __init__(self):
        super().__init__(Message.id, "Figure", options=list(FIGURES.items()))

    def validate(self, value) -> bool:
        return figure_rows(value) is not None

    def apply(self, query, value):
        return query.where(figure_rows(value))


class ConversationFigureFilter(FilterEqual):
    """The conversations the dashboard's Active figure counts."""

    def __init__(self):
        super().__init__(Conversation.id, "Figure", options=[(ACTIVE, "Active conversations")])

    def validate(self, value) -> bool:
        return value == ACTIVE

    def apply(self, query, value):
        return query.where(active_conversations())


def message_list(stats: DashboardStats, number: str | None, figure: str, start: datetime | None = None,
                 end: datetime | None = None, **more: str) -> str:
    """The message list of `figure`'s rows from `start` (the period's start) up to `end` (none: now)."""
    filters = {FIGURE: figure, FROM: filter_value(start or stats.bucket_starts[0], stats.zone)}
    if end is not None:
        filters[BEFORE] = filter_value(end, stats.zone)
    if number is not None:
        filters[NUMBER] = number or "default"
    return url_for("message.index_view", **filters, **more)


def links(stats: DashboardStats, number: str | None) -> dict[str, str]:
    """Return the list behind each figure of the period."""

    def messages(figure: str, **more: str) -> str:
        return message_list(stats, number, figure, **more)

    conversations = {FIGURE: ACTIVE, **({} if number is None else {NUMBER: number or "default"})}
    return {
        **{outcome: messages(outcome) for outcome in ("inbound", *OUTCOMES)},
        "failed_all": messages("failed_all"),
        **{status: messages("refused", **{STATUS: status})
           for status in (Status.NOT_ALLOWED.value, Status.OVER_BUDGET.value, Status.OPTED_OUT.value)},
        "reply_times": messages("timed"),
        "conversations": url_for("conversation.index_view", **conversations),
        "models": url_for("spending.index"),
        **{f"error:{error.kind}": messages(error.figure) for error in stats.errors},
    }


def bucket_links(stats: DashboardStats, number: str | None) -> dict[str, list[str]]:
    """Return, for each outcome, the list behind each bucket of the chart (a bar opens its hour or day)."""
    starts = stats.bucket_starts
    ends = [*starts[1:], None]
    return {outcome: [message_list(stats, number, outcome, start, end) for start, end in zip(starts, ends, strict=True)]
            for outcome in OUTCOMES}


def chart_data(stats: DashboardStats, figure_links: dict[str, str], number: str | None) -> dict:
    """Return what dashboard.js draws, for the page's JSON island."""
    by_bucket = bucket_links(stats, number)
    return {
        "zone": stats.zone,
        "labels": stats.bucket_labels,
        "outcomes": {outcome: {"counts": counts, "link": figure_links[outcome], "bucket_links": by_bucket[outcome]}
                     for outcome, counts in stats.outcomes.items()},
        "reply_times": stats.reply_times_by_bucket,
        "errors": [{"kind": error.kind, "label": error.label, "count": error.count,
                    "link": figure_links[f"error:{error.kind}"]}
                   for error in stats.errors],
        "models": [{"model": use.model, "prompt_tokens": use.prompt_tokens,
                    "completion_tokens": use.completion_tokens, "usd": use.usd} for use in stats.models],
        "models_link": figure_links["models"],
    }
