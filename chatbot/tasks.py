"""The job functions under the names that jobs queued before chatbot/jobs/ existed carry.

RQ stores a job's function as a dotted name and imports it when the job runs, so a message queued
just before an upgrade, or waiting for a retry across it, still finds its function after it.
"""
from chatbot.jobs.tasks import (
    apologise_when_failed_for_good,
    cleanup_expired_conversations,
    process_message,
    send_operator_reply,
    sweep_pending_messages,
)

__all__ = ["apologise_when_failed_for_good", "cleanup_expired_conversations", "process_message",
           "send_operator_reply", "sweep_pending_messages"]
