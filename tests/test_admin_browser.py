"""The admin panel in a real headless Chromium (Debian's), driven by Playwright."""
from __future__ import annotations

import dataclasses
import re
import threading

import pytest
from playwright.sync_api import expect, sync_playwright
from werkzeug.serving import make_server

from chatbot import auth, create_app
from chatbot.models import AIConfiguration, Message
from tests.support import conversation_for

CHROMIUM = "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's services, which this network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "browser test password"
XSS = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def live_url(services):
    """The app served over real HTTP on a free loopback port (plain http, as on a laptop)."""
    local = dataclasses.replace(services, config=services.config.replace(public_base_url=""))
    server = make_server("127.0.0.1", 0, create_app(services=local), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_operator_journey_through_the_panel(page, live_url, services, run_jobs, fake_twilio, fake_openrouter):
    auth.create_or_reset_admin("ops", PASSWORD)
    conversation = conversation_for("whatsapp:+15550009876", "Mallory")
    Message.create(conversation=conversation, role="user", status="answered", content=XSS)

    # Anonymous: sent to the login page.
    page.goto(f"{live_url}/admin/conversation/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=(/|%2F)admin(/|%2F)conversation"))
    page.fill("#username", "ops")
    page.fill("#password", "wrong password")
    page.click("#login")
    expect(page.locator("#login-error")).to_have_text("Wrong username or password.")
    page.fill("#username", "ops")
    page.fill("#password", PASSWORD)
    page.click("#login")
    expect(page).to_have_url(f"{live_url}/admin/conversation/")

    # Create a configuration with a key; the list shows it masked, never in full.
    page.goto(f"{live_url}/admin/aiconfiguration/new/")
    page.fill("#name", "claude")
    page.fill("#model_name", "anthropic/claude-3.5-sonnet")
    page.fill("#max_tokens", "300")
    page.fill("#temperature", "0.4")
    page.fill("#api_key", "sk-or-v1-browser-secret-7f3e")
    page.click("input[type=submit][value='Save']")
    expect(page.locator("table.model-list")).to_contain_text("sk-or-…7f3e")
    assert "browser-secret" not in page.content()

    # Activate it with the list action.
    page.check("input.action-checkbox")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("a.dropdown-toggle:has-text('With selected')")
    page.click("a:has-text('Activate')")
    expect(page.locator(".alert-success")).to_contain_text("claude is now the active AI configuration.")
    assert AIConfiguration.active().name == "claude"

    # The transcript shows what the user typed as text; no script ran.
    page.goto(f"{live_url}/admin/conversation/details/?id={conversation.id}")
    expect(page.locator("#transcript .message-user .message-content")).to_have_text(XSS)
    assert page.title() != "pwned"
    expect(page.locator("h2")).to_contain_text("whatsapp:+1555•••9876")

    # Take the conversation over, reply by hand, see the reply reach WhatsApp, hand back.
    page.click("#take-over")
    expect(page.locator("#takeover")).to_contain_text("Taken over by ops")
    page.fill("#operator-reply textarea", "A person here: how can I help?")
    page.click("#send-reply")
    expect(page.locator(".alert-success")).to_contain_text("Reply queued for sending.")
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == ["A person here: how can I help?"]
    page.reload()
    expect(page.locator("#transcript .operator-marker")).to_have_text("written by ops")
    page.click("#hand-back")
    expect(page.locator("#take-over")).to_be_visible()

    # Try the configuration in the playground: the AI answers there, nothing more goes to WhatsApp.
    page.goto(f"{live_url}/admin/playground/")
    page.select_option("#configuration", value=str(AIConfiguration.get(AIConfiguration.name == "claude").id))
    page.fill("#playground-text", "Testing the new prompt")
    page.click("#playground-send")
    expect(page.locator("#transcript .message-assistant .message-content")).to_have_text(
        "Answer to: Testing the new prompt")
    assert fake_openrouter.completions[-1].body["model"] == "anthropic/claude-3.5-sonnet"
    assert len(fake_twilio.sent) == 1

    # Log out: the panel is closed again.
    page.click("#logout")
    expect(page).to_have_url(f"{live_url}/admin/login/")
    page.goto(f"{live_url}/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=(/|%2F)admin(/|%2F)$"))
