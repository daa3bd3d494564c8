"""The admin's Numbers page, and the conversation list and dashboard narrowed to one number, over HTTP."""
from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest

from chatbot.models import AIConfiguration, Conversation, Message, WebhookLog, WhatsAppNumber, utcnow
from chatbot.numbers import SWITCHED_OFF
from tests.conftest import csrf_token
from tests.support import BOT_NUMBER

SECOND = "whatsapp:+14155550100"
TEMPLATE = "HX" + "0123456789abcdef" * 2


def form(client, path: str, **fields) -> dict:
    """A number form as the browser posts it: every field, the changes given, and the page's CSRF token."""
    values = {"address": SECOND, "label": "Sales", "ai_configuration": "__None", "greeting": "", "template_sid": "",
              "monthly_budget": "", "is_active": "y"}
    values.update(fields)
    return {**{name: value for name, value in values.items() if value is not None},
            "csrf_token": csrf_token(client, path)}


def stored(address: str = SECOND) -> WhatsAppNumber | None:
    return WhatsAppNumber.get_or_none(WhatsAppNumber.address == address)


def test_numbers_pages_need_a_login(client, services):
    for path in ("/admin/whatsappnumber/", "/admin/whatsappnumber/new/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/admin/login/?next=")
    client.post("/admin/whatsappnumber/new/", data={"address": SECOND, "label": "Sales"})
    assert WhatsAppNumber.select().count() == 0


def test_list_explains_the_default_number(operator):
    page = operator.get("/admin/whatsappnumber/").get_data(as_text=True)
    assert f"<code>{BOT_NUMBER}</code> (TWILIO_WHATSAPP_NUMBER), answers without being listed" in page


def test_creating_a_number_stores_it_and_the_assistant_answers_there_at_once(operator, services):
    support = AIConfiguration.create(name="support", model_name="openai/gpt-4o")
    assert services.numbers.for_recipient(SECOND) is None
    page = operator.get("/admin/whatsappnumber/new/").get_data(as_text=True)
    assert f'<option value="{support.id}">support</option>' in page and "The active configuration" in page

    response = operator.post("/admin/whatsappnumber/new/", data=form(
        operator, "/admin/whatsappnumber/new/", address="+14155550100", label="Sales",
        ai_configuration=str(support.id), greeting="Welcome to sales!", template_sid=f" {TEMPLATE} ",
        monthly_budget="25.5"))

    assert response.status_code == 302
    number = stored()
    assert (number.label, number.ai_configuration_id, number.greeting, number.template_sid, number.monthly_budget,
            number.is_active) == ("Sales", support.id, "Welcome to sales!", TEMPLATE, 25.5, True)
    assert services.numbers.for_recipient(SECOND).greeting == "Welcome to sales!"
    listing = operator.get("/admin/whatsappnumber/").get_data(as_text=True)
    assert SECOND in listing and "$25.5" in listing
    assert re.search(r'<td class="col-ai_configuration" data-label="AI configuration">\s*support\s*</td>', listing)


def test_empty_optional_fields_store_none(operator, services):
    operator.post("/admin/whatsappnumber/new/", data=form(operator, "/admin/whatsappnumber/new/"))
    number = stored()
    assert (number.ai_configuration, number.greeting, number.template_sid, number.monthly_budget) == (
        None, "", None, None)


@pytest.mark.parametrize("fields, message", [
    ({"address": "14155550100"}, "Address must be whatsapp:+ followed by an E.164 number"),
    ({"label": "x" * 101}, "Label must be at most 100 characters."),
    ({"greeting": "g" * 1001}, "Greeting must be at most 1000 characters."),
    ({"template_sid": "HX123"}, "Template must be a Twilio Content SID"),
    ({"monthly_budget": "0"}, "Monthly budget must be an amount in USD above 0"),
    ({"monthly_budget": "nan"}, "Monthly budget must be an amount in USD above 0"),
])
def test_invalid_values_are_shown_on_the_form_and_nothing_is_stored(operator, fields, message):
    response = operator.post("/admin/whatsappnumber/new/", data=form(operator, "/admin/whatsappnumber/new/",
                                                                     **fields))
    assert response.status_code == 200
    assert message in response.get_data(as_text=True)
    assert WhatsAppNumber.select().count() == 0


@pytest.mark.postgres
def test_an_address_taken_already_is_refused(operator):
    WhatsAppNumber.create(address=SECOND, label="Sales")
    response = operator.post("/admin/whatsappnumber/new/", data=form(operator, "/admin/whatsappnumber/new/",
                                                                     label="Other"), follow_redirects=True)
    assert f"{SECOND} is one of the numbers already." in response.get_data(as_text=True)
    assert [number.label for number in WhatsAppNumber.select()] == ["Sales"]


def test_a_post_without_the_csrf_token_stores_nothing(operator):
    fields = form(operator, "/admin/whatsappnumber/new/")
    del fields["csrf_token"]
    response = operator.post("/admin/whatsappnumber/new/", data=fields)
    assert response.status_code == 200
    assert WhatsAppNumber.select().count() == 0


def test_editing_a_number_changes_how_it_answers_at_once(operator, services):
    number = WhatsAppNumber.create(address=SECOND, label="Sales", template_sid=TEMPLATE, monthly_budget=20.0)
    assert services.numbers.for_recipient(SECOND).answers is True
    path = f"/admin/whatsappnumber/edit/?id={number.id}"

    response = operator.post(path, data=form(operator, path, label="Sales EU", is_active=None, template_sid="",
                                             monthly_budget=""))

    assert response.status_code == 302
    changed = stored()
    assert (changed.label, changed.is_active, changed.template_sid, changed.monthly_budget) == (
        "Sales EU", False, None, None)
    assert changed.updated_at > number.updated_at
    assert services.numbers.for_recipient(SECOND).answers is False


@pytest.mark.postgres
def test_the_active_field_says_what_happens_to_a_switched_off_numbers_messages(operator, post_webhook):
    number = WhatsAppNumber.create(address=SECOND, label="Sales", is_active=False)
    page = operator.get(f"/admin/whatsappnumber/edit/?id={number.id}").get_data(as_text=True)
    assert html.escape(SWITCHED_OFF, quote=False) in page
    form = post_webhook.message("Anyone there?", To=SECOND)
    entry = WebhookLog.get(WebhookLog.message_sid == form["MessageSid"])
    assert entry.verdict == "number_inactive" and "Anyone+there" in entry.body
    assert Message.select().count() == 0 and Conversation.select().count() == 0


def test_deleting_a_number_keeps_its_conversations(operator, services):
    number = WhatsAppNumber.create(address=SECOND, label="Sales")
    Conversation.create(user_phone="whatsapp:+15550001111", number=SECOND)
    assert services.numbers.for_recipient(SECOND) is not None

    response = operator.post("/admin/whatsappnumber/delete/", data={
        "id": number.id, "csrf_token": csrf_token(operator, "/admin/whatsappnumber/")})

    assert response.status_code == 302
    assert stored() is None
    assert Conversation.select().where(Conversation.number == SECOND).count() == 1
    assert services.numbers.for_recipient(SECOND) is None


@pytest.mark.postgres
def test_deleting_the_default_numbers_row_resets_it(operator, services):
    number = WhatsAppNumber.create(address=BOT_NUMBER, label="Support", greeting="Hello!")
    response = operator.post("/admin/whatsappnumber/delete/", data={
        "id": number.id, "csrf_token": csrf_token(operator, "/admin/whatsappnumber/")}, follow_redirects=True)
    assert "it answers with the defaults again" in response.get_data(as_text=True)
    assert services.numbers.for_recipient(BOT_NUMBER).greeting == ""


# --- one number's conversations and figures ----------------------------------------------------

@pytest.fixture
def two_numbers(services):
    """Two senders on the default number, one on Sales; each question answered, with known costs."""
    WhatsAppNumber.create(address=SECOND, label="Sales")
    now = utcnow()
    for name, phone, number, cost, latency in (("Ann", "whatsapp:+15550000001", "", 0.01, 100.0),
                                                ("Bob", "whatsapp:+15550000002", "", 0.02, 300.0),
                                                ("Cyd", "whatsapp:+15550000003", SECOND, 0.5, 2000.0)):
        conversation = Conversation.create(user_phone=phone, number=number, profile_name=name)
        question = Message.create(conversation=conversation, role="user", status="answered", content="Hi",
                                  created_at=now - timedelta(minutes=1))
        Message.create(conversation=conversation, role="assistant", status="sent", content="Hello", reply_to=question,
                       model="openai/gpt-4o-mini", total_tokens=10, latency_ms=latency, cost=cost,
                       created_at=now - timedelta(minutes=1))


def names_listed(page: str) -> list[str]:
    return sorted(re.findall(r"<td[^>]*>\s*(Ann|Bob|Cyd)\s*</td>", page))


def test_conversation_list_shows_each_ones_number(operator, two_numbers):
    page = operator.get("/admin/conversation/").get_data(as_text=True)
    assert re.search(r"<td[^>]*>\s*Sales\s*</td>", page)
    assert len(re.findall(r"<td[^>]*>\s*default\s*</td>", page)) == 2


@pytest.mark.postgres
def test_conversation_list_filters_by_number(operator, two_numbers):
    sales = operator.get("/admin/conversation/", query_string={"flt0_number_equals": SECOND}).get_data(as_text=True)
    assert names_listed(sales) == ["Cyd"]
    default = operator.get("/admin/conversation/?flt0_number_equals=default").get_data(as_text=True)
    assert names_listed(default) == ["Ann", "Bob"]
    # The filter offers every number by its label, the default one as "default".
    assert f'"options": [["default", "default"], ["{SECOND}", "Sales"]]' in default


@pytest.mark.postgres
def test_dashboard_shows_every_number_by_default_and_one_when_chosen(operator, two_numbers):
    every = operator.get("/admin/").get_data(as_text=True)
    sales = operator.get("/admin/", query_string={"number": SECOND}).get_data(as_text=True)
    default = operator.get("/admin/?number=").get_data(as_text=True)

    def tile(page, tile_id):
        return re.search(rf'id="{tile_id}"[^>]*>\s*(.*?)\s*<', page).group(1)

    assert [tile(every, "inbound"), tile(sales, "inbound"), tile(default, "inbound")] == ["3", "1", "2"]
    assert [tile(every, "active-conversations"), tile(sales, "active-conversations"),
            tile(default, "active-conversations")] == ["3", "1", "2"]
    # The AI's median by nearest rank: the 2nd of 100, 300 and 2000 ms; the 1st of 100 and 300.
    assert ["AI 300 ms" in every, "AI 2.0 s" in sales, "AI 100 ms" in default] == [True, True, True]
    assert [tile(every, "spend-month"), tile(sales, "spend-month"), tile(default, "spend-month")] == [
        "$0.5300", "$0.5000", "$0.0300"]
    # The costliest senders are the chosen number's only.
    assert re.findall(r"whatsapp:\+1555•••\d{4}", sales.split('id="top-spenders"')[1]) == ["whatsapp:+1555•••0003"]
    assert len(re.findall(r"whatsapp:\+1555•••\d{4}", default.split('id="top-spenders"')[1])) == 2


def test_dashboard_selector_marks_the_chosen_number(operator, two_numbers):
    sales = operator.get("/admin/", query_string={"number": SECOND}).get_data(as_text=True)
    selector = sales.split('id="number-selector"')[1].split('id="dashboard"')[0]
    chosen = 'class="btn btn-outline-secondary active" href="/admin/?number=whatsapp:%2B14155550100">Sales</a>'
    assert chosen in selector
    assert 'href="/admin/?number=">default</a>' in selector
    assert 'href="/admin/">All numbers</a>' in selector
