"""The commands gate: a whole-message command is answered without the AI; a /forget needs its YES next."""
import pytest

from chatbot.models import Conversation, Message, Status
from chatbot.stages.commands import UserCommands
from chatbot.stages.words import CommandWords
from tests.stages.conftest import ADA, make_turn


def commands_of(services) -> UserCommands:
    words = CommandWords(services.config.user_commands)
    return UserCommands(services.redis, services.context, services.whatsapp, words)


def test_help_is_answered_by_the_gate(services, stored_turn):
    verdict = commands_of(services).verdict(stored_turn(" /HELP "))
    assert verdict.status == Status.ANSWERED and verdict.kind == "command:help"
    assert "/reset" in verdict.reply and not verdict.erased and not verdict.restarted


def test_a_sentence_is_not_a_command(services, stored_turn):
    assert commands_of(services).verdict(stored_turn("what does /help do?")) is None


def test_forget_then_yes_erases_the_sender(services, stored_turn, fake_twilio):
    commands = commands_of(services)
    assert commands.verdict(stored_turn("/forget")).kind == "command:forget"
    verdict = commands.verdict(stored_turn("YES"))
    assert verdict.erased and verdict.restarted
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Done: everything I stored about you is erased."]


def test_any_message_between_forget_and_yes_cancels_the_forget(services, stored_turn, fake_twilio):
    commands = commands_of(services)
    commands.verdict(stored_turn("/forget"))
    assert commands.verdict(stored_turn("what is the weather?")) is None
    assert commands.verdict(stored_turn("yes")) is None  # plain agreement, for the AI
    assert fake_twilio.sent == [] and Message.select().count() == 3


def test_a_message_another_gate_stopped_cancels_the_forget_too(services, stored_turn, fake_twilio):
    commands = commands_of(services)
    commands.verdict(stored_turn("/forget"))
    stored_turn("STOP")  # the opt-out gate's, never seen by this one
    assert commands.verdict(stored_turn("YES")) is None
    assert Conversation.select().where(Conversation.user_phone == ADA).count() == 1


@pytest.mark.postgres
def test_reset_ends_the_conversation_and_moves_the_later_messages_to_the_next(services, stored_turn):
    commands = commands_of(services)
    reset = stored_turn("/reset")
    later = stored_turn("how are you")
    verdict = commands.verdict(reset)
    assert verdict.kind == "command:reset" and verdict.restarted and not verdict.erased
    ended = Conversation.get_by_id(reset.conversation.id)
    moved = Message.get_by_id(later.question.id).conversation
    assert not ended.is_active and moved.is_active and moved.id != ended.id


def test_commands_claim_their_words_only(services):
    commands = commands_of(services)
    assert commands.claims(make_turn("/reset").question) and commands.claims(make_turn("yes").question)
    assert not commands.claims(make_turn("please /reset").question)
    assert not commands.claims(make_turn("STOP").question)  # the opt-out gate's
