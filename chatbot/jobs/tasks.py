"""RQ jobs: thin, idempotent, and safe to run twice."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from datetime import timedelta

from rq import get_current_job
from rq.job import Job

from chatbot import metrics, ratings
from chatbot.errors import CampaignBusy, SenderBusy, WhatsAppError
from chatbot.jobs.locks import campaign_lock, conversation_lock
from chatbot.jobs.queueing import (
    enqueue_approved_embedding,
    enqueue_campaign,
    enqueue_handoff_notice,
    enqueue_knowledge_index,
    enqueue_unprompted,
    queue_unless_active,
)
from chatbot.jobs.retention import delete_past_retention
from chatbot.models import (
    ApprovedAnswer,
    Campaign,
    CampaignStatus,
    Conversation,
    Handoff,
    KnowledgeSource,
    Message,
    Origin,
    Status,
    utcnow,
)
from chatbot.models.db import connection_scope
from chatbot.takeover import hand_back
from chatbot.tools import follow_ups

log = logging.getLogger(__name__)

# The job's own deadline, below JOB_TIMEOUT: it ends itself (with an apology where one is due)
# rather than being cut off, and a worker that cannot kill a thread never has to.
JOB_DEADLINE = 150
# How long the failure callback waits for a conversation another job is still working on.
GIVE_UP_LOCK_WAIT = 5
PENDING_GRACE = timedelta(seconds=60)
# How long the sweeper keeps trying to send an answer. Past WhatsApp's 24-hour window the processor
# sends it as the number's approved template (or marks it outside_window); only an answer still
# unsent after this long, with Twilio failing all the while, is given up.
RESEND_HORIZON = timedelta(days=7)

_services = None


def install(services) -> None:
    """Use these built services for the jobs of this process (worker.py and tests)."""
    global _services
    _services = services


def current_services():
    """Return the services this process installed; a job run without them is a wiring mistake."""
    if _services is None:
        raise RuntimeError("no services installed for RQ jobs in this process: "
                           "call chatbot.jobs.tasks.install(build_services(config)) before running jobs")
    return _services


def process_message(message_id: int) -> dict:
    """Answer and deliver a stored user message (and any older one of the same sender; with
    COALESCE_SECONDS, the newer ones that arrive before the sender pauses too)."""
    services = current_services()
    until = time.monotonic() + JOB_DEADLINE
    job = get_current_job()
    with connection_scope():
        message = Message.get_or_none(Message.id == message_id)
    if message is None:
        log.warning("message_id=%s not found", message_id)
        return {"missing": True}
    if message.origin != Origin.WHATSAPP.value:
        # The playground and the console answer their own messages, never through Twilio.
        log.warning("message_id=%s came from the %s, not WhatsApp: no job answers it", message_id, message.origin)
        return {"not_whatsapp": True}
    limit = services.config.max_processing_attempts
    # A second guard behind RQ's rate limit: a job re-run after a worker died must not overlap.
    with conversation_lock(services.redis, message.conversation_id, message_id,
                           ttl=services.config.conversation_lock_ttl):
        if message.twilio_sid and message.status == Status.PENDING.value:
            # "typing…" under the user's message while the model thinks; best effort, short timeout.
            services.whatsapp.show_typing(message.twilio_sid)
        with connection_scope():
            attempt = Message.count_attempt(message_id)
            if attempt > limit:
                # Every earlier run failed without an answer (or died): stop the laps, apologise once.
                outcome = services.processor.give_up(message_id, f"gave up after {limit} attempts")
            else:
                final_attempt = job is None or not job.retries_left or attempt == limit
                outcome = services.processor.process(message_id, final_attempt=final_attempt, until=until,
                                                     coalesce_seconds=services.config.coalesce_seconds)
    metrics.count_job(outcome, gave_up=attempt > limit)
    return asdict(outcome)


def index_knowledge_source(source_id: int) -> str | None:
    """Read, split and embed one knowledge source, replacing its passages in one transaction."""
    services = current_services()
    job = get_current_job()
    with connection_scope():
        return services.indexer.index(source_id, services.ai_factory.current(),
                                      final_attempt=job is None or not job.retries_left)


def embed_approved_answers() -> int:
    """Embed the approved answers' questions that have no vector from the current embedding model."""
    services = current_services()
    with connection_scope():
        return services.indexer.embed_approved(services.ai_factory.current())


def refresh_knowledge() -> int:
    """Queue what the current EMBEDDING_MODEL has not embedded yet: sources indexed with another
    model (never served meanwhile: vectors of two models never mix), waiting sources whose job was
    lost, and approved answers; return how many sources were queued."""
    services = current_services()
    with connection_scope():
        stale = [source.id for source in KnowledgeSource.needing_index(services.retriever.key)]
        approved_waiting = ApprovedAnswer.unembedded(services.retriever.key).exists()
    queued = sum(enqueue_knowledge_index(services.queue, source_id) for source_id in stale)
    if approved_waiting:
        enqueue_approved_embedding(services.queue)
    if queued:
        log.info("queued %d knowledge source(s) for indexing", queued)
    return queued


def notify_handoff(handoff_id: int, reminder: bool = False) -> dict:
    """Tell the team a customer waits for a person (or remind them): every configured channel."""
    services = current_services()
    job = get_current_job()
    with connection_scope():
        return services.notifier.announce(handoff_id, reminder, final_attempt=job is None or not job.retries_left)


def remind_of_unclaimed_handoffs() -> int:
    """Queue a reminder for each handoff nobody claimed within HANDOFF_REMIND_MINUTES (then again
    every as many minutes); return how many."""
    services = current_services()
    minutes = services.config.handoff_remind_minutes
    if not minutes:
        return 0
    with connection_scope():
        due = [handoff.id for handoff in Handoff.unclaimed_since(utcnow() - timedelta(minutes=minutes))]
        for handoff_id in due:
            Handoff.update(reminded_at=utcnow()).where(Handoff.id == handoff_id).execute()
    for handoff_id in due:
        enqueue_handoff_notice(services.queue, handoff_id, reminder=True)
    return len(due)


def apologise_when_failed_for_good(job: Job, connection, error_type, error, traceback) -> None:
    """RQ's failure callback: when a message's job fails with no retry left (it raised, timed out or
    its worker died), the user gets an apology instead of silence."""
    metrics.count_job_error(job.retries_left)
    if job.retries_left or (error_type is not None and issubclass(error_type, (SenderBusy, WhatsAppError))):
        # A retry is coming; or the job holding the conversation answers this message too; or
        # Twilio cannot take messages now, and the sweeper queues the message again when it can.
        return
    message_id = job.args[0]
    services = current_services()
    reason = f"job failed for good: {error_type.__name__ if error_type else 'unknown error'}"
    log.error("message_id=%s %s; apologising", message_id, reason)
    with connection_scope():
        message = Message.get_or_none(Message.id == message_id)
        if message is None:
            return
    try:
        with conversation_lock(services.redis, message.conversation_id, message_id, wait=GIVE_UP_LOCK_WAIT,
                               ttl=services.config.conversation_lock_ttl):
            with connection_scope():
                services.processor.give_up(message_id, reason)
    except SenderBusy:
        log.warning("message_id=%s conversation busy; the job holding it answers this message", message_id)


def cleanup_expired_conversations() -> dict[str, int]:
    """End conversations idle longer than CONVERSATION_TTL (dropping their context), delete what is
    past its retention, and return how many of each went."""
    services = current_services()
    now = utcnow()
    with connection_scope():
        expired = [
            conversation.id
            for conversation in Conversation.idle_since(now - timedelta(seconds=services.config.conversation_ttl))
        ]
        Conversation.end(expired, services.context)
        counts = {"conversations_ended": len(expired), **delete_past_retention(services.config, services.context, now)}
    # An idle cleanup stays quiet: four zeros every 6 hours would only bury the lines that matter.
    if any(counts.values()):
        log.info("cleanup %s", " ".join(f"{name}={count}" for name, count in counts.items()))
    return counts


def sweep_pending_messages() -> int:
    """Queue stored messages that no job is working on: unanswered ones whose job never reached
    Redis (or was lost with it), and answers still waiting to be sent (e.g. Twilio was down); and
    the knowledge the current embedding model has not indexed."""
    services = current_services()
    queued = 0
    hand_back_idle_takeovers()
    remind_of_unclaimed_handoffs()
    refresh_knowledge()
    queue_due_follow_ups()
    ask_for_ratings()
    queue_campaigns()
    with connection_scope():
        for message in Message.needing_work(PENDING_GRACE, RESEND_HORIZON):
            queued += queue_unless_active(services.queue, message.id, message.conversation.user_phone)
        expired = Message.give_up_unsent(RESEND_HORIZON)
    if queued:
        log.warning("queued %d stored messages that had no job", queued)
    if expired:
        log.error("gave up sending %d replies older than %s", expired, RESEND_HORIZON)
    return queued


def queue_due_follow_ups() -> int:
    """Turn the follow-ups that are due into messages and queue their sending, and queue again every
    message the assistant wrote on its own whose job was lost or that Twilio refused for now; return
    how many were queued."""
    services = current_services()
    with connection_scope():
        due = follow_ups.claim_due(Origin.WHATSAPP.value)
        stalled = [message.id for message in Message.unprompted_unsent(utcnow() - PENDING_GRACE)]
    queued = sum(enqueue_unprompted(services.queue, message_id) for message_id in dict.fromkeys(due + stalled))
    if due:
        log.info("queued %d due follow-ups", len(due))
    return queued


def queue_campaigns() -> int:
    """Start the scheduled campaigns whose time has come, and queue again every campaign still sending
    whose job was lost (a worker killed past its retries, Redis emptied); return how many were queued."""
    services = current_services()
    with connection_scope():
        for campaign in Campaign.due(utcnow()):
            if Campaign.move(campaign.id, CampaignStatus.SENDING, from_=(CampaignStatus.SCHEDULED.value,)):
                log.info("campaign_id=%s: its time has come; sending", campaign.id)
        sending = [campaign.id for campaign in Campaign.sending()]
    return sum(enqueue_campaign(services.queue, campaign_id) for campaign_id in sending)


def send_campaign(campaign_id: int) -> dict:
    """Send a campaign's waiting recipients, paced, each once; one job at a time per campaign."""
    services = current_services()
    try:
        with campaign_lock(services.redis, campaign_id, ttl=services.config.conversation_lock_ttl):
            outcome = services.campaigns.run(campaign_id)
    except CampaignBusy:
        # The job holding the lock is sending it; when that one ends, nothing is left for this one.
        log.info("campaign_id=%s is being sent by another job", campaign_id)
        return {"busy": True}
    return {"sent": outcome.sent, "failed": outcome.failed, "skipped": outcome.skipped, "status": outcome.ended_as}


def ask_for_ratings() -> int:
    """Ask each customer whose conversation is due "How did I do?" (RATING_AFTER_MINUTES; 0 never
    does); return how many were asked."""
    services = current_services()
    minutes = services.config.rating_after_minutes
    if not minutes:
        return 0
    with connection_scope():
        asked = [message_id for conversation in ratings.due(utcnow(), timedelta(minutes=minutes))
                 if (message_id := ratings.ask(conversation, services.config.rating_template_sid)) is not None]
    for message_id in asked:
        enqueue_unprompted(services.queue, message_id)
    if asked:
        log.info("asked %d customers for a rating", len(asked))
    return len(asked)


def send_unprompted(message_id: int) -> dict:
    """Send a message the assistant wrote on its own (a due follow-up, the rating question), in order
    with the conversation's other replies."""
    services = current_services()
    job = get_current_job()
    with connection_scope():
        message = Message.get_or_none(Message.id == message_id)
    if message is None:
        log.warning("message_id=%s not found", message_id)
        return {"missing": True}
    with conversation_lock(services.redis, message.conversation_id, message_id,
                           ttl=services.config.conversation_lock_ttl):
        with connection_scope():
            final_attempt = job is None or not job.retries_left
            outcome = services.processor.deliver_unprompted(message_id, final_attempt=final_attempt)
    return asdict(outcome)


def send_operator_reply(reply_id: int) -> dict:
    """Send a reply an operator wrote (and any older one of the conversation still unsent), in order."""
    services = current_services()
    job = get_current_job()
    with connection_scope():
        reply = Message.get_or_none(Message.id == reply_id)
        on_whatsapp = reply is not None and reply.conversation.is_on_whatsapp
    if reply is None:
        log.warning("message_id=%s not found", reply_id)
        return {"missing": True}
    if not on_whatsapp:
        log.warning("message_id=%s is a reply in a playground or console conversation: never sent", reply_id)
        return {"not_whatsapp": True}
    # The lock the answering jobs take: two operators' replies, or a reply and an answer, never interleave.
    with conversation_lock(services.redis, reply.conversation_id, reply_id,
                           ttl=services.config.conversation_lock_ttl):
        with connection_scope():
            final_attempt = job is None or not job.retries_left
            outcome = services.processor.deliver_operator_reply(reply_id, final_attempt=final_attempt)
    return asdict(outcome)


def hand_back_idle_takeovers() -> int:
    """Hand back conversations taken over longer than TAKEOVER_TIMEOUT minutes ago with no message
    from the user or the operator since; 0 minutes never does."""
    minutes = current_services().config.takeover_timeout
    if not minutes:
        return 0
    cutoff = utcnow() - timedelta(minutes=minutes)
    with connection_scope():
        # updated_at moves with every user message and every operator reply.
        # A conversation waiting for a person it called stays theirs: a person resolves it.
        handed_back = hand_back(Conversation.paused_at < cutoff, Conversation.updated_at < cutoff,
                                Conversation.id.not_in(Handoff.select(Handoff.conversation)
                                                       .where(Handoff.resolved_at.is_null())))
    if handed_back:
        log.info("handed back %d idle taken-over conversations after %d minutes", handed_back, minutes)
    return handed_back

