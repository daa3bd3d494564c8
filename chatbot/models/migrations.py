"""Schema migrations: numbered steps, applied once each, in order, by `flask init-db`."""
from __future__ import annotations

import logging

from peewee import IntegerField, Model, PostgresqlDatabase
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate

from chatbot.models import (
    ONE_ACTIVE_INDEX,
    AccessEntry,
    AdminUser,
    AIConfiguration,
    ApprovedAnswer,
    AuditEvent,
    Campaign,
    CampaignRecipient,
    CannedReply,
    Conversation,
    Dismissal,
    FollowUp,
    Handoff,
    KnowledgeGap,
    KnowledgeSource,
    KnowledgeSpend,
    Message,
    Note,
    Notice,
    OptOut,
    Passage,
    Rating,
    ReplyPart,
    Setting,
    Tool,
    ToolUse,
    WebhookLog,
    WhatsAppNumber,
)
from chatbot.models.conversation import MESSAGE_FTS_TABLE, MESSAGE_SEARCH_COLUMN, MESSAGE_TEXT_SEARCH
from chatbot.models.db import database
from chatbot.models.knowledge import POSTGRES_SEARCH_COLUMN, POSTGRES_TEXT_SEARCH, SQLITE_FTS_TABLE

log = logging.getLogger(__name__)


class SchemaVersion(Model):
    """The schema version the database has been migrated to."""

    version = IntegerField()

    class Meta:
        database = database
        table_name = "schema_version"


def _create_initial_tables(_migrator) -> None:
    database.create_tables([Conversation, Message, AIConfiguration, WebhookLog], safe=True)
    # Tables later migrations add are created by them, on every database alike.


def _create_admin_users(_migrator) -> None:
    database.create_tables([AdminUser], safe=True)


# Migration 1 builds tables from today's models, so on a new database later columns exist already:
# each later migration checks before it adds.
def _add_webhook_verdict(migrator) -> None:
    if "verdict" not in {column.name for column in database.get_columns("webhook_log")}:
        migrate(migrator.add_column("webhook_log", "verdict", WebhookLog.verdict))  # indexes it too


def _add_message_origin(migrator) -> None:
    if "origin" not in {column.name for column in database.get_columns("message")}:
        migrate(migrator.add_column("message", "origin", Message.origin))


def _add_attempts_and_send_intents(migrator) -> None:
    existing = {column.name for column in database.get_columns("message")}
    operations = [migrator.add_column("message", name, getattr(Message, name))
                  for name in ("attempts", "sending_part", "sending_since") if name not in existing]
    if operations:
        migrate(*operations)


def _add_operator_controls(migrator) -> None:
    conversation_columns = {column.name for column in database.get_columns("conversation")}
    message_columns = {column.name for column in database.get_columns("message")}
    operations = [migrator.add_column("conversation", name, getattr(Conversation, name))
                  for name in ("paused_at", "paused_by") if name not in conversation_columns]
    if "operator" not in message_columns:
        operations.append(migrator.add_column("message", "operator", Message.operator))
    if operations:
        migrate(*operations)
    database.create_tables([ReplyPart, OptOut], safe=True)


def _add_spend_and_access(migrator) -> None:
    operations = []
    if "cost" not in {column.name for column in database.get_columns("message")}:
        operations.append(migrator.add_column("message", "cost", Message.cost))
    if "fallback_models" not in {column.name for column in database.get_columns("ai_configuration")}:
        operations.append(migrator.add_column("ai_configuration", "fallback_models", AIConfiguration.fallback_models))
    if operations:
        migrate(*operations)
    database.create_tables([AccessEntry, Setting], safe=True)


def _add_numbers(migrator) -> None:
    # Every conversation stored so far was with the default number, which "" stands for.
    if "number" not in {column.name for column in database.get_columns("conversation")}:
        migrate(migrator.add_column("conversation", "number", Conversation.number))
    # One active conversation per sender and number now, not per sender.
    database.execute_sql("DROP INDEX IF EXISTS conversation_one_active_per_phone")
    if ONE_ACTIVE_INDEX not in {index.name for index in database.get_indexes("conversation")}:
        Conversation._schema.create_indexes(safe=True)
    database.create_tables([WhatsAppNumber], safe=True)


def _add_message_sent_at(migrator) -> None:
    # Answers sent before it stay None: the dashboard's end-to-end times start with this version.
    if "sent_at" not in {column.name for column in database.get_columns("message")}:
        migrate(migrator.add_column("message", "sent_at", Message.sent_at))


def _add_webhook_checked_url(migrator) -> None:
    if "checked_url" not in {column.name for column in database.get_columns("webhook_log")}:
        migrate(migrator.add_column("webhook_log", "checked_url", WebhookLog.checked_url))
    # Rows refused before it named the URL only inside their error text.
    marker = "; checked against "
    for entry in WebhookLog.select().where(WebhookLog.error.contains(marker), WebhookLog.checked_url.is_null()):
        words = entry.error.partition(marker)[2].split()
        if words:
            WebhookLog.update(checked_url=words[0][:512]).where(WebhookLog.id == entry.id).execute()


def _add_opt_out_numbers(migrator) -> None:
    # Opt-outs are per number now. The ones stored before keep a NULL number, meaning every number:
    # nothing records which number their STOP went to, and silencing a number the sender meant to
    # keep costs them less than answering one they asked to stop (the law's side of the doubt).
    if "number" not in {column.name for column in database.get_columns("opt_out")}:
        migrate(migrator.add_column("opt_out", "number", OptOut.number))
    # One opt-out per sender and number now, not per sender.
    database.execute_sql("DROP INDEX IF EXISTS optout_user_phone")
    OptOut._schema.create_indexes(safe=True)


def _add_knowledge(migrator) -> None:
    if "cite_sources" not in {column.name for column in database.get_columns("ai_configuration")}:
        migrate(migrator.add_column("ai_configuration", "cite_sources", AIConfiguration.cite_sources))
    database.create_tables([KnowledgeSource, Passage, ApprovedAnswer, KnowledgeGap, KnowledgeSpend], safe=True)
    if isinstance(migrator, PostgresqlMigrator):
        # Stored, not an index on the expression: ranking the matches reads it instead of parsing
        # every matching passage's text again (310 ms against 18 ms over 20,000 passages).
        database.execute_sql(f"ALTER TABLE passage ADD COLUMN IF NOT EXISTS {POSTGRES_SEARCH_COLUMN} tsvector "
                             f"GENERATED ALWAYS AS ({POSTGRES_TEXT_SEARCH}) STORED")
        database.execute_sql(f"CREATE INDEX IF NOT EXISTS passage_text_search ON passage "
                             f"USING gin ({POSTGRES_SEARCH_COLUMN})")
    else:
        database.execute_sql(f"CREATE VIRTUAL TABLE IF NOT EXISTS {SQLITE_FTS_TABLE} "
                             "USING fts5(text, tokenize = 'porter unicode61')")


def _add_handoffs(migrator) -> None:
    database.create_tables([Handoff, Note, CannedReply], safe=True)
    # One open handoff per conversation, whatever calls a person at once.
    database.execute_sql("CREATE UNIQUE INDEX IF NOT EXISTS handoff_one_open ON handoff (conversation_id) "
                         "WHERE resolved_at IS NULL")


def _add_roles_two_factor_and_audit(migrator) -> None:
    columns = {column.name for column in database.get_columns("admin_user")}
    added = [(name, field) for name, field in (
        ("role", AdminUser.role), ("totp_secret_encrypted", AdminUser.totp_secret_encrypted),
        ("totp_enabled_at", AdminUser.totp_enabled_at), ("totp_last_step", AdminUser.totp_last_step),
        ("recovery_codes", AdminUser.recovery_codes)) if name not in columns]
    if added:
        # Every admin from before roles could do everything: they are owners.
        migrate(*(migrator.add_column("admin_user", name, field) for name, field in added))
    database.create_tables([AuditEvent], safe=True)


def _add_tools(migrator) -> None:
    columns = {column.name for column in database.get_columns("ai_configuration")}
    added = [(name, field) for name, field in (("offer_request_human", AIConfiguration.offer_request_human),
                                               ("offer_follow_ups", AIConfiguration.offer_follow_ups))
             if name not in columns]
    if added:
        migrate(*(migrator.add_column("ai_configuration", name, field) for name, field in added))
    database.create_tables([Tool, ToolUse, FollowUp], safe=True)


def _add_ratings_and_message_search(migrator) -> None:
    if "rating_asked_at" not in {column.name for column in database.get_columns("conversation")}:
        migrate(migrator.add_column("conversation", "rating_asked_at", Conversation.rating_asked_at))
    database.create_tables([Rating], safe=True)
    if isinstance(migrator, PostgresqlMigrator):
        database.execute_sql(f"ALTER TABLE message ADD COLUMN IF NOT EXISTS {MESSAGE_SEARCH_COLUMN} tsvector "
                             f"GENERATED ALWAYS AS ({MESSAGE_TEXT_SEARCH}) STORED")
        database.execute_sql(f"CREATE INDEX IF NOT EXISTS message_text_search ON message "
                             f"USING gin ({MESSAGE_SEARCH_COLUMN})")
        return
    # An index of the messages' own text (external content): triggers keep it in step with every
    # insert, edit and delete, the cascades of /forget and retention included.
    exists = database.execute_sql("SELECT 1 FROM sqlite_master WHERE name = ?", (MESSAGE_FTS_TABLE,)).fetchone()
    database.execute_sql(f"CREATE VIRTUAL TABLE IF NOT EXISTS {MESSAGE_FTS_TABLE} USING fts5(content, "
                         "content='message', content_rowid='id', tokenize='porter unicode61')")
    database.execute_sql(f"CREATE TRIGGER IF NOT EXISTS message_fts_insert AFTER INSERT ON message BEGIN "
                         f"INSERT INTO {MESSAGE_FTS_TABLE}(rowid, content) VALUES (new.id, new.content); END")
    database.execute_sql(f"CREATE TRIGGER IF NOT EXISTS message_fts_delete AFTER DELETE ON message BEGIN "
                         f"INSERT INTO {MESSAGE_FTS_TABLE}({MESSAGE_FTS_TABLE}, rowid, content) "
                         "VALUES ('delete', old.id, old.content); END")
    database.execute_sql(f"CREATE TRIGGER IF NOT EXISTS message_fts_update AFTER UPDATE OF content ON message BEGIN "
                         f"INSERT INTO {MESSAGE_FTS_TABLE}({MESSAGE_FTS_TABLE}, rowid, content) "
                         "VALUES ('delete', old.id, old.content); "
                         f"INSERT INTO {MESSAGE_FTS_TABLE}(rowid, content) VALUES (new.id, new.content); END")
    if not exists:
        # The messages stored before this version.
        database.execute_sql(f"INSERT INTO {MESSAGE_FTS_TABLE}({MESSAGE_FTS_TABLE}) VALUES ('rebuild')")


def _add_notices_and_dismissals(migrator) -> None:
    database.create_tables([Notice, Dismissal], safe=True)


def _add_campaigns(_migrator) -> None:
    database.create_tables([Campaign, CampaignRecipient], safe=True)


# Append a function for every schema change (playhouse.migrate operations on the migrator it
# receives); never edit one that has shipped.
MIGRATIONS = [_create_initial_tables, _create_admin_users, _add_webhook_verdict, _add_message_origin,
              _add_attempts_and_send_intents, _add_operator_controls, _add_spend_and_access,
              _add_numbers, _add_message_sent_at, _add_webhook_checked_url, _add_opt_out_numbers,
              _add_knowledge, _add_handoffs, _add_roles_two_factor_and_audit, _add_tools,
              _add_ratings_and_message_search, _add_notices_and_dismissals, _add_campaigns]


def current_version() -> int:
    """Return the schema version stored in the database (0 when unmigrated)."""
    if not SchemaVersion.table_exists():
        return 0
    row = SchemaVersion.select().order_by(SchemaVersion.version.desc()).first()
    return row.version if row else 0


def upgrade() -> tuple[int, int]:
    """Create or upgrade the schema idempotently; return (version before, version after)."""
    real = database.obj
    is_postgres = isinstance(real, PostgresqlDatabase)
    migrator = PostgresqlMigrator(real) if is_postgres else SqliteMigrator(real)
    with database.connection_context():
        # A lock row keeps two release commands from migrating at once on Postgres.
        with database.atomic():
            database.create_tables([SchemaVersion], safe=True)
            if is_postgres:
                database.execute_sql("LOCK TABLE schema_version IN EXCLUSIVE MODE")
            before = current_version()
            for number, step in enumerate(MIGRATIONS, start=1):
                if number > before:
                    log.info("applying migration %d (%s)", number, step.__name__)
                    step(migrator)
                    SchemaVersion.create(version=number)
            return before, current_version()

