"""What an answer is expected to cost before it is asked for: the price list's or the model's average, the larger."""
import pytest

from chatbot.models import Message, Role, Status
from chatbot.pricing import CHARS_PER_TOKEN, CostEstimator

COMPLETION_PRICE = 0.000002


@pytest.fixture
def estimate(services):
    return CostEstimator(services.ai_factory, services.context)


def answered(turn, cost: float, model: str = "openai/gpt-4o-mini") -> None:
    Message.create(conversation=turn.conversation, role=Role.ASSISTANT.value, content="answer",
                   status=Status.SENT.value, cost=cost, model=model)


def test_the_price_list_prices_the_prompt_and_a_full_length_answer(services, stored_turn, estimate, fake_openrouter):
    fake_openrouter.pricing["openai/gpt-4o-mini"] = {"prompt": "0.000001", "completion": str(COMPLETION_PRICE)}
    short, long = estimate(stored_turn("hi")), estimate(stored_turn("hi " * 3000))
    full_answer = services.config.ai_max_tokens * COMPLETION_PRICE
    assert full_answer < short < full_answer + 0.0001
    assert long - short == pytest.approx((len("hi " * 3000) - 2) // CHARS_PER_TOKEN * 0.000001, rel=0.01)


def test_the_models_recent_average_wins_when_it_is_larger(services, stored_turn, estimate, fake_openrouter):
    fake_openrouter.pricing["openai/gpt-4o-mini"] = {"prompt": "0", "completion": "0.0000001"}
    turn = stored_turn()
    answered(turn, 0.02)
    answered(turn, 0.04)
    answered(turn, 5.0, model="anthropic/claude-3.5-sonnet")  # another model's answers do not count
    assert estimate(turn) == pytest.approx(0.03)


def test_with_no_price_and_no_answers_nothing_is_expected(stored_turn, estimate, fake_openrouter):
    assert estimate(stored_turn()) == 0.0
