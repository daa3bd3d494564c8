"""The admin panel in a real headless Chromium (Debian's), driven by Playwright."""
from __future__ import annotations

import dataclasses
import os
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect, sync_playwright
from werkzeug.serving import make_server

from chatbot import auth, create_app
from chatbot.models import AIConfiguration, Message, WebhookLog, utcnow
from tests.conftest import PROJECT_DIR
from tests.support import conversation_for, inbound_form, sign
from tests.test_admin_problems import NO_CREDITS, listed_problems
from tests.test_dashboard_figures import M1, M2, answered, asked

CHROMIUM = "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's services, which this network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "browser test password"
# A user pasting a link that is itself URL-encoded: the logged form body is one unbroken run of %XX.
LONG_LINK = "https://shop.example.com/track?parcel=" + "%F0%9F%93%A6" * 150
PHONE_WIDTH, DESKTOP_WIDTH = 390, 1280
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
    # The menu opens only once Bootstrap's script has bound it: the list is in the DOM before that.
    page.wait_for_load_state("load")
    page.click("a.dropdown-toggle:has-text('With selected')")
    page.click("a.dropdown-item:has-text('Activate')")
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


def screenshot_folder() -> Path:
    """Where the journeys' screenshots go: $TEST_ARTIFACTS_DIR/screenshots, else test-artifacts/ in the project."""
    folder = Path(os.environ.get("TEST_ARTIFACTS_DIR") or PROJECT_DIR / "test-artifacts") / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sign_in(page, live_url: str) -> None:
    page.goto(f"{live_url}/admin/login/")
    page.fill("#username", "ops")
    page.fill("#password", PASSWORD)
    page.click("#login")
    expect(page).to_have_url(f"{live_url}/admin/")


def complaints_of(page) -> list[str]:
    """Collect the page's console errors, uncaught exceptions and Content-Security-Policy violations,
    across navigations, into the list returned."""
    complaints = []
    page.on("console", lambda message: complaints.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: complaints.append(f"uncaught: {error}"))
    # The page's own report of each violation, whatever Chromium chooses to log about it.
    page.add_init_script("""document.addEventListener("securitypolicyviolation", (violation) =>
        console.error(`CSP violation: ${violation.violatedDirective} blocked ${violation.blockedURI}`));""")
    return complaints


def fits_the_viewport(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


CHARTS_DRAWN = """() => [...document.querySelectorAll("canvas[data-points]")].map((canvas) => {
    const chart = Chart.getChart(canvas);
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    return {
        id: canvas.id,
        points: Number(canvas.dataset.points),
        sized: canvas.width > 0 && canvas.height > 0,
        painted: pixels.some((value) => value !== 0),
        labels: chart ? chart.data.labels.length : null,
        series: chart ? chart.data.datasets.map((dataset) => dataset.data.length) : [],
        totals: chart ? Object.fromEntries(chart.data.datasets.map(
            (dataset) => [dataset.label, dataset.data.reduce((sum, value) => sum + (value || 0), 0)])) : {},
    };
})"""


@pytest.fixture
def day_of_traffic(services, live_url):
    """A day with known answers: Ann answered twice today and once three days ago, Bob's question failed
    at the AI, part of Carl's answer undelivered, Dora rate-limited and then stuck for ten minutes; and two
    webhooks posted to the live server: one badly signed (403), one whose body is a long URL-encoded link."""
    auth.create_or_reset_admin("ops", PASSWORD)
    now = utcnow()
    ann, bob, carl, dora = (conversation_for(phone, name) for phone, name in (
        ("whatsapp:+15550001111", "Ann"), ("whatsapp:+15550002222", "Bob"),
        ("whatsapp:+15550003333", "Carl"), ("whatsapp:+15550004444", "Dora")))
    paris = asked(ann, now - timedelta(hours=2), "answered", "What is the capital of France?")
    paris_answer = answered(paris, took=4, model=M1, tokens=(10, 5), cost=0.01, latency=1000,
                            parts=[("delivered", None)])
    answered(asked(ann, now - timedelta(hours=3), "answered", "And of Italy?"), took=10, model=M1,
             tokens=(20, 10), cost=0.02, latency=2000)
    answered(asked(ann, now - timedelta(days=3), "answered", "And of Spain?"), took=6, model=M1, tokens=(1, 1),
             latency=600)
    failed = asked(bob, now - timedelta(hours=3), "failed", "Hello?", error=NO_CREDITS)
    answered(failed, took=1, metadata={"canned": "ai_failure"})  # the apology
    undelivered = answered(asked(carl, now - timedelta(hours=1), "answered", "Hi"), took=3, model=M2,
                           tokens=(40, 20), cost=0.04, latency=2500,
                           parts=[("delivered", None), ("undelivered", 63016)])
    asked(dora, now - timedelta(hours=1), "rate_limited", "Hi again")
    stuck = asked(dora, now - timedelta(minutes=10), "pending", "Anyone there?")

    webhook = f"{live_url}/whatsapp/webhook"
    forged = requests.post(webhook, data=inbound_form("forged"), headers={"X-Twilio-Signature": "forged"}, timeout=10)
    assert forged.status_code == 403
    pasted = inbound_form(LONG_LINK, sender="whatsapp:+15550005555")
    signed = requests.post(webhook, data=pasted, headers={"X-Twilio-Signature": sign(webhook, pasted)}, timeout=10)
    assert signed.status_code == 200, signed.text
    return {"ann": ann, "paris": paris, "paris_answer": paris_answer, "failed": failed, "undelivered": undelivered,
            "stuck": stuck, "webhook": webhook,
            "refused_entry": WebhookLog.get(WebhookLog.response_status == 403),
            "long_entry": WebhookLog.get(WebhookLog.message_sid == pasted["MessageSid"])}


def test_a_day_of_traffic_reads_right_on_the_dashboard_problems_and_webhook_log(page, live_url, day_of_traffic):
    complaints = complaints_of(page)
    sign_in(page, live_url)

    # Every chart drawn, over each bucket of the period; the outcomes add up to the day's messages.
    for period, buckets in (("24h", 24), ("7d", 7)):
        page.goto(f"{live_url}/admin/?period={period}")
        charts = {chart["id"]: chart for chart in page.evaluate(CHARTS_DRAWN)}
        # The errors: the AI failure and Twilio's 63016; the models: M1 and M2.
        expected = {"chart-outcomes": buckets, "chart-reply-times": buckets, "chart-errors": 2, "chart-models": 2}
        assert {name: chart["points"] for name, chart in charts.items()} == expected, period
        for name, chart in charts.items():
            assert chart["sized"] and chart["painted"], (period, name)
            assert chart["labels"] == expected[name], (period, name)
            assert set(chart["series"]) == {expected[name]}, (period, name)
        # Waiting: Dora's stuck message and the one just posted; the week adds Ann's answer of three days ago.
        assert charts["chart-outcomes"]["totals"] == {
            "answered": 2 if period == "24h" else 3, "failed": 1, "undelivered": 1, "rate-limited": 1,
            "refused": 0, "waiting": 2}, period
    assert complaints == []

    # Problems: exactly the failed question, the undelivered answer and the stuck message (not the fresh one).
    page.goto(f"{live_url}/admin/problems/")
    expect(page.locator("#problem-groups li.problem")).to_have_count(3)
    problems = page.locator("#problem-groups").evaluate("section => section.outerHTML")
    assert listed_problems(problems) == {day_of_traffic[key].id for key in ("failed", "undelivered", "stuck")}
    stuck_group = page.locator(".problem-group", has=page.locator(f"#problem-{day_of_traffic['stuck'].id}"))
    expect(stuck_group.locator(".problem-kind")).to_have_text("not answered")

    # The refused webhook's details name the URL its signature was checked against.
    page.goto(f"{live_url}/admin/webhooklog/?flt0_verdict_equals=bad_signature")
    expect(page.locator("table.model-list .badge-danger")).to_have_text("bad_signature")
    page.goto(f"{live_url}/admin/webhooklog/details/?id={day_of_traffic['refused_entry'].id}")
    expect(page.locator("#checked-url > code")).to_have_text(day_of_traffic["webhook"])

    # The pasted link's webhook shows the form decoded: the link as the user sent it.
    page.goto(f"{live_url}/admin/webhooklog/details/?id={day_of_traffic['long_entry'].id}")
    expect(page.locator("#webhook-fields")).to_contain_text(LONG_LINK)

    # The transcript ties each answer to its question.
    page.goto(f"{live_url}/admin/conversation/details/?id={day_of_traffic['ann'].id}")
    answer = page.locator(f"#message-{day_of_traffic['paris_answer'].id}")
    expect(answer.locator(".answered-question")).to_have_attribute("href", f"#message-{day_of_traffic['paris'].id}")
    assert complaints == []


def test_the_main_pages_fit_a_phone_and_a_desktop(page, live_url, day_of_traffic):
    folder = screenshot_folder()
    complaints = complaints_of(page)
    pages = {
        "dashboard": "/admin/",
        "conversations": "/admin/conversation/",
        "transcript": f"/admin/conversation/details/?id={day_of_traffic['ann'].id}",
        "problems": "/admin/problems/",
        "webhook-log": "/admin/webhooklog/",
        "webhook-refused": f"/admin/webhooklog/details/?id={day_of_traffic['refused_entry'].id}",
        "webhook-long-body": f"/admin/webhooklog/details/?id={day_of_traffic['long_entry'].id}",
        "numbers": "/admin/whatsappnumber/",
        "ai-configurations": "/admin/aiconfiguration/",
    }
    for width in (PHONE_WIDTH, DESKTOP_WIDTH):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{live_url}/admin/login/")
        page.screenshot(path=folder / f"login-{width}.png", full_page=True)
    sign_in(page, live_url)

    for width in (PHONE_WIDTH, DESKTOP_WIDTH):
        page.set_viewport_size({"width": width, "height": 900})
        for name, path in pages.items():
            page.goto(live_url + path)
            page.screenshot(path=folder / f"{name}-{width}.png", full_page=True)
            # Long values wrap and wide tables scroll inside themselves: the page never scrolls sideways.
            assert fits_the_viewport(page), f"{name} is wider than {width} px"
    assert complaints == []
