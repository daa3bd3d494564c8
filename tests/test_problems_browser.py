"""The Problems page in a real headless Chromium (Debian's), driven by Playwright, on a desktop and on a
phone: a cap reached and grouped failures, each cause's main action in view, no sideways scrolling."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from chatbot import auth
from chatbot.models import Message, Role, Status, WhatsAppNumber, utcnow
from chatbot.stages.budget import Cap
from tests.support import conversation_for

# The panel's browser journeys' fixtures: one Chromium per module, the app served on a loopback port.
from tests.test_admin_browser import (
    DESKTOP_WIDTH,
    PASSWORD,
    PHONE_WIDTH,
    complaints_of,
    fits_the_viewport,
    screenshot_folder,
    sign_in,
)
from tests.test_admin_browser import browser as browser
from tests.test_admin_browser import live_url as live_url
from tests.test_admin_browser import page as page
from tests.test_problem_groups import bad_key_day as bad_key_day

SUPPORT = "whatsapp:+14155550100"


def support_over_its_cap() -> None:
    """Support's $0.15 a month is spent: three customers' messages were refused."""
    WhatsAppNumber.create(address=SUPPORT, label="Support", monthly_budget=0.15)
    for phone, name in (("whatsapp:+15550007001", "Gus"), ("whatsapp:+15550007002", "Hal"),
                        ("whatsapp:+15550007003", "")):
        conversation = conversation_for(phone, name)
        conversation.number = SUPPORT
        conversation.save()
        Message.create(conversation=conversation, role=Role.USER.value, content="Is my order on its way?",
                       status=Status.OVER_BUDGET.value, created_at=utcnow(),
                       metadata={"cap": Cap.NUMBER_MONTHLY.value, "cap_usd": 0.15})


@pytest.mark.parametrize("width", [DESKTOP_WIDTH, PHONE_WIDTH], ids=["desktop", "phone"])
def test_problems_fit_and_keep_each_main_action_in_view(page, live_url, services, bad_key_day, width):
    auth.create_or_reset_admin("ops", PASSWORD)
    support_over_its_cap()
    services.errors.send_admin_alert("budget:monthly:" + SUPPORT, "monthly budget of number Support reached")
    complaints = complaints_of(page)
    page.set_viewport_size({"width": width, "height": 844})
    sign_in(page, live_url)

    page.goto(f"{live_url}/admin/problems/")
    cap = page.locator(".cap-group")
    expect(cap.locator(".cap-name")).to_have_text("Support")
    expect(cap.locator(".cap-refused")).to_have_text("3 messages refused from 3 customers")
    expect(cap.locator(".cap-raise")).to_be_in_viewport()
    # The first cause (six refused keys): its count, its customers and Retry all, without scrolling.
    first = page.locator(".problem-group").first
    expect(first.locator(".group-count")).to_have_text("6")
    expect(first.locator(".retry-all")).to_have_text("Retry all 6")
    expect(first.locator(".retry-all")).to_be_in_viewport()
    expect(first.locator(".group-customers")).to_be_in_viewport()
    assert fits_the_viewport(page), f"Problems is wider than {width} px"
    page.screenshot(path=screenshot_folder() / f"problems-grouped-{width}.png", full_page=True)

    # Bob's failure cannot be fixed by a retry today: dismissed, with the reason.
    bob = page.locator(f"#problem-{bad_key_day['bob'].id}")
    bob.locator(".dismiss summary").click()
    bob.locator(".dismiss-reason").fill("Bob called; answered by phone")
    bob.locator(".dismiss-confirm").click()
    expect(page.locator(".alert-success")).to_contain_text("Dismissed 1 (Bob (whatsapp:+1555•••2222))")
    expect(page.locator(f"#problem-{bad_key_day['bob'].id}")).to_have_count(0)

    page.locator(".retry-all").first.click()
    expect(page.locator(".alert-success")).to_contain_text("Retried 6: Fay (whatsapp:+1555•••0006)")
    expect(page.locator(".alert-success")).to_be_in_viewport()
    assert fits_the_viewport(page)

    # The cap shouts on the dashboard too, and its notice waits, unread, in the menu and on its page.
    page.goto(f"{live_url}/admin/")
    expect(page.locator("#caps-banner")).to_contain_text("Support · Monthly budget of the number, $0.15")
    expect(page.locator("#caps-banner")).to_be_in_viewport()
    page.goto(f"{live_url}/admin/notices/")
    expect(page.locator(".notice-unread .notice-text")).to_have_text("monthly budget of number Support reached")
    page.locator(".read-notice").click()
    expect(page.locator(".notice-unread")).to_have_count(0)
    for name, path in (("notices", "/admin/notices/"), ("spending-caps", "/admin/spending/")):
        page.goto(live_url + path)
        page.screenshot(path=screenshot_folder() / f"{name}-{width}.png", full_page=True)
        assert fits_the_viewport(page), f"{name} is wider than {width} px"
    assert complaints == []
