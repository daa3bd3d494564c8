"""What answers cost: stored per answer, shown on the dashboard, and capped per sender and per month."""
from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from chatbot.models import Message, Origin, Role, Setting, Status, utcnow
from chatbot.reports import Spend, compute_stats
from chatbot.stages.budget import MONTHLY_NOTICE, SENDER_DAILY_NOTICE, Caps
from tests.conftest import inbound_form, wait_for
from tests.fakes import FakeServer, Scripted
from tests.support import conversation_for
from tests.test_admin import PASSWORD, csrf_token

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"
# Spend is summed in SQL, per conversation, sender, number, day and month.
pytestmark = pytest.mark.postgres


def sender(number: int) -> str:
    return f"whatsapp:+1555200{number:04d}"


def answers_of(phone: str) -> list[Message]:
    return list(Message.select().where(Message.role == Role.ASSISTANT.value,
                                       Message.conversation == conversation_for(phone)).order_by(Message.id))


def bodies_to(fake_twilio, to: str) -> list[str]:
    return [sent["Body"] for sent in fake_twilio.sent if sent["To"] == to]


# --- the cost of each answer ---------------------------------------------------------------------

def test_each_answer_stores_the_cost_openrouter_reported(post_webhook, run_jobs, fake_openrouter):
    fake_openrouter.cost = 0.00042
    post_webhook.message("What is 2 + 2?", sender=ADA)
    run_jobs()
    [answer] = answers_of(ADA)
    assert answer.cost == pytest.approx(0.00042)
    assert "cost" not in answer.metadata


def test_an_answer_without_a_reported_cost_keeps_none_not_zero(post_webhook, run_jobs, fake_openrouter):
    fake_openrouter.cost = None
    post_webhook.message("What is 2 + 2?", sender=ADA)
    run_jobs()
    [answer] = answers_of(ADA)
    assert answer.cost is None and answer.model == "openai/gpt-4o-mini"
    assert Message.spend(utcnow() - timedelta(hours=1)) == (0.0, 1)


# --- the dashboard -------------------------------------------------------------------------------

NOW = datetime(2026, 3, 15, 12, 0)


def answer(phone: str, at: datetime, cost: float | None, model: str = "openai/gpt-4o-mini",
           origin: Origin = Origin.WHATSAPP) -> Message:
    return Message.create(conversation=conversation_for(phone), role=Role.ASSISTANT.value, content="answer",
                          status=Status.SENT.value, model=model, cost=cost, created_at=at, origin=origin.value)


@pytest.fixture
def spend_history(services):
    """Answers of known cost: today, this week, this month, last month, and a playground trial."""
    answer(ADA, NOW.replace(hour=10), 0.002, "openai/gpt-4o-mini")
    answer(BOB, NOW.replace(hour=11), None, "anthropic/claude-3.5-sonnet")
    answer(ADA, NOW - timedelta(days=3), 0.001, "openai/gpt-4o-mini")
    answer(BOB, NOW - timedelta(days=10), 0.004, "anthropic/claude-3.5-sonnet")
    answer(ADA, datetime(2026, 2, 20, 9, 0), 1.0, "openai/gpt-4o-mini")
    answer("playground:ops", NOW.replace(hour=9), 5.0, origin=Origin.PLAYGROUND)
    # A canned reply (no model) is not an answer of unknown cost.
    Message.create(conversation=conversation_for(ADA), role=Role.ASSISTANT.value, content="/help text",
                   status=Status.SENT.value, created_at=NOW.replace(hour=10))


def test_dashboard_sums_spend_by_period_and_counts_unknown_costs_apart(spend_history):
    stats = compute_stats(now=NOW)
    # The playground's trial is billed: it counts, on a line of its own.
    assert stats.spend_today == Spend(pytest.approx(5.002), 1, playground=5.0)
    assert stats.spend_week == Spend(pytest.approx(5.003), 1, playground=5.0)
    assert stats.spend_month == Spend(pytest.approx(5.007), 1, playground=5.0)
    assert compute_stats(now=NOW, number="").spend_today == Spend(pytest.approx(0.002), 1)
    assert [(row.model, round(row.usd, 6), row.unknown) for row in stats.spend_by_model] == [
        ("anthropic/claude-3.5-sonnet", 0.004, 1), ("openai/gpt-4o-mini", 0.003, 0)]
    assert [(phone, round(usd, 6)) for phone, usd in stats.top_spenders] == [(BOB, 0.004), (ADA, 0.003)]


def test_spend_per_conversation_and_per_sender(spend_history):
    ada, bob = conversation_for(ADA), conversation_for(BOB)
    by_conversation = Message.spend_of_conversations([ada.id, bob.id])
    assert by_conversation == {ada.id: pytest.approx(1.003), bob.id: pytest.approx(0.004)}
    assert Message.spend(NOW - timedelta(days=7), sender=ADA) == (pytest.approx(0.003), 0)
    assert Message.spend(NOW - timedelta(days=7), sender=BOB) == (0.0, 1)


@pytest.fixture
def operator(client, services):
    from chatbot import auth

    auth.create_or_reset_admin("ops", PASSWORD)
    token = csrf_token(client, "/admin/login/")
    assert client.post("/admin/login/", data={"username": "ops", "password": PASSWORD,
                                              "csrf_token": token}).status_code == 302
    return client


def test_dashboard_page_shows_spend_and_masks_the_costliest_senders(operator):
    answer(ADA, utcnow(), 0.0123)
    answer(BOB, utcnow(), None)
    page = operator.get("/admin/").get_data(as_text=True)
    assert "$0.0123" in page and "+ 1 unknown" in page
    assert "whatsapp:+1555•••1111" in page and "+15550001111" not in page


# --- the daily budget per sender -----------------------------------------------------------------

def test_a_sender_over_the_daily_budget_is_told_once_and_gets_no_more_ai_calls(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    services.budgets.environment = Caps(sender_daily=0.00035, monthly=None)
    fake_openrouter.cost = 0.0001
    for number in range(1, 7):
        post_webhook.message(f"question {number}", sender=ADA)
    run_jobs()
    # Three answers make 0.0003; a fourth, expected to cost what they did, would pass the 0.00035
    # cap: it is refused before the AI is asked, and so is every question after it.
    assert len(fake_openrouter.completions) == 3
    assert bodies_to(fake_twilio, ADA) == ["Answer to: question 1", "Answer to: question 2",
                                           "Answer to: question 3", SENDER_DAILY_NOTICE]
    questions = Message.select().where(Message.role == Role.USER.value).order_by(Message.id)
    assert [q.status for q in questions] == ["answered"] * 3 + ["over_budget"] * 3

    post_webhook.message("one more", sender=ADA)
    post_webhook.message("hello", sender=BOB)
    run_jobs()
    assert len(fake_openrouter.completions) == 4  # Bob's only
    assert len(bodies_to(fake_twilio, ADA)) == 4 and bodies_to(fake_twilio, BOB) == ["Answer to: hello"]


# --- the monthly budget --------------------------------------------------------------------------

class AlertReceiver(FakeServer):
    """A Slack-compatible incoming webhook for the operator's alerts."""

    @property
    def texts(self) -> list[str]:
        return [request.body["text"] for request in self.requests]

    def default_answer(self, request) -> Scripted:
        return Scripted(200, "ok")


@pytest.fixture
def alert_receiver():
    server = AlertReceiver().start()
    yield server
    server.stop()


def test_monthly_budget_stops_every_ai_call_overshooting_by_at_most_the_jobs_in_flight(
        post_webhook, workers, fake_openrouter, fake_twilio, alert_receiver):
    cost, cap, concurrency, senders = 0.0001, 0.00025, 4, 10
    fake_openrouter.cost = cost
    fake_openrouter.delay_for = lambda messages: 1.0
    for number in range(senders):
        post_webhook.message("hello", sender=sender(number))
    workers.start(WORKER_CONCURRENCY=str(concurrency), BUDGET_MONTHLY=str(cap),
                  ALERT_WEBHOOK_URL=alert_receiver.url + "/alert")
    assert wait_for(lambda: len(fake_twilio.sent) == senders, timeout=60), fake_twilio.sent

    answered = len(fake_openrouter.completions)
    # The model has no price and no answers yet, so the first jobs reserve nothing (test_attacks_gates
    # has the priced case): every job that passed the check before the cap was reached finishes.
    assert math.ceil(cap / cost) <= answered <= math.ceil(cap / cost) + concurrency - 1
    spent, unknown = Message.spend(utcnow() - timedelta(hours=1))
    assert unknown == 0 and spent <= cap + concurrency * cost
    notices = [sent for sent in fake_twilio.sent if sent["Body"] == MONTHLY_NOTICE]
    assert len(notices) == senders - answered
    assert wait_for(lambda: len(alert_receiver.texts) == 1, timeout=10)

    # Later messages, refused too, neither call the AI nor alert again; their senders were told today.
    for number in range(senders):
        post_webhook.message("still there?", sender=sender(number))
    assert wait_for(lambda: Message.select().where(Message.status == Status.OVER_BUDGET.value).count()
                    == 2 * senders - answered, timeout=30)
    assert len(fake_openrouter.completions) == answered
    assert len([sent for sent in fake_twilio.sent if sent["Body"] == MONTHLY_NOTICE]) == senders
    assert not wait_for(lambda: len(alert_receiver.texts) > 1, timeout=1.0)
    assert "monthly budget reached" in alert_receiver.texts[0]


# --- the admin's overrides -----------------------------------------------------------------------

def set_cap(operator, key: str, value: str = "", clear: bool = False):
    data = {"csrf_token": csrf_token(operator, "/admin/spending/"), "key": key, "value": value}
    if clear:
        data["clear"] = "1"
    return operator.post("/admin/spending/set/", data=data, follow_redirects=True).get_data(as_text=True)


def test_the_admin_override_beats_the_environment_and_can_be_cleared(
        operator, services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    services.budgets.environment = Caps(sender_daily=1.0, monthly=None)
    fake_openrouter.cost = 0.0001
    page = operator.get("/admin/spending/").get_data(as_text=True)
    assert 'id="cap-sender-daily">$1<' in page and 'id="cap-monthly">no cap<' in page

    page = set_cap(operator, "budget_per_sender_daily", "0.0001")
    assert 'id="cap-sender-daily">$0.0001<' in page
    assert Setting.get(Setting.key == "budget_per_sender_daily").value == "0.0001"
    post_webhook.message("first", sender=ADA)
    post_webhook.message("second", sender=ADA)
    run_jobs()
    assert bodies_to(fake_twilio, ADA) == ["Answer to: first", SENDER_DAILY_NOTICE]

    page = set_cap(operator, "budget_per_sender_daily", "lots")
    assert "must be an amount in US dollars" in page
    assert Setting.get(Setting.key == "budget_per_sender_daily").value == "0.0001"

    page = set_cap(operator, "budget_per_sender_daily", clear=True)
    assert 'id="cap-sender-daily">$1<' in page and Setting.select().count() == 0
    post_webhook.message("third", sender=ADA)
    run_jobs()
    assert bodies_to(fake_twilio, ADA)[-1] == "Answer to: third"


def test_the_monthly_override_holds_everyone_back(operator, services, post_webhook, run_jobs, fake_twilio,
                                                  fake_openrouter):
    fake_openrouter.cost = 0.0001
    post_webhook.message("first", sender=ADA)
    run_jobs()
    set_cap(operator, "budget_monthly", "0.0001")
    post_webhook(inbound_form("hello", BOB))
    run_jobs()
    assert bodies_to(fake_twilio, BOB) == [MONTHLY_NOTICE] and len(fake_openrouter.completions) == 1
