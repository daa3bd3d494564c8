"""What the CLI and the admin show of a campaign: its figures, its failures explained, and the month's
template messages from its number (what Twilio's bill counts)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo

from chatbot.campaigns.audience import shown
from chatbot.error_explanations import twilio_error
from chatbot.models import (
    DELIVERY_FAILURES,
    Campaign,
    CampaignRecipient,
    CampaignResults,
    RecipientStatus,
    ReplyPart,
    utcnow,
)

# The figures, in the order both faces show them.
FIGURES = ("queued", "sent", "delivered", "read", "failed", "replies")
# Failures listed by name on a campaign's page and in `flask campaigns status`.
FAILURES_SHOWN = 20


@dataclass(frozen=True)
class MonthCount:
    """Template messages sent from a number in the current month of ADMIN_TIMEZONE."""

    month: str  # "March 2026"
    count: int


def month_count(number: str, zone: str, now: datetime | None = None) -> MonthCount:
    """The template messages `number` (a conversation key) sent since this month began in `zone`."""
    local = (now or utcnow()).replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(zone))
    start = datetime.combine(local.date().replace(day=1), time(0), ZoneInfo(zone))
    since = start.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)
    return MonthCount(local.strftime("%B %Y"), Campaign.template_messages(number, since))


def results_of(campaign_ids: list[int]) -> dict[int, CampaignResults]:
    """Each campaign's figures, by id."""
    return {campaign_id: CampaignResults.of(campaign_id) for campaign_id in campaign_ids}


def failures(campaign_id: int, limit: int = FAILURES_SHOWN) -> list[tuple[str, str]]:
    """The first recipients who did not get it, as (masked number, why): refused by Twilio or kept
    out when their turn came, then those Twilio reported undelivered."""
    refused = [(shown(recipient.phone), recipient.error or "")
               for recipient in (CampaignRecipient.select(CampaignRecipient.phone, CampaignRecipient.error)
                                 .where(CampaignRecipient.campaign == campaign_id,
                                        CampaignRecipient.status.in_((RecipientStatus.FAILED.value,
                                                                      RecipientStatus.SKIPPED.value)))
                                 .order_by(CampaignRecipient.id)
                                 .limit(limit))]
    undelivered = []
    for phone, code in (CampaignRecipient.select(CampaignRecipient.phone, ReplyPart.error_code)
                        .join(ReplyPart, on=(ReplyPart.message == CampaignRecipient.message))
                        .where(CampaignRecipient.campaign == campaign_id, ReplyPart.status.in_(DELIVERY_FAILURES))
                        .order_by(CampaignRecipient.id)
                        .limit(max(limit - len(refused), 0))
                        .tuples()):
        undelivered.append((shown(phone), twilio_error(code).in_a_line()))
    return refused + undelivered
