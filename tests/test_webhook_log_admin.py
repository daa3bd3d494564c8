"""The webhook log in the panel: the verdict at a glance, who sent it (masked), and a detail page that
decodes the request and says which URL a refused signature was checked against."""
from __future__ import annotations

import re

import pytest

from chatbot.admin.webhook_log import webhook_fields
from chatbot.models import WebhookLog
from tests.conftest import csrf_token, inbound_form

ADA = "whatsapp:+15550001111"
ADA_DIGITS = "15550001111"


def page(client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, path
    return response.get_data(as_text=True)


def reveal_phones(client) -> None:
    token = csrf_token(client, "/admin/conversation/")
    client.post("/admin/conversation/reveal/", data={"csrf_token": token, "next": "/admin/conversation/"})


@pytest.mark.postgres
def test_the_list_shows_each_verdict_and_filters_by_it(operator, post_webhook):
    form = post_webhook.message("twice", sender=ADA)
    post_webhook(form)
    post_webhook(inbound_form("forged"), signature="forged")

    listing = page(operator, "/admin/webhooklog/")
    assert 'badge-success">allowed<' in listing
    assert 'badge-secondary">duplicate<' in listing
    assert 'badge-danger">bad_signature<' in listing
    # The drop-down offers the verdicts the log holds.
    for verdict in ("allowed", "bad_signature", "duplicate"):
        assert f'["{verdict}", "{verdict}"]' in listing

    duplicates = page(operator, "/admin/webhooklog/?flt0_verdict_equals=duplicate")
    assert 'badge-secondary">duplicate<' in duplicates
    assert ">allowed<" not in duplicates and ">bad_signature<" not in duplicates
    assert duplicates.count(form["MessageSid"]) == 1


@pytest.mark.postgres
def test_the_status_filter_is_a_drop_down_of_the_logged_statuses(operator, post_webhook):
    accepted = post_webhook.message("fine")
    post_webhook(inbound_form("forged"), signature="forged")

    listing = page(operator, "/admin/webhooklog/")
    assert '["200", "200"]' in listing and '["403", "403"]' in listing
    refused = page(operator, "/admin/webhooklog/?flt0_status_equals=403")
    assert ">bad_signature<" in refused and accepted["MessageSid"] not in refused


def test_the_list_shows_the_masked_sender_instead_of_method_and_path(operator, post_webhook):
    post_webhook.message("hello", sender=ADA)

    listing = page(operator, "/admin/webhooklog/")
    assert "whatsapp:+1555•••1111" in listing and ADA_DIGITS not in listing
    assert 'class="column-header col-sender"' in listing
    assert "col-method" not in listing and "col-path" not in listing

    reveal_phones(operator)
    assert ADA in page(operator, "/admin/webhooklog/")


def test_the_detail_page_shows_headers_and_body_once_with_the_form_decoded(operator, post_webhook):
    form = post_webhook.message("audit me, please", sender=ADA)
    entry = WebhookLog.get()

    details = page(operator, f"/admin/webhooklog/details/?id={entry.id}")
    assert details.count("application/x-www-form-urlencoded") == 1
    assert details.count("X-Twilio-Signature") == 1 and "[redacted]" in details
    fields = re.search(r'<table[^>]*id="webhook-fields".*?</table>', details, re.S).group(0)
    assert re.search(r'<th scope="row">Body</th><td>audit me, please</td>', fields)
    assert re.search(r'<th scope="row">MessageSid</th><td>' + form["MessageSid"] + "</td>", fields)
    assert 'From</th><td>whatsapp:+1555•••1111</td>' in fields
    assert "audit+me" not in details and ADA_DIGITS not in details

    reveal_phones(operator)
    assert f"From</th><td>{ADA}</td>" in page(operator, f"/admin/webhooklog/details/?id={entry.id}")


def test_a_refused_signature_shows_the_url_it_was_checked_against(operator, post_webhook):
    response = post_webhook(inbound_form("forged"), signature="forged")
    assert response.status_code == 403
    # The client is told why, not how the server sees itself.
    assert "checked against" not in response.get_data(as_text=True)
    entry = WebhookLog.get()
    assert entry.body == ""  # still the compact row of a request nothing shows came from Twilio
    assert "; checked against https://bot.example.com/whatsapp/webhook (body of" in entry.error
    assert entry.checked_url == "https://bot.example.com/whatsapp/webhook"

    details = page(operator, f"/admin/webhooklog/details/?id={entry.id}")
    checked = re.search(r'id="checked-url">.*?<code[^>]*>([^<]*)</code>', details, re.S)
    assert checked.group(1) == "https://bot.example.com/whatsapp/webhook"


def test_the_checked_url_keeps_the_query_string_twilio_signed(operator, client):
    form = inbound_form("forged")
    response = client.post("/whatsapp/webhook?tenant=7", data=form, headers={"X-Twilio-Signature": "forged"})
    assert response.status_code == 403

    details = page(operator, f"/admin/webhooklog/details/?id={WebhookLog.get().id}")
    assert "<code class=\"wrap-anywhere\">https://bot.example.com/whatsapp/webhook?tenant=7</code>" in details


def test_an_accepted_request_shows_no_checked_url(operator, post_webhook):
    post_webhook.message("fine")
    assert 'id="checked-url"' not in page(operator, f"/admin/webhooklog/details/?id={WebhookLog.get().id}")


def test_the_detail_page_wraps_long_text_with_the_panels_own_stylesheet(operator, client, post_webhook):
    post_webhook.message("x" * 1500)
    details = page(operator, f"/admin/webhooklog/details/?id={WebhookLog.get().id}")
    assert 'href="/static/admin/panel.css"' in details and 'class="webhook-entry"' in details
    assert " style=" not in details.split('class="webhook-entry"')[1]

    stylesheet = client.get("/static/admin/panel.css")
    assert stylesheet.status_code == 200 and stylesheet.mimetype == "text/css"
    css = stylesheet.get_data(as_text=True)
    assert ".webhook-entry td" in css and "overflow-wrap: anywhere" in css


def test_the_json_variant_is_decoded_into_fields_too(services):
    entry = WebhookLog(headers={"Content-Type": "application/json"}, body='{"From": "whatsapp:+1", "NumMedia": 0}')
    assert webhook_fields(entry) == [("From", "whatsapp:+1"), ("NumMedia", "0")]
    assert webhook_fields(WebhookLog(headers={"Content-Type": "text/plain"}, body="hello")) is None
