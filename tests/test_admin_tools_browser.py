"""The Tools page in a real headless Chromium (Debian's), driven by Playwright."""
from __future__ import annotations

import json

from playwright.sync_api import expect

from chatbot import auth
from chatbot.models import AIConfiguration, Tool

# The panel's browser journeys' fixtures: one Chromium per module, the app served on a loopback port.
from tests.test_admin_browser import PASSWORD, complaints_of, sign_in
from tests.test_admin_browser import browser as browser
from tests.test_admin_browser import live_url as live_url
from tests.test_admin_browser import page as page
from tests.test_admin_tools import NOWHERE, ORDER_PARAMETERS


def test_admin_adds_a_tool_through_the_form_and_sees_it_listed(page, live_url, services):
    auth.create_or_reset_admin("ops", PASSWORD)
    main = AIConfiguration.create(name="Main", provider="openrouter", model_name="openai/gpt-4o-mini")
    complaints = complaints_of(page)
    sign_in(page, live_url)

    page.click("a.nav-link:has-text('Tools')")
    expect(page).to_have_url(f"{live_url}/admin/tools/")
    expect(page.locator("#no-tools")).to_be_visible()
    page.fill("#tool-name", "order_status")
    page.fill("#tool-url", NOWHERE)
    page.fill("#tool-description", "The status of an order, by its id.")
    page.fill("#tool-parameters", json.dumps(ORDER_PARAMETERS))
    page.select_option("#tool-auth", "header")
    page.fill("#tool-auth-header", "X-Api-Key")
    page.fill("#tool-secret", "browser-secret-41d2")
    page.fill("#tool-timeout", "4")
    page.check("#tool-risk-confirm")
    page.check(f"#tool-configuration-{main.id}")
    page.click("#save-tool")

    expect(page.locator(".alert-success")).to_contain_text("order_status: saved.")
    tool = Tool.get(Tool.name == "order_status")
    row = page.locator(f"#tool-{tool.id}")
    expect(row.locator(".tool-name")).to_have_text("order_status")
    expect(row.locator(".tool-url")).to_have_text(NOWHERE)
    expect(row.locator(".tool-risk")).to_have_text("confirm")
    expect(row.locator(".tool-auth")).to_contain_text("X-Api-Key")
    expect(row.locator(".tool-offered")).to_have_text("Main")
    assert (tool.auth, tool.risk, tool.timeout, tool.ai_configurations) == ("header", "confirm", 4.0, [main.id])
    assert services.cipher.decrypt(tool.secret_encrypted) == "browser-secret-41d2"
    assert "browser-secret-41d2" not in page.content()
    assert complaints == []
