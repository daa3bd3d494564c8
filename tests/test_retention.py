"""Retention: the cleanup deletes old conversations and webhook log entries, in batches, on SQLite and Postgres."""
from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta

import pytest
from playhouse.db_url import connect

from chatbot.jobs import tasks
from chatbot.models import Campaign, CampaignRecipient, Conversation, Message, Role, Status, WebhookLog, db, utcnow
from chatbot.models.db import connection_scope
from tests.support import conversation_for

pytestmark = pytest.mark.postgres

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"
CAT = "whatsapp:+15550003333"


@pytest.fixture
def stored(services):
    """Store a conversation of question-and-answer exchanges whose last activity was `idle_days` ago,
    each question with its webhook log entry received then, and a context window in Redis."""

    def store(phone: str, idle_days: float = 0, exchanges: int = 2) -> Conversation:
        conversation = conversation_for(phone)
        sids = []
        for number in range(exchanges):
            sid = f"SM{uuid.uuid4().hex}"
            question = Message.create(conversation=conversation, role=Role.USER.value, content=f"question {number}",
                                      status=Status.ANSWERED.value, twilio_sid=sid)
            Message.create(conversation=conversation, role=Role.ASSISTANT.value, content=f"answer {number}",
                           status=Status.SENT.value, reply_to=question)
            WebhookLog.create(method="POST", path="/whatsapp/webhook", body=f"From={phone}&MessageSid={sid}",
                              response_status=200, message_sid=sid)
            sids.append(sid)
        then = utcnow() - timedelta(days=idle_days)
        Conversation.update(created_at=then, updated_at=then).where(Conversation.id == conversation.id).execute()
        Message.update(created_at=then).where(Message.conversation == conversation).execute()
        WebhookLog.update(received_at=then).where(WebhookLog.message_sid.in_(sids)).execute()
        services.context.add_message(conversation.id, "user", "question 0", position=1.0, message_id=1)
        return conversation

    return store


def log_entries(age_days: float, count: int) -> None:
    """Store webhook log entries of no message (refused requests, say) received `age_days` ago."""
    for _ in range(count):
        WebhookLog.create(method="POST", path="/whatsapp/webhook", body="From=whatsapp%3A%2B15550009999",
                          response_status=403, received_at=utcnow() - timedelta(days=age_days))


def messages_of(phone: str) -> int:
    return Message.select().join(Conversation).where(Conversation.user_phone == phone).count()


def count_from_another_connection(database_url: str, table: str) -> int:
    """Count rows as another process would see them: only what is committed."""
    other = connect(database_url)
    try:
        return other.execute_sql(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        other.close()


def test_conversations_untouched_for_retention_days_go_with_their_messages_context_and_log(services, stored):
    # Log entries are kept forever here: those of the old conversation must go with it, not by age.
    services.config = services.config.replace(webhook_log_retention_days=0)
    old = stored(ADA, idle_days=91)
    ended_recently = stored(BOB, idle_days=89)
    active = stored(CAT)

    counts = tasks.cleanup_expired_conversations()

    assert counts == {"conversations_ended": 2, "conversations_deleted": 1, "messages_deleted": 4,
                      "webhook_logs_deleted": 2, "audit_events_deleted": 0, "campaigns_deleted": 0}
    assert Conversation.get_or_none(Conversation.id == old.id) is None
    assert (messages_of(ADA), messages_of(BOB), messages_of(CAT)) == (0, 4, 4)
    assert "15550001111" not in "".join(entry.body for entry in WebhookLog.select())
    assert WebhookLog.select().count() == 4
    assert not services.redis.exists(services.context.key(old.id))
    assert Conversation.get_by_id(ended_recently.id).is_active is False
    assert Conversation.get_by_id(active.id).is_active is True
    assert services.redis.exists(services.context.key(active.id))


def test_webhook_log_entries_older_than_their_limit_go_and_recent_ones_stay(services, stored):
    log_entries(age_days=15, count=3)
    log_entries(age_days=13, count=2)
    kept = stored(ADA, idle_days=20)  # its conversation is within RETENTION_DAYS, its log entries are not

    counts = tasks.cleanup_expired_conversations()

    assert counts["webhook_logs_deleted"] == 5
    assert counts["conversations_deleted"] == 0
    assert WebhookLog.select().count() == 2
    assert all(entry.received_at > utcnow() - timedelta(days=14) for entry in WebhookLog.select())
    assert messages_of(ADA) == 4 and Conversation.get_by_id(kept.id)


def test_zero_keeps_conversations_and_webhook_log_forever(services, stored):
    services.config = services.config.replace(retention_days=0, webhook_log_retention_days=0)
    stored(ADA, idle_days=3650)
    log_entries(age_days=3650, count=2)

    counts = tasks.cleanup_expired_conversations()

    assert counts == {"conversations_ended": 1, "conversations_deleted": 0, "messages_deleted": 0,
                      "webhook_logs_deleted": 0, "audit_events_deleted": 0, "campaigns_deleted": 0}
    assert messages_of(ADA) == 4
    assert WebhookLog.select().count() == 4


def test_conversations_are_deleted_in_batches_each_committed_on_its_own(services, stored, config):
    for number in range(5):
        stored(f"whatsapp:+1555000{number:04d}", idle_days=100, exchanges=1)
    stored(ADA, idle_days=1, exchanges=1)
    deleting = Conversation.delete_untouched_since(utcnow() - timedelta(days=90), services.context, batch_size=2)

    assert next(deleting) == (2, 4, 2)
    assert count_from_another_connection(config.database_url, "conversation") == 4
    assert list(deleting) == [(2, 4, 2), (1, 2, 1)]
    assert count_from_another_connection(config.database_url, "conversation") == 1
    assert count_from_another_connection(config.database_url, "message") == 2


def test_a_conversation_a_new_message_touches_during_the_deletion_is_kept(services, stored, config, monkeypatch):
    old = stored(ADA, idle_days=100)
    webhook = connect(config.database_url)  # another process, storing a new message in it
    deleted = []
    candidates_read = threading.Event()
    begin = db.database.obj.begin

    def begin_after_reading_candidates(*args, **kwargs):
        candidates_read.set()
        return begin(*args, **kwargs)

    def delete():
        with connection_scope():
            deleted.extend(Conversation.delete_untouched_since(utcnow() - timedelta(days=90), services.context))

    monkeypatch.setattr(db.database.obj, "begin", begin_after_reading_candidates)
    with webhook.atomic():
        webhook.execute_sql(*Conversation.update(updated_at=utcnow()).where(Conversation.id == old.id).sql())
        deletion = threading.Thread(target=delete)
        deletion.start()
        # The deletion has found the conversation (untouched, as far as it can see) and now takes the
        # write lock (SQLite) or the row lock (Postgres) that the webhook's transaction holds.
        assert candidates_read.wait(10)
    webhook.close()
    deletion.join(10)

    assert deleted == [(0, 0, 0)]
    assert messages_of(ADA) == 4 and Conversation.get_by_id(old.id)


def test_webhook_log_entries_are_deleted_in_batches(services, config):
    log_entries(age_days=30, count=5)
    log_entries(age_days=1, count=1)
    deleting = WebhookLog.delete_received_before(utcnow() - timedelta(days=14), batch_size=2)

    assert next(deleting) == 2
    assert count_from_another_connection(config.database_url, "webhook_log") == 4
    assert list(deleting) == [2, 1]
    assert WebhookLog.select().count() == 1


def test_an_idle_cleanup_stays_quiet_and_a_busy_one_logs_one_line_of_counts(services, stored, caplog):
    stored(ADA)
    with caplog.at_level(logging.INFO, logger="chatbot.jobs.tasks"):
        tasks.cleanup_expired_conversations()
    assert [record for record in caplog.records if record.name == "chatbot.jobs.tasks"] == []

    stored(BOB, idle_days=100)
    log_entries(age_days=30, count=1)
    with caplog.at_level(logging.INFO, logger="chatbot.jobs.tasks"):
        tasks.cleanup_expired_conversations()
    lines = [record.getMessage() for record in caplog.records if record.name == "chatbot.jobs.tasks"]
    assert lines == ["cleanup conversations_ended=1 conversations_deleted=1 messages_deleted=4 "
                     "webhook_logs_deleted=3 audit_events_deleted=0 campaigns_deleted=0"]


def test_campaigns_that_ended_or_stayed_drafts_past_retention_days_go_with_their_recipients(cli, services):
    long_ago, lately = utcnow() - timedelta(days=91), utcnow() - timedelta(days=89)
    kept, gone = [], []
    for status, ended_at, updated_at, fate in [
            ("finished", long_ago, long_ago, gone), ("cancelled", long_ago, long_ago, gone),
            ("draft", None, long_ago, gone), ("finished", lately, long_ago, kept),
            ("paused", None, long_ago, kept), ("draft", None, lately, kept)]:
        campaign = Campaign.create(name=status, content_sid="HX" + "0" * 32, status=status, ended_at=ended_at,
                                   updated_at=updated_at)
        CampaignRecipient.create(campaign=campaign, phone=ADA)
        fate.append(campaign.id)

    result = cli("cleanup")

    assert "Deleted 3 campaign(s) that ended 90 days ago or more, with their recipients." in result.output
    assert sorted(campaign.id for campaign in Campaign.select()) == kept
    assert sorted(recipient.campaign_id for recipient in CampaignRecipient.select()) == kept


def test_cleanup_command_prints_the_counts(cli, services, stored):
    stored(ADA, idle_days=100)
    stored(BOB, idle_days=2)
    log_entries(age_days=30, count=1)

    result = cli("cleanup")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "Deactivated 2 idle conversation(s).",
        "Deleted 1 conversation(s) untouched for 90 days, with 4 message(s).",
        "Deleted 3 webhook log entries (older than 14 days, or of deleted conversations).",
    ]


def test_cleanup_command_says_what_is_kept_forever(cli, services, stored):
    services.config = services.config.replace(retention_days=0, webhook_log_retention_days=0)
    stored(ADA, idle_days=100)

    result = cli("cleanup")

    assert result.exit_code == 0, result.output
    assert "Conversations are kept forever (RETENTION_DAYS=0)." in result.output
    assert "Deleted 0 webhook log entries of deleted conversations; the rest are kept forever " \
           "(WEBHOOK_LOG_RETENTION_DAYS=0)." in result.output
    assert messages_of(ADA) == 4
