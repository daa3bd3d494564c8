"""The deadline gate: no model call starts that the job's deadline would cut short."""
from chatbot.models import Status
from chatbot.stages.deadline import MIN_AI_SECONDS, DeadlineStage
from tests.stages.conftest import make_turn


def test_a_message_with_time_left_goes_on():
    assert DeadlineStage(clock=lambda: 100.0).verdict(make_turn(until=100.0 + MIN_AI_SECONDS + 1)) is None


def test_a_message_too_close_to_the_deadline_is_left_for_the_next_run():
    verdict = DeadlineStage(clock=lambda: 100.0).verdict(make_turn(until=100.0 + MIN_AI_SECONDS - 0.1))
    assert verdict.later and verdict.status == Status.PENDING and verdict.reply is None


def test_without_a_deadline_every_message_goes_on():
    assert DeadlineStage(clock=lambda: 1e12).verdict(make_turn(until=None)) is None
