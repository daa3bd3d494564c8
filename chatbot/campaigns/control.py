"""What an operator does with a campaign: send it now or at a time (in ADMIN_TIMEZONE), pause,
resume, cancel. Each is one conditional update, so of two operators acting at once one wins and the
other is told why not; the CLI and the admin both come here."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from rq import Queue

from chatbot.campaigns.drafting import CampaignProblem
from chatbot.clock import shown
from chatbot.jobs.queueing import enqueue_campaign
from chatbot.models import Campaign, CampaignRecipient, CampaignStatus, utcnow

DRAFT, SCHEDULED, SENDING = CampaignStatus.DRAFT.value, CampaignStatus.SCHEDULED.value, CampaignStatus.SENDING.value
PAUSED = CampaignStatus.PAUSED.value


def campaign_of(campaign_id: int) -> Campaign:
    """The campaign `campaign_id`; raise CampaignProblem when there is none."""
    campaign = Campaign.get_or_none(Campaign.id == campaign_id)
    if campaign is None:
        raise CampaignProblem(f"there is no campaign {campaign_id} (see: flask campaigns list)")
    return campaign


def when_from(text: str, zone: str, now: datetime | None = None) -> datetime:
    """The stored (naive UTC) time an operator's `2026-03-01T09:00` names: in `zone` (ADMIN_TIMEZONE)
    unless it carries its own offset; raise CampaignProblem unless it is a time still to come."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as error:
        raise CampaignProblem(f"{text!r} is not a time such as 2026-03-01T09:00 (in {zone})") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    at = moment.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)
    if at <= (now or utcnow()):
        raise CampaignProblem(f"{shown(at, zone)} has passed: give a later time, or leave the time out to send now")
    return at


def send(campaign_id: int, queue: Queue, at: datetime | None, zone: str) -> str:
    """Start sending a draft (or rescheduled) campaign now, or at `at`; say what happens."""
    campaign = campaign_of(campaign_id)
    if at is not None:
        if not Campaign.move(campaign_id, CampaignStatus.SCHEDULED, from_=(DRAFT, SCHEDULED), send_at=at):
            raise _refusal(campaign, "scheduled")
        return f"Campaign {campaign_id} will start sending at {shown(at, zone)}."
    if not Campaign.move(campaign_id, CampaignStatus.SENDING, from_=(DRAFT, SCHEDULED), send_at=None, error=None):
        raise _refusal(campaign, "sent")
    enqueue_campaign(queue, campaign_id)
    return f"Campaign {campaign_id} is sending."


def pause(campaign_id: int) -> str:
    """Stop sending after the sends under way (a scheduled one does not start); say so."""
    campaign = campaign_of(campaign_id)
    if not Campaign.move(campaign_id, CampaignStatus.PAUSED, from_=(SCHEDULED, SENDING)):
        raise _refusal(campaign, "paused")
    return f"Campaign {campaign_id} is paused: nothing more goes out until it is resumed."


def resume(campaign_id: int, queue: Queue, zone: str) -> str:
    """Go on with a paused campaign: now, or at its time when that is still to come."""
    campaign = campaign_of(campaign_id)
    if campaign.send_at is not None and campaign.send_at > utcnow():
        if not Campaign.move(campaign_id, CampaignStatus.SCHEDULED, from_=(PAUSED,), error=None):
            raise _refusal(campaign, "resumed")
        return f"Campaign {campaign_id} will start sending at {shown(campaign.send_at, zone)}."
    if not Campaign.move(campaign_id, CampaignStatus.SENDING, from_=(PAUSED,), error=None):
        raise _refusal(campaign, "resumed")
    enqueue_campaign(queue, campaign_id)
    return f"Campaign {campaign_id} is sending again."


def cancel(campaign_id: int) -> str:
    """End the campaign: whoever was not sent to yet never is."""
    campaign = campaign_of(campaign_id)
    if not Campaign.move(campaign_id, CampaignStatus.CANCELLED, from_=(DRAFT, SCHEDULED, SENDING, PAUSED),
                         ended_at=utcnow()):
        raise _refusal(campaign, "cancelled")
    cancelled = CampaignRecipient.cancel_waiting(campaign_id)
    return f"Campaign {campaign_id} is cancelled; {cancelled} recipient{'s' if cancelled != 1 else ''} will not get it."


def _refusal(campaign: Campaign, verb: str) -> CampaignProblem:
    current = Campaign.select(Campaign.status).where(Campaign.id == campaign.id).scalar() or "gone"
    return CampaignProblem(f"campaign {campaign.id} is {current}: it cannot be {verb} now")
