"""Removing an opt-out (Opted out in the admin) asks first, naming whom the bot may message again, and
is written to the audit log."""
from __future__ import annotations

import html

import pytest

from chatbot.models import AuditEvent, OptOut, WhatsAppNumber
from tests.conftest import csrf_token

ADA, BOB = "whatsapp:+15550001111", "whatsapp:+15550002222"
SALES = "whatsapp:+15550009000"


@pytest.fixture
def opted_out(services):
    WhatsAppNumber.create(address=SALES, label="Sales")
    return OptOut.create(user_phone=ADA, number=SALES), OptOut.create(user_phone=BOB, number="")


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def test_remove_asks_first_naming_the_customer_and_the_number_then_audits_it(operator, opted_out):
    ada, bob = opted_out
    listing = text_of(operator.get("/admin/optout/"))
    assert f"/admin/optout/remove/confirm/?id={ada.id}" in listing

    page = text_of(operator.get(f"/admin/optout/remove/confirm/?id={ada.id}"))
    assert "Let the bot message whatsapp:+1555•••1111 again?" in page
    assert "This person wrote STOP to the number named below" in page and "as if they had written START" in page
    assert '<td class="remove-number">Sales</td>' in page
    assert "+15550001111" not in page
    assert OptOut.select().count() == 2  # asking removed nothing

    token = csrf_token(operator, f"/admin/optout/remove/confirm/?id={ada.id}")
    response = operator.post("/admin/optout/remove/confirmed/", data={"csrf_token": token, "id": ada.id})

    assert response.status_code == 302
    assert [row.user_phone for row in OptOut.select()] == [BOB]
    event = AuditEvent.get(AuditEvent.action == "opt_out_removed")
    assert (event.actor, event.target) == ("ops", "whatsapp:+1555•••1111")
    assert event.detail.startswith("number Sales; opted out at ")
    assert "Removed 1 opt-out(s): the bot may message them again." in text_of(operator.get("/admin/optout/"))
    # One row for the removal, not a second generic one for the same request.
    assert AuditEvent.select().where(AuditEvent.action.contains("optout")).count() == 0


def test_flask_admins_one_click_delete_only_leads_to_the_question(operator, opted_out):
    ada, _ = opted_out
    token = csrf_token(operator, "/admin/optout/")
    response = operator.post("/admin/optout/delete/", data={"csrf_token": token, "id": ada.id})

    assert response.status_code == 302 and f"/admin/optout/remove/confirm/?id={ada.id}" in response.location
    assert OptOut.select().count() == 2
    assert AuditEvent.select().count() == 1  # the login: a question changes nothing


def test_removing_several_names_each_and_removes_them_all(operator, opted_out):
    ids = [row.id for row in opted_out]
    token = csrf_token(operator, "/admin/optout/")
    asked = operator.post("/admin/optout/action/", data={"csrf_token": token, "action": "delete", "rowid": ids})
    page = text_of(operator.get(asked.location))

    assert "Let the bot message these people again?" in page
    assert "whatsapp:+1555•••1111" in page and "whatsapp:+1555•••2222" in page and "Sales" in page
    operator.post("/admin/optout/remove/confirmed/", data={"csrf_token": token, "id": ids})
    assert OptOut.select().count() == 0
    assert AuditEvent.select().where(AuditEvent.action == "opt_out_removed").count() == 2


def test_an_expired_form_removes_nothing(operator, opted_out):
    ada, _ = opted_out
    response = operator.post("/admin/optout/remove/confirmed/", data={"id": ada.id}, follow_redirects=True)

    assert "The request expired; please try again." in text_of(response)
    assert OptOut.select().count() == 2
    assert AuditEvent.select().where(AuditEvent.action == "opt_out_removed").count() == 0


def test_asking_about_an_opt_out_removed_meanwhile_says_so(operator, opted_out):
    response = operator.get("/admin/optout/remove/confirm/?id=999", follow_redirects=True)
    assert "Those opt-outs are gone already." in text_of(response)
