"""The dashboard's figures in a real headless Chromium, on a desktop and on a phone: a bar opens its own
hour, the reply-time line breaks where no answer was timed, the playground's spend is marked."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from chatbot import auth
from chatbot.models import utcnow
from tests.support import conversation_for
from tests.test_admin_browser import (
    DESKTOP_WIDTH,
    PASSWORD,
    PHONE_WIDTH,
    complaints_of,
    fits_the_viewport,
    screenshot_folder,
    sign_in,
)

# The panel's browser journeys' fixtures: one Chromium per module, the app served on a loopback port.
from tests.test_admin_browser import browser as browser
from tests.test_admin_browser import live_url as live_url
from tests.test_admin_browser import page as page
from tests.test_dashboard_figures import answered, asked

# Where on the canvas the bar of a dataset's bucket is, and what the reply-time chart was told.
BAR = """([dataset, index]) => {
    const canvas = document.getElementById("chart-outcomes");
    const bar = Chart.getChart(canvas).getDatasetMeta(dataset).data[index];
    const box = canvas.getBoundingClientRect();
    return {x: box.left + bar.x, y: box.top + (bar.y + bar.base) / 2};
}"""
REPLY_LINE = """() => {
    const chart = Chart.getChart(document.getElementById("chart-reply-times"));
    return {spanGaps: chart.options.spanGaps, nulls: chart.data.datasets[0].data.filter((v) => v === null).length};
}"""


@pytest.mark.parametrize("width", [DESKTOP_WIDTH, PHONE_WIDTH], ids=["desktop", "phone"])
def test_a_bar_opens_the_messages_of_its_hour(page, live_url, width):
    auth.create_or_reset_admin("ops", PASSWORD)
    now = utcnow()
    ann = conversation_for("whatsapp:+15550001111", "Ann")
    mine = asked(ann, now - timedelta(hours=3), "answered", "Open on Sunday?")
    answered(mine, took=4, cost=0.01, model="openai/gpt-4o-mini")
    answered(asked(ann, now - timedelta(hours=6), "answered", "Another hour"), took=5)
    answered(asked(conversation_for("playground:ops"), now - timedelta(hours=1), "answered", "trial",
                   origin="playground"), took=2, cost=0.05, model="openai/gpt-4o-mini", origin="playground")
    complaints = complaints_of(page)
    page.set_viewport_size({"width": width, "height": 900})
    sign_in(page, live_url)
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-outcomes'))")

    expect(page.locator("#spend-today")).to_have_text("$0.0600")
    expect(page.locator("#spend-today").locator("xpath=..")).to_contain_text("incl. $0.0500 playground")
    assert page.evaluate(REPLY_LINE) == {"spanGaps": False, "nulls": 22}
    assert fits_the_viewport(page), f"the dashboard is wider than {width} px"
    page.screenshot(path=screenshot_folder() / f"dashboard-figures-{width}.png", full_page=True)

    # The answered bar three hours ago: the answered dataset is the first; the hour the 21st of 24 (the
    # 24th holds now).
    page.locator("#chart-outcomes").scroll_into_view_if_needed()
    spot = page.evaluate(BAR, [0, 20])
    page.mouse.click(spot["x"], spot["y"])
    expect(page).to_have_url(re.compile(r"/admin/message/\?.*flt0_figure_equals=answered"))
    expect(page.locator("table.model-list tbody tr")).to_have_count(1)
    expect(page.locator("table.model-list")).to_contain_text("Open on Sunday?")
    assert complaints == []
