"""The takeover gate: a conversation an operator took over waits for them, not for the AI."""
from chatbot.models import Status
from chatbot.stages.takeover import TakeoverStage
from tests.stages.conftest import make_turn


def test_a_taken_over_conversation_waits_for_the_operator():
    verdict = TakeoverStage().verdict(make_turn(taken_over=True))
    assert verdict.status == Status.WAITING and verdict.reply is None and not verdict.refused


def test_a_conversation_nobody_took_over_goes_on():
    assert TakeoverStage().verdict(make_turn()) is None


def test_takeover_claims_no_message_of_a_burst():
    assert not TakeoverStage().claims(make_turn("/help").question)
