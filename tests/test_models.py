"""Models and migrations, on SQLite and Postgres."""
from __future__ import annotations

from datetime import timedelta

import pytest
from peewee import IntegrityError

from chatbot.crypto import FieldCipher
from chatbot.models import (
    ONE_ACTIVE_INDEX,
    AIConfiguration,
    Conversation,
    Message,
    OptOut,
    Role,
    Status,
    WebhookLog,
    WhatsAppNumber,
    db,
    migrations,
    utcnow,
)
from tests.support import conversation_for

pytestmark = pytest.mark.postgres
SALES = "whatsapp:+15557770001"


def test_init_db_is_idempotent(app, services):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["init-db"])
    second = runner.invoke(args=["init-db"])
    assert first.exit_code == 0 and second.exit_code == 0
    assert f"up to date (version {len(migrations.MIGRATIONS)})" in second.output
    assert migrations.current_version() == len(migrations.MIGRATIONS)
    for model in (Conversation, Message, AIConfiguration, WebhookLog):
        assert model.table_exists()


def test_init_db_creates_the_schema_on_an_empty_database(empty_database_url):
    db.open_database(empty_database_url)
    assert migrations.upgrade() == (0, len(migrations.MIGRATIONS))
    assert migrations.upgrade() == (len(migrations.MIGRATIONS), len(migrations.MIGRATIONS))
    with db.database.connection_context():
        assert Message.table_exists()


def make_message(conversation, role=Role.USER, sid=None, **fields):
    status = Status.PENDING if role == Role.USER else Status.UNSENT
    return Message.create(conversation=conversation, role=role.value, content="hi",
                          status=status.value, twilio_sid=sid, **fields)


def test_message_sid_is_unique_where_present(services):
    conversation = conversation_for("whatsapp:+15550001111")
    make_message(conversation, sid="SM" + "a" * 32)
    make_message(conversation, Role.ASSISTANT)
    make_message(conversation, Role.ASSISTANT)  # many rows without a SID are fine
    with pytest.raises(IntegrityError):
        make_message(conversation, sid="SM" + "a" * 32)


def test_deleting_a_conversation_deletes_its_messages(services):
    conversation = conversation_for("whatsapp:+15550001111")
    question = make_message(conversation)
    make_message(conversation, Role.ASSISTANT, reply_to=question)
    other = make_message(conversation_for("whatsapp:+15550002222"))
    conversation.delete_instance()
    assert [m.id for m in Message.select()] == [other.id]


def test_one_active_conversation_per_sender(services):
    first = conversation_for("whatsapp:+15550001111")
    assert conversation_for("whatsapp:+15550001111").id == first.id
    with pytest.raises(IntegrityError):
        with db.database.atomic():
            Conversation.create(user_phone="whatsapp:+15550001111")


def test_idle_conversation_is_replaced_by_a_fresh_one(services):
    old = conversation_for("whatsapp:+15550001111")
    Conversation.update(updated_at=utcnow() - timedelta(hours=2)).where(Conversation.id == old.id).execute()
    new = conversation_for("whatsapp:+15550001111", ttl=3600)
    assert new.id != old.id
    assert Conversation.get_by_id(old.id).is_active is False


def test_api_key_is_encrypted_at_rest(services):
    config = AIConfiguration(name="main", model_name="openai/gpt-4o-mini")
    config.set_api_key("sk-or-v1-secret-plaintext", services.cipher)
    config.save()
    raw = db.database.execute_sql("SELECT api_key_encrypted FROM ai_configuration").fetchone()[0]
    assert "sk-or-v1-secret-plaintext" not in raw
    assert AIConfiguration.get().api_key(services.cipher) == "sk-or-v1-secret-plaintext"


def test_rotated_keys_still_decrypt_and_rotation_moves_to_the_newest(services):
    from cryptography.fernet import Fernet

    old_cipher = services.cipher
    token = old_cipher.encrypt("sk-or-v1-abc")
    new_key = Fernet.generate_key().decode()
    rotated = FieldCipher(f"{new_key},{services.config.field_encryption_key}")
    assert rotated.decrypt(token) == "sk-or-v1-abc"
    assert FieldCipher(new_key).decrypt(rotated.rotate(token)) == "sk-or-v1-abc"


def test_activating_a_configuration_deactivates_the_others(services):
    first = AIConfiguration.create(name="a", model_name="openai/gpt-4o-mini")
    second = AIConfiguration.create(name="b", model_name="anthropic/claude-3.5-sonnet")
    first.activate()
    second.activate()
    assert [c.name for c in AIConfiguration.select().where(AIConfiguration.is_active == True)] == ["b"]  # noqa: E712
    assert AIConfiguration.active().name == "b"


def test_metadata_round_trips_as_json(services):
    conversation = conversation_for("whatsapp:+15550001111")
    message = make_message(conversation, metadata={"media": [{"url": "u", "content_type": "image/png"}], "é": "ü"})
    assert Message.get_by_id(message.id).metadata == {"media": [{"url": "u", "content_type": "image/png"}], "é": "ü"}


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"name": " "}, "name", "Name is required."),
        ({"model_name": "gpt4"}, "model_name", "slug"),
        ({"model_name": "openai/gpt 4"}, "model_name", "slug"),
        ({"max_tokens": 0}, "max_tokens", "from 1 to 1,000,000"),
        ({"max_tokens": 10**30}, "max_tokens", "from 1 to 1,000,000"),
        ({"temperature": 2.5}, "temperature", "0 to 2"),
        ({"temperature": -0.1}, "temperature", "0 to 2"),
        ({"provider": "acme"}, "provider", "OpenRouter"),
    ],
)
def test_invalid_ai_configuration_fields_are_named(fields, field, message):
    config = AIConfiguration(**{"name": "main", "model_name": "anthropic/claude-3.5-sonnet", "max_tokens": 500,
                                "temperature": 0.7, "provider": "openrouter", **fields})
    errors = config.validation_errors()
    assert list(errors) == [field]
    assert message in errors[field]


def test_valid_ai_configuration_has_no_errors():
    assert AIConfiguration(name="main", model_name="openai/gpt-4o-mini", max_tokens=1, temperature=2,
                           provider="openrouter").validation_errors() == {}


def test_upgrade_adds_the_webhook_verdict_column_to_an_older_database(empty_database_url):
    db.open_database(empty_database_url)
    migrations.upgrade()
    with db.database.connection_context():
        db.database.execute_sql("DROP INDEX webhooklog_verdict")
        db.database.execute_sql("ALTER TABLE webhook_log DROP COLUMN verdict")
        migrations.SchemaVersion.delete().where(migrations.SchemaVersion.version >= 3).execute()
    assert migrations.upgrade() == (2, len(migrations.MIGRATIONS))
    with db.database.connection_context():
        assert "verdict" in {c.name for c in db.database.get_columns("webhook_log")}
        WebhookLog.create(method="POST", path="/x", response_status=200, verdict="allowed")


def test_upgrade_moves_the_checked_url_out_of_older_rows_error_text(empty_database_url):
    db.open_database(empty_database_url)
    migrations.upgrade()
    version = migrations.MIGRATIONS.index(migrations._add_webhook_checked_url)
    with db.database.connection_context():
        db.database.execute_sql("ALTER TABLE webhook_log DROP COLUMN checked_url")
        migrations.SchemaVersion.delete().where(migrations.SchemaVersion.version > version).execute()
        # The row as the webhook wrote it before the column existed: the URL only inside the error.
        WebhookLog.insert(received_at=utcnow(), method="POST", path="/whatsapp/webhook", response_status=403,
                          signature_valid=False, verdict="bad_signature",
                          error="invalid signature; checked against https://bot.example.com/whatsapp/webhook?x=1 "
                                "(body of 10 bytes not kept)").execute()
    assert migrations.upgrade() == (version, len(migrations.MIGRATIONS))
    with db.database.connection_context():
        assert WebhookLog.get().checked_url == "https://bot.example.com/whatsapp/webhook?x=1"


def test_upgrade_adds_the_message_origin_to_an_older_database_as_whatsapp(empty_database_url):
    db.open_database(empty_database_url)
    migrations.upgrade()
    with db.database.connection_context():
        conversation = conversation_for("whatsapp:+15550001111")
        db.database.execute_sql("ALTER TABLE message DROP COLUMN origin")
        db.database.execute_sql(
            "INSERT INTO message (conversation_id, role, content, created_at, status, metadata, parts_sent, attempts) "
            f"VALUES ({db.database.param}, 'user', 'old', {db.database.param}, 'pending', '{{}}', 0, 0)",
            (conversation.id.hex if "sqlite" in empty_database_url else str(conversation.id), utcnow()),
        )
        migrations.SchemaVersion.delete().where(migrations.SchemaVersion.version >= 4).execute()
    assert migrations.upgrade() == (3, len(migrations.MIGRATIONS))
    with db.database.connection_context():
        assert Message.get(Message.content == "old").origin == "whatsapp"
        assert Message.select().where(Message.from_whatsapp()).count() == 1


def test_upgrade_adds_attempts_and_send_intents_to_an_older_database(empty_database_url):
    db.open_database(empty_database_url)
    migrations.upgrade()
    with db.database.connection_context():
        conversation = conversation_for("whatsapp:+15550001111")
        for column in ("attempts", "sending_part", "sending_since"):
            db.database.execute_sql(f"ALTER TABLE message DROP COLUMN {column}")
        db.database.execute_sql(
            "INSERT INTO message (conversation_id, role, content, created_at, status, metadata, parts_sent, origin) "
            f"VALUES ({db.database.param}, 'user', 'old', {db.database.param}, 'pending', '{{}}', 0, 'whatsapp')",
            (conversation.id.hex if "sqlite" in empty_database_url else str(conversation.id), utcnow()),
        )
        migrations.SchemaVersion.delete().where(migrations.SchemaVersion.version >= 5).execute()
    assert migrations.upgrade() == (4, len(migrations.MIGRATIONS))
    with db.database.connection_context():
        old = Message.get(Message.content == "old")
        assert (old.attempts, old.sending_part, old.sending_since) == (0, None, None)
        assert Message.count_attempt(old.id) == 1


def test_upgrade_puts_every_stored_conversation_with_the_default_number(empty_database_url):
    db.open_database(empty_database_url)
    migrations.upgrade()
    with db.database.connection_context():
        # The schema as version 7 left it: no number, one active conversation per sender.
        db.database.execute_sql(f"DROP INDEX {ONE_ACTIVE_INDEX}")
        db.database.execute_sql("DROP TABLE whatsapp_number")
        db.database.execute_sql("ALTER TABLE conversation DROP COLUMN number")
        db.database.execute_sql("CREATE UNIQUE INDEX conversation_one_active_per_phone ON conversation (user_phone) "
                                "WHERE is_active")
        param = db.database.param
        old_id = "0" * 31 + "1"
        db.database.execute_sql(
            f"INSERT INTO conversation (id, user_phone, profile_name, is_active, created_at, updated_at) "
            f"VALUES ({param}, {param}, '', {param}, {param}, {param})",
            (old_id if "sqlite" in empty_database_url else f"{old_id[:8]}-{old_id[8:12]}-{old_id[12:16]}-"
             f"{old_id[16:20]}-{old_id[20:]}", "whatsapp:+15550001111", True, utcnow(), utcnow()))
        migrations.SchemaVersion.delete().where(migrations.SchemaVersion.version >= 8).execute()
    assert migrations.upgrade() == (7, len(migrations.MIGRATIONS))
    with db.database.connection_context():
        old = Conversation.get(Conversation.user_phone == "whatsapp:+15550001111")
        assert old.number == "" and old.is_active
        # The same sender may now have an active conversation with another number, never two with one.
        assert conversation_for("whatsapp:+15550001111").id == old.id
        Conversation.create(user_phone="whatsapp:+15550001111", number="whatsapp:+15557770001")
        with pytest.raises(IntegrityError), db.database.atomic():
            Conversation.create(user_phone="whatsapp:+15550001111", number="whatsapp:+15557770001")
        WhatsAppNumber.create(address="whatsapp:+15557770001", label="Sales")
        assert Message.select().where(Message.role == Role.USER.value).count() == 0


def test_upgrade_keeps_an_older_opt_out_for_every_number_and_allows_one_per_number(empty_database_url):
    db.open_database(empty_database_url)
    migrations.upgrade()
    version = migrations.MIGRATIONS.index(migrations._add_opt_out_numbers)
    with db.database.connection_context():
        # The table as the version before left it: one opt-out per sender, for every number.
        db.database.execute_sql("DROP INDEX optout_user_phone_number")
        db.database.execute_sql("ALTER TABLE opt_out DROP COLUMN number")
        db.database.execute_sql("CREATE UNIQUE INDEX optout_user_phone ON opt_out (user_phone)")
        db.database.execute_sql(f"INSERT INTO opt_out (user_phone, created_at) VALUES ({db.database.param}, "
                                f"{db.database.param})", ("whatsapp:+15550001111", utcnow()))
        migrations.SchemaVersion.delete().where(migrations.SchemaVersion.version > version).execute()
    assert migrations.upgrade() == (version, len(migrations.MIGRATIONS))
    with db.database.connection_context():
        assert OptOut.get().number is None
        assert OptOut.applies("whatsapp:+15550001111", "") and OptOut.applies("whatsapp:+15550001111", SALES)
        OptOut.insert(user_phone="whatsapp:+15550002222", number="").execute()
        OptOut.insert(user_phone="whatsapp:+15550002222", number=SALES).execute()
        with pytest.raises(IntegrityError), db.database.atomic():
            OptOut.insert(user_phone="whatsapp:+15550002222", number=SALES).execute()
        assert not OptOut.applies("whatsapp:+15550002222", "whatsapp:+15557770002")
