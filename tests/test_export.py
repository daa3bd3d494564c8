"""flask conversations export: every WhatsApp message, through the webhook and a real worker, as CSV,
JSON and JSON lines; senders masked unless revealed (and audited); filtered by day, moment and number."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from chatbot import exports
from chatbot.models import AuditEvent, Conversation, Message, Origin, Rating, WhatsAppNumber
from chatbot.redact import mask_phone
from tests.support import BOT_NUMBER, conversation_for

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"
SALES = "whatsapp:+15557770001"
FORMULA = '=HYPERLINK("http://evil","x")'
# Stored (naive UTC) times moved to fixed days, so no test depends on today: in Paris (UTC+1 in
# March), Ada wrote on 1 March at 09:30, Bob on 3 March at 00:30 (2 March in UTC), Ada to Sales on 5 March.
ADA_AT = datetime(2026, 3, 1, 8, 30)
BOB_AT = datetime(2026, 3, 2, 23, 30)
SALES_AT = datetime(2026, 3, 5, 12, 0)


@pytest.fixture
def env(env):
    return {**env, "ADMIN_TIMEZONE": "Europe/Paris"}


def moved_to(conversation: Conversation, moment: datetime) -> None:
    """Give the conversation's messages times from `moment` on, five seconds apart, in id order."""
    for step, message in enumerate(conversation.messages.order_by(Message.id)):
        Message.update(created_at=moment + timedelta(seconds=5 * step)).where(Message.id == message.id).execute()


@pytest.fixture
def traffic(services, post_webhook, run_jobs):
    """Ada and Bob on the default number (Bob's message a spreadsheet formula, his conversation rated
    4), Ada on Sales too, each answered by the worker; and a console and a playground line."""
    WhatsAppNumber.create(address=SALES, label="Sales")
    post_webhook.message("Hello there", sender=ADA)
    run_jobs()
    post_webhook.message(FORMULA, sender=BOB)
    run_jobs()
    post_webhook.message("Anything on sale?", sender=ADA, To=SALES)
    run_jobs()
    ada = Conversation.get(Conversation.user_phone == ADA, Conversation.number == "")
    bob = Conversation.get(Conversation.user_phone == BOB)
    sales = Conversation.get(Conversation.number == SALES)
    moved_to(ada, ADA_AT)
    moved_to(bob, BOB_AT)
    moved_to(sales, SALES_AT)
    Rating.create(conversation=bob, score=4)
    for phone, origin in (("console:local", Origin.CONSOLE), ("playground:ops", Origin.PLAYGROUND)):
        Message.create(conversation=conversation_for(phone), role="user", content="operator trying",
                       status="answered", origin=origin.value)
    return SimpleNamespace(ada=ada, bob=bob, sales=sales)


def export(cli, *options: str):
    result = cli("conversations", "export", *options)
    assert result.exit_code == 0, result.output
    return result.stdout


def csv_rows(cli, *options: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(export(cli, "--format", "csv", *options))))


def texts(rows: list[dict]) -> list[str]:
    return [row["text"] for row in rows]


def whatsapp_messages() -> list[Message]:
    return list(Message.select().join(Conversation).where(Conversation.user_phone.in_([ADA, BOB]))
                .order_by(Message.id))


@pytest.mark.postgres
def test_export_holds_every_whatsapp_message_with_senders_masked_in_each_format(cli, traffic):
    stored = whatsapp_messages()
    assert len(stored) == 6 and {message.role for message in stored} == {"user", "assistant"}
    text = export(cli, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))

    assert list(rows[0]) == list(exports.COLUMNS)
    assert [(row["conversation"], row["role"], row["status"]) for row in rows] == [
        (str(message.conversation_id), message.role, message.status) for message in stored]
    # The spreadsheet formula is text; the one-character ' in front is all that changed.
    assert texts(rows) == ["'" + message.content if message.content == FORMULA else message.content
                           for message in stored]
    assert "'" + FORMULA in texts(rows)
    assert "operator trying" not in text
    assert "15550001111" not in text and "15550002222" not in text
    assert {row["sender"] for row in rows} == {mask_phone(ADA), mask_phone(BOB)}
    assert [row["number"] for row in rows] == [BOT_NUMBER] * 4 + [SALES] * 2
    assert rows[0]["time"] == "2026-03-01T09:30:00+01:00"
    assert rows[2]["time"] == "2026-03-03T00:30:00+01:00"
    assert [row["rating"] for row in rows] == ["", "", "4", "4", "", ""]
    answer = stored[1]
    assert answer.role == "assistant" and answer.total_tokens and answer.model
    assert (rows[1]["model"], rows[1]["tokens"], float(rows[1]["cost"])) == (
        answer.model, str(answer.total_tokens), answer.cost)

    document = json.loads(export(cli, "--format", "json"))
    assert [list(row) for row in document] == [list(exports.COLUMNS)] * 6
    assert [row["text"] for row in document] == [message.content for message in stored]
    assert [(row["conversation"], row["time"], row["sender"], row["number"]) for row in document] == [
        (row["conversation"], row["time"], row["sender"], row["number"]) for row in rows]
    assert [row["rating"] for row in document] == [None, None, 4, 4, None, None]
    assert (document[1]["tokens"], document[1]["cost"]) == (answer.total_tokens, answer.cost)

    lines = export(cli, "--format", "jsonl").splitlines()
    assert [json.loads(line) for line in lines] == document
    assert AuditEvent.select().count() == 0


def test_reveal_shows_whole_numbers_and_is_audited(cli, traffic):
    text = export(cli, "--reveal", "--number", BOT_NUMBER)
    assert {row["sender"] for row in csv.DictReader(io.StringIO(text))} == {ADA, BOB}
    event = AuditEvent.get()
    assert (event.action, event.actor, event.address) == ("export_revealed", "cli", "cli")
    assert "format=csv" in event.detail and "15550001111" not in event.detail


def test_days_are_the_business_time_zones_and_until_includes_its_day(cli, traffic):
    # Bob wrote at 23:30 UTC on 2 March: 3 March in Paris.
    assert texts(csv_rows(cli, "--since", "2026-03-02", "--until", "2026-03-02")) == []
    bob = texts(csv_rows(cli, "--since", "2026-03-03", "--until", "2026-03-03"))
    assert len(bob) == 2 and bob[0] == "'" + FORMULA
    assert texts(csv_rows(cli, "--until", "2026-03-01")) == ["Hello there", "Answer to: Hello there"]
    assert len(csv_rows(cli, "--since", "2026-03-04")) == 2


def test_moments_bound_the_export_at_both_ends_inclusive(cli, traffic):
    rows = csv_rows(cli, "--since", "2026-03-01T09:30:00+01:00", "--until", "2026-03-02T23:30:00Z")
    # Ada's two messages from 08:30:00 UTC on; Bob's first at 23:30:00 exactly, his answer five seconds later not.
    assert texts(rows) == ["Hello there", "Answer to: Hello there", "'" + FORMULA]
    # A moment without an offset is in ADMIN_TIMEZONE.
    assert len(csv_rows(cli, "--since", "2026-03-01T09:30:05")) == 5


def test_number_keeps_one_business_numbers_conversations(cli, traffic):
    assert texts(csv_rows(cli, "--number", SALES)) == ["Anything on sale?", "Answer to: Anything on sale?"]
    default = csv_rows(cli, "--number", BOT_NUMBER)
    assert len(default) == 4 and {row["number"] for row in default} == {BOT_NUMBER}


@pytest.mark.parametrize("options, complaint", [
    (("--since", "yesterday"), "'yesterday' is neither a day (YYYY-MM-DD) nor an ISO 8601 date and time"),
    (("--until", "2026-02-30"), "'2026-02-30' is neither a day"),
    (("--since", "2026-03-02", "--until", "2026-03-01"), "2026-03-01 is before 2026-03-02"),
    (("--number", "sales"), "'sales' is not whatsapp:+ and an E.164 number"),
], ids=["word", "no-such-day", "backwards", "number"])
def test_a_bad_option_exits_2_saying_what_is_wrong(cli, services, options, complaint):
    result = cli("conversations", "export", *options)
    assert result.exit_code == 2
    assert complaint in result.output


def test_csv_neutralises_every_cell_a_spreadsheet_would_run():
    assert [exports.inert(cell) for cell in ("=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "1-1", "", None, 4)] == [
        "'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx", "1-1", "", "", 4]


def test_an_empty_export_is_still_a_valid_document(cli, services):
    assert export(cli, "--format", "csv").splitlines() == [",".join(exports.COLUMNS)]
    assert json.loads(export(cli, "--format", "json")) == []
    assert export(cli, "--format", "jsonl") == ""


def test_a_long_export_is_read_page_by_page_in_id_order(services, monkeypatch):
    monkeypatch.setattr(exports, "PAGE_SIZE", 3)
    conversation = conversation_for(ADA)
    Message.insert_many([{"conversation": conversation.id, "role": "user", "content": f"line {n}",
                          "status": "answered"} for n in range(10)]).execute()
    pages = []
    original = exports._page
    monkeypatch.setattr(exports, "_page", lambda scope, after_id: pages.append(after_id) or original(scope, after_id))
    scope = exports.Scope(zone=exports.ZoneInfo("UTC"), default_number=BOT_NUMBER)
    assert [row["text"] for row in exports.rows(scope)] == [f"line {n}" for n in range(10)]
    assert len(pages) == 4 and pages[0] == 0 and pages == sorted(pages)
