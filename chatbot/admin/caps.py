"""The spending caps reached, as the panel names them: read once per request, shown on Problems, the
dashboard, Numbers, Spending and the conversation list."""
from __future__ import annotations

from dataclasses import dataclass

from flask import g, url_for
from markupsafe import Markup

from chatbot.admin.panel import local_time, masked, may_do, number_labels, services
from chatbot.models import WhatsAppNumber
from chatbot.redact import sender_key
from chatbot.roles import Role
from chatbot.spend_caps import CapReached, reached
from chatbot.stages.budget import Cap


@dataclass(frozen=True)
class ShownCap:
    """A cap reached, with what the operator reads about it."""

    reached: CapReached
    # Whose cap it is: the number's label, "Every number", or the sender's name (else their number, masked).
    name: str
    # The label of the number it holds over ("" for every number).
    number_label: str
    # What it is: "Monthly budget of the number", "Daily budget per sender, on Support".
    what: str
    # Where it is raised: the page's name and, for someone who may raise it, its address.
    raise_on: str
    raise_url: str | None

    @property
    def key(self) -> str:
        """A stable name for the page's ids, with no phone number in it."""
        whose = "".join(filter(None, (self.reached.number, self.reached.sender)))
        return f"{self.reached.cap.value}-{sender_key(whose)[len('sender:'):][:12]}"


def caps_reached() -> list[ShownCap]:
    """The caps reached now, named for this operator (phone numbers masked unless revealed); read once a request."""
    if "caps_reached" not in g:
        budgets, numbers = services().budgets, services().numbers
        # On the budget gate's clock: the panel and the gate agree on which day and month it is.
        found = reached(budgets.caps(fresh=True), lambda key: numbers.for_key(key).monthly_budget, budgets.now(),
                        budgets.zone)
        labels = number_labels() if found else {}
        g.caps_reached = [_shown(cap, labels) for cap in found]
    return g.caps_reached


def reached_for_number(key: str) -> ShownCap | None:
    """The monthly cap of the number with this conversation key, when it is reached."""
    return next((shown for shown in caps_reached()
                 if shown.reached.cap is Cap.NUMBER_MONTHLY and shown.reached.number == key), None)


def reached_over_all() -> ShownCap | None:
    """The monthly budget of every number, when it is reached."""
    return next((shown for shown in caps_reached() if shown.reached.cap is Cap.MONTHLY), None)


def cap_badge(sender: str, number: str) -> Markup | str:
    """A badge for a customer (a sender on a number) whose messages a cap reached refuses now."""
    shown = next((shown for shown in caps_reached() if (sender, number) in shown.reached.customers), None)
    if shown is None:
        return ""
    return Markup('<span class="badge badge-warning cap-badge" title="{}, reached on {}: not answered until {}">'
                  'over spending cap</span>').format(shown.what, local_time(shown.reached.since),
                                                     local_time(shown.reached.until))


def reached_badge(shown: ShownCap | None) -> Markup | str:
    """'reached on 2026-11-14 10:42 CET' as a badge, for a cap shown in a list."""
    if shown is None:
        return ""
    return Markup('<span class="badge badge-warning cap-reached" title="{} refused; until {}">reached on {}</span>'
                  ).format(shown.reached.refused, local_time(shown.reached.until), local_time(shown.reached.since))


def _shown(cap: CapReached, labels: dict[str, str]) -> ShownCap:
    number = labels.get(cap.number, masked(cap.number)) if cap.number is not None else ""
    if cap.cap is Cap.MONTHLY:
        return ShownCap(cap, "Every number", "", "Monthly budget", "Spending",
                        _if_admin(url_for("spending.index")))
    if cap.cap is Cap.NUMBER_MONTHLY:
        row = WhatsAppNumber.get_or_none(WhatsAppNumber.address == (cap.number or services().config
                                                                    .twilio_whatsapp_number))
        edit = url_for("whatsappnumber.edit_view", id=row.id) if row else url_for("whatsappnumber.index_view")
        return ShownCap(cap, number, number, "Monthly budget of the number", "Numbers", _if_admin(edit))
    return ShownCap(cap, cap.profile_name or masked(cap.sender), number, f"Daily budget per sender, on {number}",
                    "Spending", _if_admin(url_for("spending.index")))


def _if_admin(url: str) -> str | None:
    # Budgets are an admin's to change: others are told where, without a link that would refuse them.
    return url if may_do(Role.ADMIN) else None
