"""The conversation list's Export: admins and owners download the messages of the conversations the list
shows under its filters, senders masked; only an owner reveals them, and that is audited."""
from __future__ import annotations

import csv
import html
import io
import json

import pytest

from chatbot.models import AuditEvent, Conversation, Message, Origin
from chatbot.redact import mask_phone
from chatbot.roles import Role
from tests.support import conversation_for
from tests.test_admin_roles import signed_in_as

EXPORT = "/admin/conversation/export/"
ANN, BOB, CY = "whatsapp:+15550001111", "whatsapp:+15550002222", "whatsapp:+15550003333"
SALES = "whatsapp:+15557770001"
ACTIVE = "flt0_active_equals=1"
DEFAULT_NUMBER = "flt0_number_equals=default"


def talk(conversation: Conversation, question: str) -> None:
    Message.create(conversation=conversation, role="user", content=question, status="answered")
    Message.create(conversation=conversation, role="assistant", content=f"Answer to: {question}", status="sent")


@pytest.fixture
def conversations(services):
    """Ann (active) and Bob (ended) on the default number, Cy (active) on Sales, and a playground trial."""
    talk(conversation_for(ANN, "Ann"), "Hello from Ann")
    bob = conversation_for(BOB, "Bob")
    talk(bob, "Hello from Bob")
    Conversation.update(is_active=False).where(Conversation.id == bob.id).execute()
    talk(Conversation.get_by_id(Conversation.resume_or_start_id(CY, "Cy", number=SALES)), "Hello from Cy")
    Message.create(conversation=conversation_for("playground:admin"), role="user", content="operator trying",
                   status="answered", origin=Origin.PLAYGROUND.value)


def download(client, query: str):
    response = client.get(f"{EXPORT}?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return response


def csv_rows(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def revealed_events() -> list[AuditEvent]:
    return list(AuditEvent.select().where(AuditEvent.action == "export_revealed"))


@pytest.mark.postgres
def test_an_admin_downloads_the_filtered_conversations_as_csv_with_numbers_masked(app, conversations):
    response = download(signed_in_as(app, Role.ADMIN), f"format=csv&{ACTIVE}")

    assert response.is_streamed and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith("attachment; filename=")
    assert response.headers["Content-Disposition"].endswith('.csv"')
    rows = csv_rows(response)
    assert [row["text"] for row in rows] == ["Hello from Ann", "Answer to: Hello from Ann",
                                             "Hello from Cy", "Answer to: Hello from Cy"]
    assert {row["sender"] for row in rows} == {mask_phone(ANN), mask_phone(CY)}
    body = response.get_data(as_text=True)
    assert "15550001111" not in body and "15550003333" not in body
    assert revealed_events() == []


def test_the_number_filter_and_search_carry_into_a_json_download(app, conversations):
    admin = signed_in_as(app, Role.ADMIN)
    response = download(admin, f"format=json&{DEFAULT_NUMBER}")
    assert response.mimetype == "application/json"
    assert [row["text"] for row in json.loads(response.get_data(as_text=True))] == [
        "Hello from Ann", "Answer to: Hello from Ann", "Hello from Bob", "Answer to: Hello from Bob"]
    searched = json.loads(download(admin, "format=json&search=Bob").get_data(as_text=True))
    assert {row["sender"] for row in searched} == {mask_phone(BOB)}


def test_the_list_offers_the_export_with_its_current_filters(app, conversations):
    page = html.unescape(signed_in_as(app, Role.ADMIN).get(f"/admin/conversation/?{ACTIVE}&search=Ann")
                         .get_data(as_text=True))
    assert f'action="{EXPORT}"' in page
    assert '<input type="hidden" name="flt0_active_equals" value="1">' in page
    assert '<input type="hidden" name="search" value="Ann">' in page
    assert 'name="format" value="csv"' in page and 'name="format" value="json"' in page
    assert 'name="reveal"' not in page
    owner_page = signed_in_as(app, Role.OWNER).get("/admin/conversation/").get_data(as_text=True)
    assert 'name="reveal" value="1"' in owner_page
    assert 'id="export-messages"' not in signed_in_as(app, Role.AGENT).get("/admin/conversation/").get_data(
        as_text=True)


@pytest.mark.parametrize("role", [Role.VIEWER, Role.AGENT], ids=str)
def test_viewers_and_agents_may_not_export(app, conversations, role):
    response = signed_in_as(app, role).get(f"{EXPORT}?format=csv")
    assert response.status_code == 403
    assert "Hello from Ann" not in response.get_data(as_text=True)


def test_an_owner_reveals_whole_numbers_and_the_reveal_is_audited(app, conversations):
    owner = signed_in_as(app, Role.OWNER)
    assert {row["sender"] for row in csv_rows(download(owner, f"format=csv&{DEFAULT_NUMBER}"))} == {
        mask_phone(ANN), mask_phone(BOB)}
    assert revealed_events() == []

    rows = csv_rows(download(owner, f"format=csv&{DEFAULT_NUMBER}&reveal=1"))
    assert {row["sender"] for row in rows} == {ANN, BOB}
    event, = revealed_events()
    assert event.actor == "owner" and event.address
    assert "format=csv" in event.detail and "flt0_number_equals=default" in event.detail


def test_an_admin_asking_for_whole_numbers_is_refused(app, conversations):
    response = signed_in_as(app, Role.ADMIN).get(f"{EXPORT}?format=csv&reveal=1")
    assert response.status_code == 403
    assert "15550001111" not in response.get_data(as_text=True)
    assert revealed_events() == []


def test_an_unknown_format_is_not_found(app, conversations):
    assert signed_in_as(app, Role.ADMIN).get(f"{EXPORT}?format=xlsx").status_code == 404
