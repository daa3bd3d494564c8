"""One clock: every time the panel and the CLI show is in ADMIN_TIMEZONE with the zone named, and the
days and months spend is counted over are that zone's."""
from __future__ import annotations

from datetime import datetime

import pytest

from chatbot.models import Conversation, Message, WebhookLog
from chatbot.reports import compute_stats
from chatbot.stages.budget import Budgets
from tests.conftest import log_in
from tests.stages.conftest import make_turn

BERLIN = "Europe/Berlin"
# 23:30 UTC on the 31st of January is half past midnight on the 1st of February in Berlin (CET, UTC+1).
LATE = datetime(2026, 1, 31, 23, 30)
SHOWN = "2026-02-01 00:30:00 CET"
SHOWN_TO_THE_MINUTE = "2026-02-01 00:30 CET"
NEXT_MORNING = datetime(2026, 2, 1, 10, 0)
ADA = "whatsapp:+15550001111"


@pytest.fixture
def late_night(services):
    """Ada's question at 23:30 UTC, which the AI failed, its apology, and the webhook's log of it."""
    conversation = Conversation.create(user_phone=ADA, created_at=LATE, updated_at=LATE)
    question = Message.create(conversation=conversation, role="user", content="Open tomorrow?", status="failed",
                              created_at=LATE, twilio_sid="SM" + "1" * 32, error="OpenRouter 402")
    Message.create(conversation=conversation, role="assistant", content="Sorry, try again later.", status="sent",
                   reply_to=question, created_at=LATE, model="openai/gpt-4o-mini", cost=0.25)
    WebhookLog.create(received_at=LATE, method="POST", path="/whatsapp/webhook", response_status=200,
                      verdict="allowed", message_sid=question.twilio_sid)
    return conversation


@pytest.fixture
def berlin(app_with, admin_user):
    app = app_with(admin_timezone=BERLIN)
    client = app.test_client()
    assert log_in(client).status_code == 302
    return app, client


def test_every_page_shows_the_time_in_the_admin_zone_with_the_zone_named(berlin, late_night):
    _, client = berlin
    for path in ("/admin/message/", f"/admin/conversation/details/?id={late_night.id}", "/admin/conversation/",
                 "/admin/webhooklog/", "/admin/problems/", f"/admin/message/details/?id={late_night.messages[0].id}"):
        page = client.get(path).get_data(as_text=True)
        assert SHOWN in page or SHOWN_TO_THE_MINUTE in page, path
        assert "2026-01-31 23:30" not in page and "(UTC)" not in page, path
    for path in ("/admin/", "/admin/spending/", "/admin/knowledge/", "/admin/users/"):
        assert "(UTC)" not in client.get(path).get_data(as_text=True), path


def test_a_time_typed_in_a_list_filter_is_the_admin_zones(berlin, late_night):
    _, client = berlin
    ids = lambda page: page.count("/admin/message/details/?id=")  # noqa: E731
    after_midnight = client.get("/admin/message/?flt1_created_at_from=2026-02-01 00:00:00").get_data(as_text=True)
    before_midnight = client.get("/admin/message/?flt1_created_at_smaller_than=2026-02-01 00:00:00").get_data(
        as_text=True)
    assert ids(after_midnight) == 2 and ids(before_midnight) == 0
    # A value naming its offset means that moment, whatever the zone.
    utc = client.get("/admin/message/?flt1_created_at_from=2026-02-01 00:00:00%2B00:00").get_data(as_text=True)
    assert ids(utc) == 0


def test_a_late_message_counts_into_the_admin_zones_day_and_month(late_night):
    berlin = compute_stats(now=NEXT_MORNING, period="7d", zone=BERLIN)
    assert berlin.spend_today.usd == berlin.spend_month.usd == pytest.approx(0.25)
    assert berlin.outcomes["failed"][berlin.bucket_labels.index("2026-02-01")] == 1
    utc = compute_stats(now=NEXT_MORNING, period="7d", zone="UTC")
    assert utc.spend_today.usd == utc.spend_month.usd == 0
    assert utc.outcomes["failed"][utc.bucket_labels.index("2026-01-31")] == 1


def test_the_daily_budget_runs_from_midnight_in_the_admin_zone(services, late_night):
    def budgets(zone):
        return Budgets(services.redis, services.errors, sender_daily=0.2, monthly=None,
                       expected_cost=lambda turn: 0.0, now=lambda: NEXT_MORNING, zone=zone)

    # Ada's 0.25 at 23:30 UTC was spent today in Berlin: her daily budget is gone; in UTC, yesterday.
    assert budgets(BERLIN).verdict(make_turn(sender=ADA, stored=True)).kind == "budget_sender_daily"
    assert budgets("UTC").verdict(make_turn(sender=ADA, stored=True)) is None


def test_the_cli_shows_times_in_the_admin_zone(berlin, late_night):
    app, _ = berlin
    output = app.test_cli_runner().invoke(args=["conversations", "show", ADA]).output
    assert f"started {SHOWN}" in output and f"[{SHOWN}] user" in output and "UTC" not in output
