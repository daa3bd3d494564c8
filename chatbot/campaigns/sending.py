"""Sending a campaign: one template message per recipient, paced, exactly once.

Each send goes as an answer does: an intent (`sending_since`) is written before Twilio sees it and
cleared with the result, and a run that finds an intent left by a run that died first asks Twilio
whether the message went out (WhatsAppClient.find_sent) before it sends again. So a worker killed
mid-campaign and restarted sends nobody twice and skips nobody. The campaign's lock (held by the
job, chatbot.jobs.locks.campaign_lock) keeps two runs from sending one campaign at once.

A few sends are in flight at once (`senders`): Twilio takes a while to answer each, and one at a time
would fall short of the pace. Each recipient is checked again just before its turn: a STOP or an
access-list change since the campaign was created keeps it out all the same.
"""
from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from peewee import fn
from redis.exceptions import RedisError

from chatbot import metrics
from chatbot.campaigns.audience import exclusion_reasons
from chatbot.campaigns.pacing import Pacer
from chatbot.campaigns.template import render
from chatbot.context import ConversationManager
from chatbot.error_explanations import twilio_error
from chatbot.errors import WhatsAppError
from chatbot.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    Conversation,
    Message,
    Origin,
    RecipientStatus,
    ReplyPart,
    Role,
    Status,
    utcnow,
)
from chatbot.models.db import connection_scope, database
from chatbot.numbers import NumberDirectory
from chatbot.redact import mask_phone
from chatbot.whatsapp import content_lookup

log = logging.getLogger(__name__)

# Twilio's refusals that concern one recipient (a bad or unsubscribed number, one outside WhatsApp's
# reach): recorded on the recipient, and the campaign goes on. Any other refusal (credentials, the
# template itself) would refuse every recipient alike: the campaign pauses itself with the reason.
RECIPIENT_CODES = frozenset({21211, 21408, 21610, 21614, 63003, 63016, 63024, 63032})
# How long Twilio may take to answer a send: enough sends are in flight for the pace not to wait on it.
TWILIO_ANSWER_SECONDS = 0.5
MAX_SENDERS = 16


def senders_for(rate: float) -> int:
    """How many sends to keep in flight to hold `rate` a second while Twilio takes its time answering."""
    return max(1, min(MAX_SENDERS, math.ceil(rate * TWILIO_ANSWER_SECONDS)))


class Halt(Exception):
    """The campaign stopped sending (paused, cancelled, or paused itself): the run ends here."""


@dataclass
class RunOutcome:
    """What one run of a campaign's job did."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    # Set when the run ended with the campaign no longer sending: "paused", "cancelled", "finished".
    ended_as: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, what: str) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)


class CampaignSender:
    """Sends a campaign's recipients their template message, each once, at the number's pace."""

    def __init__(self, whatsapp, context: ConversationManager, pacer: Pacer, access, numbers: NumberDirectory,
                 conversation_ttl: int, senders: int = 1):
        self.whatsapp = whatsapp
        self.context = context
        self.pacer = pacer
        self.access = access
        self.numbers = numbers
        self.conversation_ttl = conversation_ttl
        self.senders = senders

    def run(self, campaign_id: int) -> RunOutcome:
        """Send every recipient still waiting, unless the campaign stops sending meanwhile; mark it
        finished when none is left. A send Twilio may or may not have taken (no answer, then no
        answer to the look-up either) raises, so the job runs again and asks once more."""
        outcome = RunOutcome()
        with connection_scope():
            campaign = Campaign.get_or_none(Campaign.id == campaign_id)
            if campaign is None or campaign.status != CampaignStatus.SENDING.value:
                outcome.ended_as = campaign.status if campaign else "missing"
                return outcome
            Campaign.update(started_at=fn.COALESCE(Campaign.started_at, utcnow())).where(
                Campaign.id == campaign_id).execute()
            waiting = iter(CampaignRecipient.waiting(campaign_id))
            address = self.numbers.for_key(campaign.number).address
        turn = threading.Lock()
        stop = threading.Event()
        failures: list[BaseException] = []

        def send_in_turn() -> None:
            while not stop.is_set():
                with turn:
                    recipient_id = next(waiting, None)
                if recipient_id is None:
                    return
                try:
                    self._send_one(campaign, address, recipient_id, outcome)
                except Halt:
                    stop.set()
                except Exception as error:  # a thread's failure ends the run; the job reports it
                    failures.append(error)
                    stop.set()

        with ThreadPoolExecutor(self.senders, thread_name_prefix=f"campaign-{campaign_id}") as pool:
            for _ in range(self.senders):
                pool.submit(send_in_turn)
        if failures:
            raise failures[0]
        with connection_scope():
            if not CampaignRecipient.waiting(campaign_id) and Campaign.move(
                    campaign_id, CampaignStatus.FINISHED, from_=(CampaignStatus.SENDING.value,), ended_at=utcnow()):
                log.info("campaign_id=%s finished: sent=%d failed=%d skipped=%d this run", campaign_id,
                         outcome.sent, outcome.failed, outcome.skipped)
            outcome.ended_as = Campaign.get_by_id(campaign_id).status
        return outcome

    def _send_one(self, campaign: Campaign, address: str, recipient_id: int, outcome: RunOutcome) -> None:
        """Send one recipient its message once: checked again, paced, its intent noted first."""
        with connection_scope():
            recipient = CampaignRecipient.get_by_id(recipient_id)
            if recipient.status != RecipientStatus.QUEUED.value:
                return
            self._still_sending(campaign.id)
            settled = self._kept_out(campaign, address, recipient)
            if settled:
                outcome.count(settled)
                return
        self.pacer.wait_turn(campaign.number)
        with connection_scope():
            self._still_sending(campaign.id)
            # The first attempt's time is kept: the look-up searches from there, however many runs died.
            unconfirmed = recipient.sending_since
            CampaignRecipient.update(sending_since=fn.COALESCE(CampaignRecipient.sending_since, utcnow())).where(
                CampaignRecipient.id == recipient.id).execute()
        text = render(campaign.text, recipient.variables, campaign.content_sid)
        try:
            sid = self.whatsapp.send_content(recipient.phone, campaign.content_sid, recipient.variables,
                                             text=campaign.text, unconfirmed_since=unconfirmed,
                                             from_number=address)
        except WhatsAppError as error:
            metrics.count_send(error)
            self._refused(campaign, recipient, error, outcome)
            return
        metrics.count_send()
        self._record_sent(campaign, recipient, sid, text)
        outcome.count("sent")

    @staticmethod
    def _still_sending(campaign_id: int) -> None:
        """Raise Halt when the campaign was paused or cancelled since the last send."""
        status = Campaign.select(Campaign.status).where(Campaign.id == campaign_id).scalar()
        if status != CampaignStatus.SENDING.value:
            raise Halt(status)

    def _kept_out(self, campaign: Campaign, address: str, recipient: CampaignRecipient) -> str | None:
        """Mark the recipient skipped when it may no longer be sent to and return "skipped" (or "sent"
        when a run that died had sent it already: that is looked up, never sent again); None lets it go."""
        reasons = exclusion_reasons([recipient.phone], campaign.number, self.access)
        if recipient.phone not in reasons:
            return None
        if recipient.sending_since is not None:
            sid = self.whatsapp.find_sent(recipient.phone, content_lookup(recipient.variables, campaign.text),
                                          recipient.sending_since, from_number=address, in_template=True)
            if sid:
                self._record_sent(campaign, recipient, sid,
                                  render(campaign.text, recipient.variables, campaign.content_sid))
                return "sent"
        CampaignRecipient.update(status=RecipientStatus.SKIPPED.value, error=reasons[recipient.phone][1],
                                 sending_since=None).where(CampaignRecipient.id == recipient.id).execute()
        return "skipped"

    def _refused(self, campaign: Campaign, recipient: CampaignRecipient, error: WhatsAppError,
                 outcome: RunOutcome) -> None:
        """Record what Twilio's refusal means: a failed recipient, a campaign paused for the operator,
        or (Twilio down, or no answer) a run that ends for the job to retry."""
        who = f"campaign_id={campaign.id} recipient={mask_phone(recipient.phone)}"
        with connection_scope():
            if error.status is not None:
                # Twilio answered: it took nothing, there is nothing to look up later.
                CampaignRecipient.update(sending_since=None).where(CampaignRecipient.id == recipient.id).execute()
            if error.code in RECIPIENT_CODES:
                CampaignRecipient.update(status=RecipientStatus.FAILED.value, error_code=error.code,
                                         error=twilio_error(error.code).in_a_line()).where(
                    CampaignRecipient.id == recipient.id).execute()
                log.info("%s refused by Twilio: code=%s", who, error.code)
                outcome.count("failed")
                return
            if error.retryable or error.status is None:
                log.warning("%s not sent, the campaign's job retries: %s", who, error)
                raise error
            explanation = twilio_error(error.code)
            reason = f"{error} — {explanation.meaning} {explanation.fix}"
            Campaign.move(campaign.id, CampaignStatus.PAUSED, from_=(CampaignStatus.SENDING.value,), error=reason)
            log.error("%s: Twilio refused the campaign's template; campaign paused: %s", who, error)
        raise Halt("paused")

    def _record_sent(self, campaign: Campaign, recipient: CampaignRecipient, sid: str, text: str) -> None:
        """Store the message in the recipient's conversation (its context starts with it) and its part
        (the receipts find it by its sid), and mark the recipient sent, in one transaction."""
        now = utcnow()
        with connection_scope():
            with database.atomic():
                conversation_id = Conversation.resume_or_start_id(recipient.phone, ttl=self.conversation_ttl,
                                                                  number=campaign.number)
                message = Message.create(conversation=conversation_id, role=Role.ASSISTANT.value, content=text,
                                         origin=Origin.CAMPAIGN.value, status=Status.SENT.value, sent_at=now,
                                         metadata={"campaign": campaign.id})
                ReplyPart.record(message.id, 1, sid)
                CampaignRecipient.update(status=RecipientStatus.SENT.value, twilio_sid=sid, message=message,
                                         sending_since=None, sent_at=now).where(
                    CampaignRecipient.id == recipient.id).execute()
        try:
            self.context.add_exchange(conversation_id, None, message)
        except RedisError as error:
            # The window is rebuilt without it; the message itself is stored.
            log.warning("campaign_id=%s message_id=%s not added to the context: %s", campaign.id, message.id, error)
