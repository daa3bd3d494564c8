"""flask numbers: the numbers the assistant answers on, managed from a shell, on SQLite and Postgres."""
from __future__ import annotations

import pytest

from chatbot.models import AIConfiguration, Conversation, WhatsAppNumber
from tests.support import BOT_NUMBER

SECOND = "whatsapp:+14155550100"
TEMPLATE = "HX" + "0123456789abcdef" * 2


@pytest.fixture
def support_config(services):
    return AIConfiguration.create(name="support", model_name="openai/gpt-4o")


@pytest.fixture
def second_number(services):
    return WhatsAppNumber.create(address=SECOND, label="Sales", greeting="Hi from sales", template_sid=TEMPLATE,
                                 monthly_budget=20.0)


def stored(address: str = SECOND) -> WhatsAppNumber | None:
    return WhatsAppNumber.get_or_none(WhatsAppNumber.address == address)


# --- add -----------------------------------------------------------------------------------------

def test_add_stores_every_setting_and_the_assistant_answers_there_at_once(cli, services, support_config):
    assert services.numbers.for_recipient(SECOND) is None

    result = cli("numbers", "add", "+14155550100", "--label", " Sales ", "--ai-config", "support",
                 "--greeting", "Welcome to sales!", "--template", TEMPLATE, "--monthly-budget", "25.5")

    assert result.exit_code == 0, result.output
    assert f"Added {SECOND} ('Sales')" in result.output
    number = stored()
    assert (number.label, number.ai_configuration_id, number.greeting, number.template_sid, number.monthly_budget,
            number.is_active) == ("Sales", support_config.id, "Welcome to sales!", TEMPLATE, 25.5, True)
    assistant = services.numbers.for_recipient(SECOND)
    assert (assistant.key, assistant.label, assistant.greeting) == (SECOND, "Sales", "Welcome to sales!")


def test_add_with_only_a_label_answers_with_the_defaults(cli, services):
    result = cli("numbers", "add", SECOND, "--label", "Sales")

    assert result.exit_code == 0, result.output
    number = stored()
    assert (number.ai_configuration, number.greeting, number.template_sid, number.monthly_budget) == (
        None, "", None, None)


def test_adding_the_default_number_gives_it_settings_of_its_own(cli, services):
    result = cli("numbers", "add", BOT_NUMBER, "--label", "Support", "--greeting", "Hello!")

    assert result.exit_code == 0, result.output
    assert "Gave the default number" in result.output
    assistant = services.numbers.for_key("")
    assert (assistant.label, assistant.greeting) == ("Support", "Hello!")


@pytest.mark.parametrize("options, complaint", [
    (["12345", "--label", "x"], "'12345': Address must be whatsapp:+ followed by an E.164 number"),
    (["whatsapp:14155550100", "--label", "x"], "Address must be whatsapp:+"),
    ([SECOND, "--label", "  "], "--label: Label is required."),
    ([SECOND, "--label", "x" * 101], "--label: Label must be at most 100 characters."),
    ([SECOND, "--label", "x", "--greeting", "g" * 1001], "--greeting: Greeting must be at most 1000 characters."),
    ([SECOND, "--label", "x", "--template", "HX123"], "--template: Template must be a Twilio Content SID"),
    ([SECOND, "--label", "x", "--monthly-budget", "0"], "--monthly-budget: Monthly budget must be an amount"),
    ([SECOND, "--label", "x", "--monthly-budget", "-3"], "--monthly-budget: Monthly budget must be an amount"),
    ([SECOND, "--label", "x", "--monthly-budget", "lots"], "--monthly-budget: Monthly budget must be an amount"),
    ([SECOND, "--label", "x", "--monthly-budget", "nan"], "--monthly-budget: Monthly budget must be an amount"),
    ([SECOND, "--label", "x", "--ai-config", "missing"], "no AI configuration named 'missing'"),
])
def test_add_with_an_invalid_value_fails_in_one_line_and_stores_nothing(cli, services, options, complaint):
    result = cli("numbers", "add", *options)

    assert result.exit_code == 1, result.output
    assert complaint in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert WhatsAppNumber.select().count() == 0


@pytest.mark.postgres
def test_adding_an_address_twice_fails_and_keeps_the_first(cli, second_number):
    result = cli("numbers", "add", "+14155550100", "--label", "Other")

    assert result.exit_code == 1
    assert f"the number {SECOND} exists already" in result.output
    assert [number.label for number in WhatsAppNumber.select()] == ["Sales"]


def test_add_without_a_label_is_bad_usage(cli, services):
    result = cli("numbers", "add", SECOND)
    assert result.exit_code == 2
    assert "Missing option '--label'" in result.output


# --- update --------------------------------------------------------------------------------------

def test_update_changes_only_what_is_given(cli, services, second_number, support_config):
    services.numbers.for_key(SECOND)  # the directory has read the table: the update must reach it anyway

    result = cli("numbers", "update", "+14155550100", "--label", "Sales EU", "--ai-config", "support",
                 "--monthly-budget", "40")

    assert result.exit_code == 0, result.output
    assert "Updated whatsapp:+14155550100 ('Sales EU'): label, monthly_budget, ai_configuration." in result.output
    number = stored()
    assert (number.label, number.ai_configuration_id, number.greeting, number.template_sid, number.monthly_budget) == (
        "Sales EU", support_config.id, "Hi from sales", TEMPLATE, 40.0)
    assert number.updated_at > second_number.updated_at
    assert services.numbers.for_key(SECOND).label == "Sales EU"


def test_update_clears_greeting_template_budget_and_configuration(cli, services, support_config):
    WhatsAppNumber.create(address=SECOND, label="Sales", greeting="Hi", template_sid=TEMPLATE, monthly_budget=20.0,
                          ai_configuration=support_config)

    result = cli("numbers", "update", SECOND, "--greeting", "", "--template", "", "--no-monthly-budget",
                 "--no-ai-config")

    assert result.exit_code == 0, result.output
    number = stored()
    assert (number.greeting, number.template_sid, number.monthly_budget, number.ai_configuration) == (
        "", None, None, None)


def test_inactive_number_is_recorded_not_answered_and_active_brings_it_back(cli, services, second_number):
    assert cli("numbers", "update", SECOND, "--inactive").exit_code == 0
    assert stored().is_active is False
    assert services.numbers.for_recipient(SECOND).answers is False

    assert cli("numbers", "update", SECOND, "--active").exit_code == 0
    assert services.numbers.for_recipient(SECOND).answers is True


@pytest.mark.parametrize("options, complaint", [
    (["--label", ""], "--label: Label is required."),
    (["--template", "SM" + "0" * 32], "--template: Template must be a Twilio Content SID"),
    (["--monthly-budget", "0"], "--monthly-budget: Monthly budget must be an amount"),
    (["--ai-config", "missing"], "no AI configuration named 'missing'"),
])
def test_update_with_an_invalid_value_fails_and_changes_nothing(cli, second_number, options, complaint):
    result = cli("numbers", "update", SECOND, *options)

    assert result.exit_code == 1, result.output
    assert complaint in result.output
    number = stored()
    assert (number.label, number.template_sid, number.monthly_budget) == ("Sales", TEMPLATE, 20.0)


def test_update_of_an_unknown_number_fails(cli, services):
    result = cli("numbers", "update", SECOND, "--label", "x")
    assert result.exit_code == 1
    assert f"no number {SECOND} (see: flask numbers list)" in result.output


def test_update_of_the_default_number_without_settings_says_how_to_add_them(cli, services):
    result = cli("numbers", "update", BOT_NUMBER, "--label", "x")
    assert result.exit_code == 1
    assert f"give it some with: flask numbers add {BOT_NUMBER}" in result.output


@pytest.mark.parametrize("options, complaint", [
    ([], "nothing to change"),
    (["--ai-config", "support", "--no-ai-config"], "either --ai-config or --no-ai-config"),
    (["--monthly-budget", "5", "--no-monthly-budget"], "either --monthly-budget or --no-monthly-budget"),
])
def test_update_with_contradictory_or_no_options_is_bad_usage(cli, second_number, options, complaint):
    result = cli("numbers", "update", SECOND, *options)
    assert result.exit_code == 2
    assert complaint in result.output


# --- list ----------------------------------------------------------------------------------------

def test_list_shows_the_default_number_even_without_a_row(cli, services):
    result = cli("numbers", "list")

    assert result.exit_code == 0, result.output
    header, default = result.output.splitlines()
    assert header.split() == ["ADDRESS", "LABEL", "AI", "CONFIGURATION", "GREETING", "TEMPLATE", "MONTHLY",
                              "BUDGET", "ACTIVE"]
    assert default.split() == [BOT_NUMBER, "default", "Default", "number", "active", "configuration", "-", "-", "-",
                               "yes"]


def test_list_shows_every_number_with_its_settings(cli, services, support_config):
    WhatsAppNumber.create(address=SECOND, label="Sales", ai_configuration=support_config, template_sid=TEMPLATE,
                          greeting="Welcome to the sales line of Example Corp, how can we help?",
                          monthly_budget=12.5, is_active=False)
    WhatsAppNumber.create(address=BOT_NUMBER, label="Support")

    lines = cli("numbers", "list").output.splitlines()

    assert len(lines) == 3
    assert lines[1].startswith(f"{BOT_NUMBER} default") and "Support" in lines[1]
    assert lines[2].startswith(SECOND)
    for shown in ("Sales", "support", "Welcome to the sales line of …", TEMPLATE, "$12.5", "no"):
        assert shown in lines[2]
    assert "how can we help" not in lines[2]


@pytest.mark.postgres
def test_list_without_a_database_says_how_to_fix_it(app_with, services, tmp_path):
    broken = app_with(database_url=f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}")
    result = broken.test_cli_runner().invoke(args=["numbers", "list"])
    assert result.exit_code == 1
    assert "fix: check that the database is up" in result.output


# --- remove --------------------------------------------------------------------------------------

@pytest.mark.postgres
def test_remove_stops_answering_and_keeps_the_conversations(cli, services, second_number):
    Conversation.create(user_phone="whatsapp:+15550001111", number=SECOND)
    assert services.numbers.for_recipient(SECOND) is not None

    result = cli("numbers", "remove", "+14155550100")

    assert result.exit_code == 0, result.output
    assert "its 1 conversation(s) are kept" in result.output
    assert stored() is None
    assert Conversation.select().where(Conversation.number == SECOND).count() == 1
    assert services.numbers.for_recipient(SECOND) is None


@pytest.mark.postgres
def test_removing_the_default_numbers_row_only_resets_it(cli, services):
    WhatsAppNumber.create(address=BOT_NUMBER, label="Support", greeting="Hello!")

    result = cli("numbers", "remove", BOT_NUMBER)

    assert result.exit_code == 0, result.output
    assert "Reset the default number" in result.output and "cannot be removed" in result.output
    assistant = services.numbers.for_recipient(BOT_NUMBER)
    assert (assistant.key, assistant.label, assistant.greeting, assistant.answers) == ("", "Default number", "", True)


@pytest.mark.parametrize("address, complaint", [
    (SECOND, f"no number {SECOND}"),
    (BOT_NUMBER, "has no settings of its own yet"),
    ("not-a-number", "Address must be whatsapp:+"),
])
def test_remove_of_a_number_not_stored_fails(cli, services, address, complaint):
    result = cli("numbers", "remove", address)
    assert result.exit_code == 1
    assert complaint in result.output
