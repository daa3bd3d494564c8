"""Two-factor login in a real headless Chromium (Debian's), driven by Playwright."""
from __future__ import annotations

import re
import time

import pyotp
from playwright.sync_api import expect

from chatbot import auth
from chatbot.models import AdminUser

# The panel's browser journeys' fixtures: one Chromium per module, the app served on a loopback port.
from tests.test_admin_browser import PASSWORD, complaints_of, sign_in
from tests.test_admin_browser import browser as browser
from tests.test_admin_browser import live_url as live_url
from tests.test_admin_browser import page as page

STEP = 30


def early_in_a_step() -> float:
    """Now, once at least six seconds of the current TOTP step are left, so a code's step is the one meant."""
    if time.time() % STEP > STEP - 6:
        time.sleep(STEP - time.time() % STEP + 0.5)
    return time.time()


def test_enrol_log_out_and_log_in_again_with_the_password_and_a_code(page, live_url):
    auth.create_or_reset_admin("ops", PASSWORD)
    complaints = complaints_of(page)
    sign_in(page, live_url)

    page.goto(f"{live_url}/admin/two-factor/")
    expect(page.locator("#qr-code svg")).to_be_visible()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    totp = pyotp.TOTP(secret)
    # The code of the step before now (still accepted), so the login's code of this step is a new one.
    now = early_in_a_step()
    page.fill("#code", totp.at(now - STEP))
    page.click("#confirm-two-factor")
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    assert AdminUser.get(AdminUser.username == "ops").has_two_factor

    page.click("#logout")
    expect(page).to_have_url(f"{live_url}/admin/login/")
    page.fill("#username", "ops")
    page.fill("#password", PASSWORD)
    page.click("#login")
    expect(page).to_have_url(re.compile(r"/admin/two-factor/verify/"))
    page.goto(f"{live_url}/admin/conversation/")  # the password alone opens nothing
    expect(page).to_have_url(re.compile(r"/admin/login/"))
    page.goto(f"{live_url}/admin/two-factor/verify/")

    page.fill("#code", totp.at(now))
    page.click("#verify")

    expect(page).to_have_url(f"{live_url}/admin/")
    expect(page.locator("#logout")).to_be_visible()
    assert complaints == []
