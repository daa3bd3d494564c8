"""The budget gate: a reached cap keeps messages from the AI, told once a day."""
from chatbot.models import Message, Role, Status, utcnow
from chatbot.stages.budget import MONTHLY_NOTICE, SENDER_DAILY_NOTICE, Budgets
from tests.stages.conftest import ADA


def spent(turn, cost: float) -> None:
    Message.create(conversation=turn.conversation, role=Role.ASSISTANT.value, content="answer",
                   status=Status.SENT.value, cost=cost, model="openai/gpt-4o-mini", created_at=utcnow())


def test_under_every_cap_the_message_goes_on(services, stored_turn):
    assert Budgets(services.redis, services.errors, 1.0, 10.0).verdict(stored_turn()) is None


def test_a_sender_past_the_daily_cap_is_told_once(services, stored_turn):
    budgets = Budgets(services.redis, services.errors, sender_daily=0.01, monthly=None)
    spent(stored_turn(sender=ADA), 0.02)
    first = budgets.verdict(stored_turn(sender=ADA))
    assert first.status == Status.OVER_BUDGET and first.reply == SENDER_DAILY_NOTICE
    assert first.kind == "budget_sender_daily" and first.refused == "budget"
    assert budgets.verdict(stored_turn(sender=ADA)).reply is None


def test_a_number_past_its_monthly_cap_refuses_everyone(services, stored_turn):
    budgets = Budgets(services.redis, services.errors, sender_daily=None, monthly=None)
    spent(stored_turn(number="whatsapp:+15557770000"), 0.5)
    verdict = budgets.verdict(stored_turn(number="whatsapp:+15557770000", monthly_budget=0.4))
    assert verdict.kind == "budget_number_monthly" and verdict.reply == MONTHLY_NOTICE
