"""The commands gate: a whole-message command is answered without the AI; an opted-out sender is silenced."""
from chatbot.models import OptOut, Status
from chatbot.stages.commands import UserCommands
from tests.stages.conftest import ADA, make_turn


def commands_of(services) -> UserCommands:
    return UserCommands(services.redis, services.context, services.whatsapp, services.config.user_commands)


def test_help_is_answered_by_the_gate(services, stored_turn):
    verdict = commands_of(services).verdict(stored_turn(" /HELP "))
    assert verdict.status == Status.ANSWERED and verdict.kind == "command:help"
    assert "/reset" in verdict.reply and not verdict.erased


def test_a_sentence_is_not_a_command(services, stored_turn):
    assert commands_of(services).verdict(stored_turn("what does /help do?")) is None


def test_stop_opts_out_and_later_messages_are_silenced(services, stored_turn):
    commands = commands_of(services)
    assert commands.verdict(stored_turn("STOP")).kind == "command:stop"
    assert OptOut.select().where(OptOut.user_phone == ADA).exists()
    silenced = commands.verdict(stored_turn("Are you there?"))
    assert silenced.status == Status.OPTED_OUT and silenced.reply is None


def test_forget_then_yes_erases_the_sender(services, stored_turn, fake_twilio):
    commands = commands_of(services)
    assert commands.verdict(stored_turn("/forget")).kind == "command:forget"
    verdict = commands.verdict(stored_turn("YES"))
    assert verdict.erased
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Done: everything I stored about you is erased."]


def test_commands_claim_command_words_only(services):
    commands = commands_of(services)
    assert commands.claims(make_turn("/reset").question)
    assert not commands.claims(make_turn("please /reset").question)
