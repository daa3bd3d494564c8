"""The handoff inbox and a waiting customer's conversation in a real headless Chromium (Debian's),
driven by Playwright, on a desktop and on a phone."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from chatbot import auth
from chatbot.handoff import open_handoff
from chatbot.models import Conversation, Handoff, HandoffReason, Message
from tests.support import conversation_for

# The panel's browser journeys' fixtures: one Chromium per module, the app served on a loopback port.
from tests.test_admin_browser import DESKTOP_WIDTH, PASSWORD, PHONE_WIDTH, complaints_of, fits_the_viewport, sign_in
from tests.test_admin_browser import browser as browser
from tests.test_admin_browser import live_url as live_url
from tests.test_admin_browser import page as page

SENDER = "whatsapp:+15550004321"


def long_wait_for_a_person() -> Handoff:
    """A customer with fourteen messages behind them, the last asking for a person."""
    conversation = conversation_for(SENDER, "Ann")
    for turn in range(7):
        Message.create(conversation=conversation, role="user", status="answered",
                       content=f"Question {turn}: " + "tell me more about my order " * 4)
        Message.create(conversation=conversation, role="assistant", status="sent",
                       content=f"Answer {turn}: " + "here is what I know about it " * 5)
    question = Message.create(conversation=conversation, role="user", status="waiting",
                              content="I want to talk to a person please")
    return open_handoff(None, conversation, question, HandoffReason.CUSTOMER_REQUEST, "phrase", "wants a refund")


@pytest.mark.parametrize("size", [{"width": DESKTOP_WIDTH, "height": 800}, {"width": PHONE_WIDTH, "height": 844}],
                         ids=["desktop", "phone"])
def test_operator_answers_a_waiting_customer_from_the_inbox(page, live_url, size):
    auth.create_or_reset_admin("ops", PASSWORD)
    handoff = long_wait_for_a_person()
    complaints = complaints_of(page)
    page.set_viewport_size(size)
    sign_in(page, live_url)

    page.goto(f"{live_url}/admin/inbox/")
    card = page.locator(f"#handoff-{handoff.id}")
    expect(card.locator(".handoff-customer")).to_have_text("Ann")
    expect(card.locator(".handoff-phone")).to_have_text("whatsapp:+1555•••4321")
    expect(card.locator(".handoff-last")).to_contain_text("I want to talk to a person please")
    assert fits_the_viewport(page), f"the inbox is wider than {size['width']} px"

    card.locator(".open-conversation").click()
    expect(page.locator("#handoff-banner")).to_contain_text("wants a refund")
    # It opens at the newest message with the reply box in view, without scrolling.
    expect(page.locator("#reply")).to_be_in_viewport()
    expect(page.locator("#transcript .message-content").last).to_have_text("I want to talk to a person please")
    expect(page.locator("#transcript .message-content").last).to_be_in_viewport()
    assert fits_the_viewport(page), f"the conversation is wider than {size['width']} px"

    # The customer writes again: the message shows up without a reload, its number masked.
    Message.create(conversation=handoff.conversation_id, role="user", status="waiting",
                   content="Are you there? Call me on +15550008888")
    arrived = page.locator("#transcript .message-new .message-content")
    expect(arrived).to_have_text("Are you there? Call me on +1555•••8888")
    expect(arrived).to_be_in_viewport()

    page.click("#claim")
    expect(page.locator(".alert-success")).to_contain_text("Claimed: the customer is yours to answer.")
    # Back at the chat: what came of it, the newest messages and the reply box, all in view.
    expect(page.locator(".alert-success")).to_be_in_viewport()
    expect(page.locator("#reply")).to_be_in_viewport()
    expect(page.locator("#handoff-banner .handoff-claimed")).to_contain_text("Claimed by ops")
    assert Handoff.get_by_id(handoff.id).claimed_by == "ops"

    page.click("#resolve")
    expect(page.locator(".alert-success")).to_contain_text("Resolved")
    expect(page.locator("#handoff-banner")).to_have_count(0)
    expect(page.locator("#transcript .handoff-resolved")).to_contain_text("Resolved by ops")
    assert Conversation.get_by_id(handoff.conversation_id).paused_at is None
    page.goto(f"{live_url}/admin/inbox/")
    expect(page.locator("#inbox-empty")).to_be_visible()
    assert complaints == []
