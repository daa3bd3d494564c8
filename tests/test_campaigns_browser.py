"""The Campaigns pages in a real headless Chromium (Debian's), driven by Playwright, on a desk and a phone."""
from __future__ import annotations

from playwright.sync_api import expect

from chatbot import auth
from chatbot.models import Campaign

# The panel's browser journeys' fixtures: one Chromium per module, the app served on a loopback port.
from tests.test_admin_browser import (
    CHARTS_DRAWN,
    DESKTOP_WIDTH,
    PASSWORD,
    PHONE_WIDTH,
    complaints_of,
    fits_the_viewport,
    sign_in,
)
from tests.test_admin_browser import browser as browser
from tests.test_admin_browser import live_url as live_url
from tests.test_admin_browser import page as page

SID = "HX" + "5ca1ab1e" * 4


def test_an_admin_creates_sends_and_follows_a_campaign_on_a_desk_and_a_phone(page, live_url, services, run_jobs,
                                                                              tmp_path, fake_twilio):
    auth.create_or_reset_admin("ops", PASSWORD)
    contacts = tmp_path / "spring contacts with a rather long file name for a phone.csv"
    contacts.write_text("phone,first_name\n+15550100001,Ann\n+15550100002,Bob\n+15550100002,Bob again\n")
    complaints = complaints_of(page)
    page.set_viewport_size({"width": DESKTOP_WIDTH, "height": 900})
    sign_in(page, live_url)

    page.click("a.nav-link:has-text('Campaigns')")
    expect(page.locator("#no-campaigns")).to_be_visible()
    page.fill("#campaign-name", "Spring sale")
    page.fill("#campaign-template", SID)
    page.fill("#campaign-text", "Hi {{1}}, spring is here.")
    page.set_input_files("#campaign-file", str(contacts))
    page.click("#create-submit")

    expect(page.locator(".alert-success")).to_contain_text("created as a draft: it will send to 2. Skipped 1: "
                                                           "1 duplicate.")
    expect(page.locator("#campaign-status")).to_have_text("draft")
    page.click("#send-now")
    expect(page.locator(".alert-success")).to_contain_text("is sending.")
    run_jobs()
    page.reload()
    expect(page.locator("#campaign-status")).to_have_text("finished")
    expect(page.locator("#figure-sent")).to_have_text("2")
    assert sorted(send.body["To"] for send in fake_twilio.content_sends) == ["whatsapp:+15550100001",
                                                                              "whatsapp:+15550100002"]

    page.click("a:has-text('← Campaigns')")
    campaign = Campaign.get()
    row = page.locator(f"#campaign-{campaign.id}")
    expect(row.locator(".figure-sent")).to_have_text("2")
    expect(row.locator(".month-count")).to_contain_text("2 in")
    # The link's navigation is not awaited to its load event: wait for the chart's script to have drawn it.
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-campaigns'))")
    drawn = page.evaluate(CHARTS_DRAWN)
    assert [(chart["id"], chart["labels"], chart["painted"], chart["totals"]["sent, no receipt yet"])
            for chart in drawn] == [("chart-campaigns", 1, True, 2)]

    page.set_viewport_size({"width": PHONE_WIDTH, "height": 900})
    for path in ("/admin/campaigns/", f"/admin/campaigns/{campaign.id}/"):
        page.goto(live_url + path)
        # Long names wrap and the wide table scrolls inside itself: the page never scrolls sideways.
        assert fits_the_viewport(page), f"{path} is wider than {PHONE_WIDTH} px"
    assert complaints == []
