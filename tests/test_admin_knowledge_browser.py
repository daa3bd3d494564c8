"""The Knowledge page in a real headless Chromium (Debian's), driven by Playwright."""
from __future__ import annotations

from playwright.sync_api import expect

from chatbot import auth
from chatbot.models import KnowledgeSource

# The panel's browser journeys' fixtures: one Chromium per module, the app served on a loopback port.
from tests.test_admin_browser import PASSWORD, complaints_of, sign_in
from tests.test_admin_browser import browser as browser
from tests.test_admin_browser import live_url as live_url
from tests.test_admin_browser import page as page
from tests.test_admin_knowledge import REFUNDS, index_job, ready_source, similarity


def test_operator_pastes_a_text_source_and_previews_a_question(page, live_url, services):
    auth.create_or_reset_admin("ops", PASSWORD)
    ready_source(services, "Shop policies", [("Refunds", REFUNDS)])
    complaints = complaints_of(page)
    sign_in(page, live_url)

    page.click("a.nav-link:has-text('Knowledge')")
    expect(page).to_have_url(f"{live_url}/admin/knowledge/")
    page.fill("#text-title", "Delivery")
    page.fill("#text-body", "# Delivery\nParcels arrive within two days.")
    page.click("#add-text-submit")
    expect(page.locator(".alert-success")).to_contain_text("Delivery: added, waiting for the worker to index it.")
    source = KnowledgeSource.get(KnowledgeSource.title == "Delivery")
    row = page.locator(f"#source-{source.id}")
    expect(row.locator(".source-status")).to_have_text("waiting")
    expect(row.locator(".source-kind")).to_have_text("text")
    assert index_job(source) in services.queue.get_job_ids()

    question = "How many days do refunds take?"
    page.fill("#search-question", question)
    page.click("#search-submit")
    passages = page.locator("#search-passages tr.found-passage")
    expect(passages).to_have_count(1)
    expect(passages.locator(".passage-title")).to_have_text("Shop policies")
    expect(passages.locator(".passage-score")).to_have_text(f"{similarity(question, REFUNDS):.3f}")
    expect(page.locator("#search-question")).to_have_value(question)
    assert complaints == []
