"""Where each dashboard figure leads: the message list filtered to it, or the Problems view."""
from __future__ import annotations

from flask import url_for

from chatbot.models import Status
from chatbot.reports import DashboardStats


def message_filters(stats: DashboardStats, number: str | None) -> dict[str, str]:
    """Return the message list's filters for the period and number shown (its URL arguments)."""
    filters = {"flt1_created_at_greater_than": stats.bucket_starts[0].strftime("%Y-%m-%d %H:%M:%S")}
    if number is not None:
        filters["flt2_number_equals"] = number or "default"
    return filters


def links(stats: DashboardStats, number: str | None) -> dict[str, str]:
    """Return the list behind each figure: the message list filtered to it, or the Problems view."""
    filters = message_filters(stats, number)

    def messages(status: str | None = None) -> str:
        return url_for("message.index_view", **filters, **({"flt0_status_equals": status} if status else {}))

    problems = url_for("admin.index") + "problems/"
    return {
        "inbound": messages(),
        "answered": messages(Status.ANSWERED.value),
        "failed": messages(Status.FAILED.value),
        "failed_all": problems,
        "undelivered": problems,
        "rate_limited": messages(Status.RATE_LIMITED.value),
        "refused": messages(Status.NOT_ALLOWED.value),
        "over_budget": messages(Status.OVER_BUDGET.value),
        "opted_out": messages(Status.OPTED_OUT.value),
        "waiting": messages(Status.PENDING.value),
        "reply_times": messages(Status.SENT.value),
        "conversations": url_for("conversation.index_view"),
        "models": url_for("spending.index"),
        **{f"error:{error.kind}": messages(error.status) if error.status else problems for error in stats.errors},
    }


def chart_data(stats: DashboardStats, figure_links: dict[str, str]) -> dict:
    """Return what dashboard.js draws, for the page's JSON island."""
    return {
        "zone": stats.zone,
        "labels": stats.bucket_labels,
        "outcomes": {outcome: {"counts": counts, "link": figure_links[outcome]}
                     for outcome, counts in stats.outcomes.items()},
        "reply_times": stats.reply_times_by_bucket,
        "errors": [{"kind": error.kind, "label": error.label, "count": error.count,
                    "link": figure_links[f"error:{error.kind}"]}
                   for error in stats.errors],
        "models": [{"model": use.model, "prompt_tokens": use.prompt_tokens,
                    "completion_tokens": use.completion_tokens, "usd": use.usd} for use in stats.models],
        "models_link": figure_links["models"],
    }
