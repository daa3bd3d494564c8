"""Caps that shout: a number or a sender over its spending cap is on Problems, the dashboard, Numbers,
Spending, the conversation list and the transcript, and reaching it leaves a notice in the panel even
without ALERT_WEBHOOK_URL."""
from __future__ import annotations

import re
from datetime import datetime

import pytest

from chatbot.models import Conversation, Message, Notice, Role, Status, WhatsAppNumber
from chatbot.redact import sender_key
from chatbot.spend_caps import reached
from chatbot.stages.budget import Cap, Caps
from tests.conftest import csrf_token
from tests.support import conversation_for, inbound_form

SUPPORT = "whatsapp:+14155550100"
ADA, BOB, CARL = "whatsapp:+15550001111", "whatsapp:+15550002222", "whatsapp:+15550003333"
# The clock the panel judges caps on (the budget gate's), once the refusals are moved to this month.
REFUSED_AT = datetime(2026, 3, 15, 14, 42)
NOW = datetime(2026, 3, 15, 16, 0)
COST = 0.0001


@pytest.fixture
def env(env):
    """The business keeps New York time: the panel's dates are New York's."""
    return {**env, "ADMIN_TIMEZONE": "America/New_York"}


def page(client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, path
    return response.get_data(as_text=True)


def text_of(html: str) -> str:
    """The page's words, tags left out and spaces collapsed: what the operator reads."""
    return " ".join(re.sub(r"<[^>]+>", "", html).split())


def caps_section(html: str) -> str:
    """What Problems says of the caps reached."""
    return text_of(html.split('id="caps"')[1].split("</section>")[0])


def ask(post_webhook, sender: str, text: str, profile_name: str) -> None:
    post_webhook(inbound_form(text, sender, To=SUPPORT, ProfileName=profile_name))


@pytest.fixture
def support_over_its_cap(services, post_webhook, run_jobs, fake_openrouter):
    """Support's $0.00025 a month pays two answers; Ada's third question and Bob's first are refused.
    Carl, on the default number, is answered. The refusals are then moved to REFUSED_AT, and the
    budget gate's clock to NOW."""
    fake_openrouter.cost = COST
    number = WhatsAppNumber.create(address=SUPPORT, label="Support", monthly_budget=0.00025)
    ask(post_webhook, ADA, "first", "Ada")
    ask(post_webhook, ADA, "second", "Ada")
    post_webhook.message("hi there", sender=CARL)
    run_jobs()
    ask(post_webhook, ADA, "third", "Ada")
    ask(post_webhook, BOB, "hello", "Bob")
    run_jobs()
    refused = Message.select().where(Message.status == Status.OVER_BUDGET.value)
    assert sorted(message.content for message in refused) == ["hello", "third"]
    Message.update(created_at=REFUSED_AT).where(Message.status == Status.OVER_BUDGET.value).execute()
    services.budgets.now = lambda: NOW
    return number


def test_a_number_over_its_cap_shows_on_every_page_that_matters(operator, support_over_its_cap, fake_openrouter):
    assert len(fake_openrouter.completions) == 3  # Ada's two, Carl's one

    problems = page(operator, "/admin/problems/")
    cap = caps_section(problems)
    assert "Support · Monthly budget of the number, $0.00025: reached on 2026-03-15 10:42 EDT" in cap
    assert "2 messages refused from 2 customers" in cap
    # The month ends at midnight on 1 April in ADMIN_TIMEZONE (New York here).
    assert "raise it on Numbers, or wait until 2026-04-01 00:00 EDT" in cap
    assert f'href="/admin/whatsappnumber/edit/?id={support_over_its_cap.id}"' in problems

    dashboard = page(operator, "/admin/")
    banner = text_of(dashboard.split('id="caps-banner"')[1].split("</div>")[0])
    assert "A spending cap is reached: the bot is not answering the customers it holds back." in banner
    assert "Support · Monthly budget of the number, $0.00025: reached on 2026-03-15 10:42 EDT" in banner

    numbers = page(operator, "/admin/whatsappnumber/")
    assert "$0.00025" in numbers and "reached on 2026-03-15 10:42 EDT" in text_of(numbers)

    spending = text_of(page(operator, "/admin/spending/"))
    assert "Support: $0.0002 of $0.00025 this month reached on 2026-03-15 10:42 EDT" in spending

    conversations = page(operator, "/admin/conversation/")
    badged = {conversation.user_phone for conversation in Conversation.select()
              if "cap-badge" in conversations.split(f'value="{conversation.id}"')[1].split("</tr>")[0]}
    assert badged == {ADA, BOB}

    transcript = page(operator, f"/admin/conversation/details/?id={conversation_on_support(BOB).id}")
    assert "not sent to the AI: the number&#39;s monthly budget ($0.00025) was reached" in transcript


def test_reaching_a_cap_leaves_a_notice_without_an_alert_webhook(operator, support_over_its_cap, services):
    assert not services.config.alert_webhook_url
    [notice] = Notice.select()
    assert notice.kind == f"budget:monthly:{SUPPORT}" and notice.read_at is None
    assert "monthly budget of number Support (whatsapp:+1415•••0100) reached" in notice.text

    listing = page(operator, "/admin/notices/")
    assert "Notices (1)" in listing and f'id="notice-{notice.id}"' in listing
    operator.post("/admin/notices/read/", data={"csrf_token": csrf_token(operator, "/admin/notices/"),
                                                "notice_id": str(notice.id)})
    assert Notice.get_by_id(notice.id).read_by == "ops"
    assert "Notices (1)" not in page(operator, "/admin/notices/")


def test_every_alert_is_a_notice_once_per_hour_with_numbers_masked(operator, services):
    assert services.errors.send_admin_alert("ai:AIError:401", "OpenRouter refused the key for +15550001111")
    assert not services.errors.send_admin_alert("ai:AIError:401", "and again")
    services.errors.send_admin_alert("whatsapp:outside_window:default", "a reply is held")

    assert [notice.text for notice in Notice.select().order_by(Notice.id)] == [
        "OpenRouter refused the key for +1555•••1111", "a reply is held"]
    token = csrf_token(operator, "/admin/notices/")
    answer = operator.post("/admin/notices/read/", data={"csrf_token": token}, follow_redirects=True)
    assert "Marked 2 notices read." in answer.get_data(as_text=True)
    assert Notice.unread_count() == 0


def test_raising_the_cap_ends_it_everywhere(operator, support_over_its_cap):
    assert 'id="caps"' in page(operator, "/admin/problems/")
    WhatsAppNumber.update(monthly_budget=1.0).where(WhatsAppNumber.id == support_over_its_cap.id).execute()
    operator.application.extensions["chatbot"].numbers.forget()

    assert 'id="caps"' not in page(operator, "/admin/problems/")
    assert 'id="caps-banner"' not in page(operator, "/admin/")
    assert "cap-badge" not in page(operator, "/admin/conversation/")
    assert "reached on" not in page(operator, "/admin/whatsappnumber/")


def test_a_sender_over_the_daily_cap_is_named_and_freed_at_midnight(operator, services, post_webhook, run_jobs,
                                                                    fake_openrouter):
    fake_openrouter.cost = COST
    services.budgets.environment = Caps(sender_daily=0.00015, monthly=None)
    for text in ("one", "two", "three"):
        post_webhook(inbound_form(text, ADA, ProfileName="Ada"))
    run_jobs()
    Message.update(created_at=REFUSED_AT).where(Message.status == Status.OVER_BUDGET.value).execute()
    services.budgets.now = lambda: NOW

    problems = page(operator, "/admin/problems/")
    cap = caps_section(problems)
    assert "Ada · Daily budget per sender, on default, $0.00015: reached on 2026-03-15 10:42 EDT" in cap
    assert "2 messages refused" in cap and "wait until 2026-03-16 00:00 EDT" in cap
    spending = text_of(page(operator, "/admin/spending/"))
    assert "Cut off today: Ada (whatsapp:+1555•••1111) on default: reached on 2026-03-15 10:42 EDT, 2 refused" \
        in spending
    assert "+15550001111" not in problems
    assert [notice.kind for notice in Notice.select()] == [f"budget:sender_daily:{sender_key(ADA)}"]


def test_a_cap_counts_its_own_period_only(services):
    """A refusal of last month, or one under an amount changed since, is no cap reached now."""
    ada = conversation_for(ADA, "Ada")

    def refused(at: datetime, cap: Cap, amount: float) -> None:
        Message.create(conversation=ada, role=Role.USER.value, content="hi", status=Status.OVER_BUDGET.value,
                       created_at=at, metadata={"cap": cap.value, "cap_usd": amount})

    refused(datetime(2026, 2, 28, 23, 59), Cap.MONTHLY, 5.0)
    refused(datetime(2026, 3, 1, 0, 0), Cap.MONTHLY, 5.0)
    refused(datetime(2026, 3, 2, 9, 0), Cap.MONTHLY, 5.0)
    refused(datetime(2026, 3, 14, 23, 0), Cap.SENDER_DAILY, 0.5)
    refused(datetime(2026, 3, 15, 9, 0), Cap.SENDER_DAILY, 0.4)
    Message.create(conversation=ada, role=Role.USER.value, content="old", status=Status.OVER_BUDGET.value,
                   created_at=datetime(2026, 3, 15, 9, 0))

    [monthly] = reached(Caps(sender_daily=0.5, monthly=5.0), lambda key: None, NOW, "UTC")
    assert (monthly.cap, monthly.refused, monthly.since, monthly.until) == (
        Cap.MONTHLY, 2, datetime(2026, 3, 1), datetime(2026, 4, 1))
    [monthly, daily] = reached(Caps(sender_daily=0.4, monthly=5.0), lambda key: None, NOW, "UTC")
    assert (daily.cap, daily.sender, daily.refused, daily.until) == (
        Cap.SENDER_DAILY, ADA, 1, datetime(2026, 3, 16))
    assert reached(Caps(sender_daily=None, monthly=6.0), lambda key: None, NOW, "UTC") == []


def conversation_on_support(sender: str) -> Conversation:
    return Conversation.get(Conversation.user_phone == sender, Conversation.number == SUPPORT)
