"""A fresh deployment's dashboard says what is left before WhatsApp customers get answers: the Twilio
settings, an AI key, the two URLs to paste into Twilio (built from PUBLIC_BASE_URL, with a copy
button) and a first message; each step ticks itself, and the card goes once all are done."""
from __future__ import annotations

import html
import re
import threading

import pytest
from playwright.sync_api import expect
from werkzeug.serving import make_server

from chatbot import auth, create_app
from chatbot.models import AIConfiguration, ReplyPart
from tests.conftest import PUBLIC_BASE_URL, log_in
from tests.support import inbound_form
from tests.test_admin_browser import (
    DESKTOP_WIDTH,
    PASSWORD,
    PHONE_WIDTH,
    complaints_of,
    fits_the_viewport,
    screenshot_folder,
)
from tests.test_admin_browser import browser as browser
from tests.test_admin_browser import page as page
from tests.test_delivery_receipts import post_status
from tests.test_webhook_log_admin import page as panel_page

WEBHOOK = PUBLIC_BASE_URL + "/whatsapp/webhook"
STATUS = PUBLIC_BASE_URL + "/whatsapp/status"


def step(dashboard: str, key: str) -> str:
    """The checklist's step `key` as the dashboard shows it ("" when the card is gone)."""
    found = re.search(rf'<li class="first-run-step[^"]*" id="first-run-{key}">(.*?)</li>', dashboard, re.S)
    return html.unescape(found.group(0)) if found else ""


def dashboard_of(client) -> str:
    return panel_page(client, "/admin/")


def signed_in(app):
    client = app.test_client()
    assert log_in(client).status_code == 302
    return client


def test_the_fresh_dashboard_shows_the_urls_to_paste_into_twilio(operator):
    dashboard = dashboard_of(operator)

    assert 'id="first-run"' in dashboard
    webhook, status = step(dashboard, "webhook"), step(dashboard, "status")
    assert f">{WEBHOOK}</code>" in webhook and "When a message comes in" in webhook
    assert f">{STATUS}</code>" in status and "Status callback URL" in status
    assert 'data-copy="first-run-webhook-url"' in dashboard and "/static/admin/copy.js" in dashboard
    # The test deployment has its Twilio settings and an OpenRouter key: those two are ticked.
    assert " done" in step(dashboard, "twilio") and " done" in step(dashboard, "ai")
    assert " done" not in step(dashboard, "first-message") and "Send “Hello”" in step(dashboard, "first-message")


def test_each_step_ticks_as_it_happens_and_the_card_goes_when_all_are_done(operator, client, post_webhook,
                                                                          run_jobs):
    post_webhook.message("Hello")
    dashboard = dashboard_of(operator)
    assert " done" in step(dashboard, "webhook") and " done" in step(dashboard, "first-message")
    assert " done" not in step(dashboard, "status")

    run_jobs()
    assert post_status(client, ReplyPart.get().twilio_sid, "delivered").status_code == 200

    assert 'id="first-run"' not in dashboard_of(operator)


def test_without_public_base_url_it_says_so_and_how_to_set_it(app_with, admin_user):
    dashboard = dashboard_of(signed_in(app_with(public_base_url="")))

    webhook = step(dashboard, "webhook")
    assert "PUBLIC_BASE_URL is not set, so the URL to give Twilio cannot be shown" in webhook
    assert "PUBLIC_BASE_URL=https://my-bot.example.com" in webhook and "<code" not in webhook


def test_a_loopback_public_base_url_is_named_as_one_twilio_cannot_reach(app_with, admin_user):
    dashboard = dashboard_of(signed_in(app_with(public_base_url="http://127.0.0.1:5000")))

    webhook = step(dashboard, "webhook")
    assert ">http://127.0.0.1:5000/whatsapp/webhook</code>" in webhook
    assert "an address on this machine that Twilio cannot reach" in webhook


def test_a_signature_that_does_not_match_is_pointed_out(operator, post_webhook):
    post_webhook(inbound_form("Hello"), signature="forged")

    assert "their signature does not match: PUBLIC_BASE_URL must be exactly the origin" in step(
        dashboard_of(operator), "webhook")


def test_missing_twilio_settings_and_ai_key_are_named_until_set(app_with, admin_user, services):
    client = signed_in(app_with(twilio_account_sid="", twilio_auth_token="", openrouter_api_key=""))

    dashboard = dashboard_of(client)
    assert "Set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN in .env" in step(dashboard, "twilio")
    assert "Set OPENROUTER_API_KEY" in step(dashboard, "ai") and "Add an AI configuration" in step(dashboard, "ai")

    AIConfiguration.create(name="Main", model_name="openai/gpt-4o-mini", is_active=True,
                           api_key_encrypted=services.cipher.encrypt("sk-or-v1-stored"))
    assert " done" in step(dashboard_of(client), "ai")


def test_the_number_switch_offers_no_default_when_no_number_is_set(app_with, admin_user):
    dashboard = dashboard_of(signed_in(app_with(twilio_whatsapp_number="")))

    switch = re.search(r'id="number-selector">.*?</div>\s*</div>', dashboard, re.S).group(0)
    assert "All numbers" in switch and ">default<" not in switch
    assert "Set TWILIO_WHATSAPP_NUMBER in .env" in step(dashboard, "twilio")


def test_the_bare_address_leads_to_the_admin(client, services):
    response = client.get("/")
    assert response.status_code == 302 and response.location.endswith("/admin/")


@pytest.fixture
def live_panel(services):
    """The app over real HTTP on a loopback port, PUBLIC_BASE_URL left as the deployment sets it."""
    server = make_server("127.0.0.1", 0, create_app(services=services), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("width", [DESKTOP_WIDTH, PHONE_WIDTH], ids=["desktop", "phone"])
def test_a_fresh_dashboard_in_a_browser_shows_the_webhook_url_to_copy(page, live_panel, width):
    auth.create_or_reset_admin("ops", PASSWORD)
    complaints = complaints_of(page)
    page.set_viewport_size({"width": width, "height": 900})
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_panel)
    page.goto(live_panel + "/")
    page.fill("#username", "ops")
    page.fill("#password", PASSWORD)
    page.click("#login")

    card = page.locator("#first-run")
    expect(card).to_be_visible()
    expect(page.locator("#first-run-webhook-url")).to_have_text(WEBHOOK)
    expect(page.locator("#first-run-status-url")).to_have_text(STATUS)
    expect(page.locator("#first-run-webhook-url")).to_be_in_viewport()
    page.click("[data-copy=first-run-webhook-url]")
    expect(page.locator("[data-copy=first-run-webhook-url]")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == WEBHOOK
    assert fits_the_viewport(page), f"the dashboard is wider than {width} px"
    card.screenshot(path=screenshot_folder() / f"first-run-{width}.png")
    assert complaints == []
