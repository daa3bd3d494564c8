"""The budget gate: a message's expected cost is reserved under the caps before the AI call and settled
after it; a cap without room keeps messages from the AI, told once a day."""
from chatbot.models import Message, Role, Status, utcnow
from chatbot.stages import budget
from chatbot.stages.budget import MONTHLY_NOTICE, SENDER_DAILY_NOTICE, Budgets
from tests.conftest import wait_for
from tests.stages.conftest import ADA

BOB = "whatsapp:+15550002222"
SALES = "whatsapp:+15557770000"


def spent(turn, cost: float) -> None:
    Message.create(conversation=turn.conversation, role=Role.ASSISTANT.value, content="answer",
                   status=Status.SENT.value, cost=cost, model="openai/gpt-4o-mini", created_at=utcnow())


def budgets_of(services, sender_daily=None, monthly=None, expected: float = 0.0) -> Budgets:
    return Budgets(services.redis, services.errors, sender_daily, monthly, expected_cost=lambda turn: expected)


def test_under_every_cap_the_message_goes_on(services, stored_turn):
    assert budgets_of(services, 1.0, 10.0).verdict(stored_turn()) is None


def test_a_sender_past_the_daily_cap_is_told_once(services, stored_turn):
    budgets = budgets_of(services, sender_daily=0.01)
    spent(stored_turn(sender=ADA), 0.02)
    first = budgets.verdict(stored_turn(sender=ADA))
    assert first.status == Status.OVER_BUDGET and first.reply == SENDER_DAILY_NOTICE
    assert first.kind == "budget_sender_daily" and first.refused == "budget"
    assert budgets.verdict(stored_turn(sender=ADA)).reply is None


def test_a_number_past_its_monthly_cap_refuses_everyone(services, stored_turn):
    budgets = budgets_of(services)
    spent(stored_turn(number=SALES), 0.5)
    verdict = budgets.verdict(stored_turn(number=SALES, monthly_budget=0.4))
    assert verdict.kind == "budget_number_monthly" and verdict.reply == MONTHLY_NOTICE


def test_messages_in_flight_hold_their_expected_cost_so_no_more_go_on_than_the_money_covers(services, stored_turn):
    budgets = budgets_of(services, monthly=0.0055, expected=0.001)
    verdicts = [budgets.verdict(stored_turn(sender=f"whatsapp:+1555300{number:04d}")) for number in range(8)]
    assert verdicts[:5] == [None] * 5
    assert {verdict.kind for verdict in verdicts[5:]} == {"budget_monthly"}


def test_a_settled_answer_frees_what_it_did_not_spend_and_a_failed_one_all(services, stored_turn):
    budgets = budgets_of(services, monthly=0.0025, expected=0.001)
    cheap, failed = stored_turn(sender=ADA), stored_turn(sender=BOB)
    assert budgets.verdict(cheap) is None and budgets.verdict(failed) is None
    assert budgets.verdict(stored_turn()).kind == "budget_monthly"
    spent(cheap, 0.0002)
    budgets.settle(cheap, 0.0002)
    budgets.settle(failed, None)
    # 0.0002 spent: room for two more answers, not three.
    assert [budgets.verdict(stored_turn()) for _ in range(3)][:2] == [None, None]


def test_a_settled_answer_is_counted_once_its_cost_is_stored(services, stored_turn):
    budgets = budgets_of(services, monthly=0.0025, expected=0.001)
    answered = stored_turn(sender=ADA)
    assert budgets.verdict(answered) is None
    spent(answered, 0.001)
    budgets.settle(answered, 0.001)
    # Counted twice (stored and still held) it would leave 0.0005, too little for 0.001.
    assert budgets.verdict(stored_turn(sender=BOB)) is None


def test_the_daily_cap_holds_each_sender_apart(services, stored_turn):
    budgets = budgets_of(services, sender_daily=0.0015, expected=0.001)
    assert budgets.verdict(stored_turn(sender=ADA)) is None
    assert budgets.verdict(stored_turn(sender=ADA)).kind == "budget_sender_daily"
    assert budgets.verdict(stored_turn(sender=BOB)) is None
    assert budgets.verdict(stored_turn(sender=ADA, number=SALES)) is None  # counted per number


def test_a_killed_workers_reservation_expires(services, stored_turn, monkeypatch):
    monkeypatch.setattr(budget, "RESERVATION_TTL", 1)
    budgets = budgets_of(services, monthly=0.0015, expected=0.001)
    assert budgets.verdict(stored_turn(sender=ADA)) is None  # and never settled
    assert budgets.verdict(stored_turn(sender=BOB)) is not None
    assert wait_for(lambda: budgets.verdict(stored_turn(sender=BOB)) is None, timeout=5)


def test_without_caps_nothing_is_estimated_or_held(services, stored_turn):
    def estimate(turn):
        raise AssertionError("no cap: no estimate needed")

    budgets = Budgets(services.redis, services.errors, None, None, expected_cost=estimate)
    assert budgets.verdict(stored_turn()) is None
    assert not list(services.redis.scan_iter(budget.HELD_PREFIX + "*"))
