"""The opt-out gate: STOP and START work for everyone; an opt-out silences the number it was sent to."""
from chatbot.models import OptOut, Status
from chatbot.stages.optouts import OptOuts
from chatbot.stages.words import CommandWords
from tests.stages.conftest import ADA, make_turn

SALES = "whatsapp:+15557770001"


def opt_outs_of(services) -> OptOuts:
    return OptOuts(CommandWords(services.config.user_commands))


def test_stop_opts_out_and_later_messages_are_silenced(services, stored_turn):
    opt_outs = opt_outs_of(services)
    assert opt_outs.verdict(stored_turn("STOP")).kind == "command:stop"
    assert [(row.user_phone, row.number) for row in OptOut.select()] == [(ADA, "")]
    silenced = opt_outs.verdict(stored_turn("Are you there?"))
    assert silenced.status == Status.OPTED_OUT and silenced.reply is None
    assert opt_outs.verdict(stored_turn("/help")).status == Status.OPTED_OUT


def test_stop_to_one_number_leaves_the_others_answering(services, stored_turn):
    opt_outs = opt_outs_of(services)
    opt_outs.verdict(stored_turn("stop", number=SALES))
    assert opt_outs.verdict(stored_turn("Are you there?", number=SALES)).status == Status.OPTED_OUT
    assert opt_outs.verdict(stored_turn("Are you there?")) is None


def test_start_reopens_only_the_number_it_is_sent_to(services, stored_turn):
    opt_outs = opt_outs_of(services)
    opt_outs.verdict(stored_turn("STOP", number=SALES))
    opt_outs.verdict(stored_turn("STOP"))
    assert opt_outs.verdict(stored_turn("START", number=SALES)).reply.startswith("Welcome back")
    assert opt_outs.verdict(stored_turn("hello", number=SALES)) is None
    assert opt_outs.verdict(stored_turn("hello")).status == Status.OPTED_OUT


def test_an_opt_out_from_before_numbers_silences_every_number_until_a_start(services, stored_turn):
    OptOut.insert(user_phone=ADA, number=None).execute()
    opt_outs = opt_outs_of(services)
    assert opt_outs.verdict(stored_turn("hello", number=SALES)).status == Status.OPTED_OUT
    assert opt_outs.verdict(stored_turn("hello")).status == Status.OPTED_OUT
    opt_outs.verdict(stored_turn("START"))
    assert opt_outs.verdict(stored_turn("hello", number=SALES)) is None


def test_opt_outs_claim_stop_and_start_only(services):
    opt_outs = opt_outs_of(services)
    assert opt_outs.claims(make_turn(" stop ").question) and opt_outs.claims(make_turn("START").question)
    assert not opt_outs.claims(make_turn("/help").question)
