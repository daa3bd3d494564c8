"""Retention: delete what is older than the operator keeps."""
from __future__ import annotations

import logging
from datetime import timedelta

from chatbot.audit import delete_before
from chatbot.models import Campaign, Conversation, WebhookLog

log = logging.getLogger(__name__)


def delete_past_retention(config, context, now) -> dict[str, int]:
    """Delete conversations untouched for RETENTION_DAYS with their messages, context and webhook log
    entries, audit rows and campaigns that ended (or stayed drafts) that long ago with their
    recipients, then webhook log entries older than WEBHOOK_LOG_RETENTION_DAYS; 0 keeps either forever."""
    conversations = messages = logs = audit_deleted = campaigns = 0
    if config.retention_days:
        cutoff = now - timedelta(days=config.retention_days)
        for batch_conversations, batch_messages, batch_logs in Conversation.delete_untouched_since(cutoff, context):
            conversations += batch_conversations
            messages += batch_messages
            logs += batch_logs
        audit_deleted = delete_before(cutoff)
        campaigns = Campaign.delete_ended_before(cutoff)
    if config.webhook_log_retention_days:
        logs += sum(WebhookLog.delete_received_before(now - timedelta(days=config.webhook_log_retention_days)))
    return {"conversations_deleted": conversations, "messages_deleted": messages, "webhook_logs_deleted": logs,
            "audit_events_deleted": audit_deleted, "campaigns_deleted": campaigns}

