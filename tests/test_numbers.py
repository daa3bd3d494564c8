"""Several numbers: each answers as its own assistant, in its own conversations, from its own address."""
from __future__ import annotations

import pytest

from chatbot.models import AIConfiguration, Conversation, Message, Status, WebhookLog, WhatsAppNumber, db
from chatbot.rate_limiter import LIMIT_NOTICES, Allowance
from chatbot.stages.budget import MONTHLY_NOTICE, SENDER_DAILY_NOTICE, Caps
from tests.conftest import BOT_NUMBER

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"
SALES = "whatsapp:+15557770001"
SUPPORT = "whatsapp:+15557770002"
UNKNOWN = "whatsapp:+15559990000"


def add_number(address: str, label: str, system_prompt: str | None = None, **fields) -> WhatsAppNumber:
    configuration = None
    if system_prompt is not None:
        configuration = AIConfiguration.create(name=label, model_name="openai/gpt-4o-mini", system_prompt=system_prompt)
    return WhatsAppNumber.create(address=address, label=label, ai_configuration=configuration, **fields)


def sent_from(fake_twilio, number: str) -> list[tuple[str, str]]:
    return [(sent["To"], sent["Body"]) for sent in fake_twilio.sent if sent["From"] == number]


@pytest.mark.postgres
def test_two_numbers_answer_one_sender_separately_each_with_its_own_prompt_and_address(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    add_number(SALES, "Sales", "You sell bicycles.")
    add_number(SUPPORT, "Support", "You fix bicycles.")
    post_webhook.message("Which bike for a city?", sender=ADA, To=SALES)
    post_webhook.message("My chain broke", sender=ADA, To=SUPPORT)
    run_jobs()
    post_webhook.message("And the price?", sender=ADA, To=SALES)
    run_jobs()

    prompts = {request.body["messages"][-1]["content"]: request.body["messages"]
               for request in fake_openrouter.completions}
    assert prompts["My chain broke"] == [{"role": "system", "content": "You fix bicycles."},
                                         {"role": "user", "content": "My chain broke"}]
    # The sales conversation remembers its own exchange, and nothing said to support.
    assert prompts["And the price?"] == [
        {"role": "system", "content": "You sell bicycles."},
        {"role": "user", "content": "Which bike for a city?"},
        {"role": "assistant", "content": "Answer to: Which bike for a city?"},
        {"role": "user", "content": "And the price?"},
    ]
    assert sent_from(fake_twilio, SALES) == [(ADA, "Answer to: Which bike for a city?"),
                                             (ADA, "Answer to: And the price?")]
    assert sent_from(fake_twilio, SUPPORT) == [(ADA, "Answer to: My chain broke")]
    conversations = Conversation.select().where(Conversation.user_phone == ADA, Conversation.is_active == True)  # noqa: E712
    assert sorted(c.number for c in conversations) == [SALES, SUPPORT]


def test_the_default_number_keeps_answering_with_the_active_configuration(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    add_number(SALES, "Sales", "You sell bicycles.")
    post_webhook.message("Hello", sender=ADA)  # To: the default number
    run_jobs()
    assert fake_openrouter.completions[0].body["messages"][0] == {"role": "system",
                                                                 "content": "You are a test assistant."}
    assert sent_from(fake_twilio, BOT_NUMBER) == [(ADA, "Answer to: Hello")]
    assert Conversation.get(Conversation.user_phone == ADA).number == ""


def test_a_number_without_its_own_configuration_uses_the_active_one(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    AIConfiguration.create(name="main", model_name="openai/gpt-4o-mini", system_prompt="You are the main bot.",
                           is_active=True)
    add_number(SALES, "Sales")
    post_webhook.message("Hello", sender=ADA, To=SALES)
    run_jobs()
    assert fake_openrouter.completions[0].body["messages"][0]["content"] == "You are the main bot."
    assert sent_from(fake_twilio, SALES) == [(ADA, "Answer to: Hello")]


@pytest.mark.parametrize("recipient, verdict", [(UNKNOWN, "not_our_number"), (SUPPORT, "number_inactive")])
def test_a_message_to_an_unknown_or_switched_off_number_is_acknowledged_recorded_and_not_answered(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio, recipient, verdict):
    add_number(SUPPORT, "Support", is_active=False)
    form = post_webhook.message("Anyone there?", sender=ADA, To=recipient)
    run_jobs()
    entry = WebhookLog.get(WebhookLog.message_sid == form["MessageSid"])
    assert (entry.response_status, entry.verdict) == (200, verdict)
    assert Message.select().count() == 0
    assert fake_openrouter.completions == [] and fake_twilio.sent == []


def test_a_number_added_a_moment_ago_answers_at_once(services, post_webhook, run_jobs, fake_twilio):
    post_webhook.message("Too early", sender=ADA, To=SALES)
    add_number(SALES, "Sales")  # the web process read the table a moment ago, without it
    post_webhook.message("Now?", sender=ADA, To=SALES)
    run_jobs()
    assert sent_from(fake_twilio, SALES) == [(ADA, "Answer to: Now?")]


def test_a_message_from_one_of_our_own_numbers_is_not_answered(services, post_webhook, run_jobs, fake_twilio):
    add_number(SALES, "Sales")
    form = post_webhook.message("Echo", sender=SALES, To=BOT_NUMBER)
    run_jobs()
    assert WebhookLog.get(WebhookLog.message_sid == form["MessageSid"]).verdict == "from_ourselves"
    assert fake_twilio.sent == []


def test_the_greeting_comes_once_before_the_first_answer_on_its_number_only(
        services, post_webhook, run_jobs, fake_twilio):
    add_number(SALES, "Sales", greeting="Hi, this is Acme Sales!")
    post_webhook.message("Hello", sender=ADA, To=SALES)
    run_jobs()
    post_webhook.message("Prices?", sender=ADA, To=SALES)
    post_webhook.message("Hello", sender=ADA)  # the default number has no greeting
    post_webhook.message("Hello", sender=BOB, To=SALES)
    run_jobs()
    assert sent_from(fake_twilio, SALES) == [
        (ADA, "Hi, this is Acme Sales!\n\nAnswer to: Hello"),
        (ADA, "Answer to: Prices?"),
        (BOB, "Hi, this is Acme Sales!\n\nAnswer to: Hello"),
    ]
    assert sent_from(fake_twilio, BOT_NUMBER) == [(ADA, "Answer to: Hello")]


def test_a_new_conversation_with_a_known_sender_is_not_greeted_again(
        services, post_webhook, run_jobs, fake_twilio):
    add_number(SALES, "Sales", greeting="Hi, this is Acme Sales!")
    post_webhook.message("Hello", sender=ADA, To=SALES)
    run_jobs()
    post_webhook.message("/reset", sender=ADA, To=SALES)
    post_webhook.message("Hello again", sender=ADA, To=SALES)
    run_jobs()
    assert [body for _, body in sent_from(fake_twilio, SALES)][-1] == "Answer to: Hello again"
    assert sum("Acme Sales" in body for _, body in sent_from(fake_twilio, SALES)) == 1


def test_rate_limits_count_each_number_apart(app_with, services, run_jobs, fake_twilio):
    from tests.conftest import WebhookPoster

    add_number(SALES, "Sales")
    poster = WebhookPoster(app_with(rate_limit_messages=1).test_client())
    poster.message("one", sender=ADA)
    poster.message("one", sender=ADA, To=SALES)
    poster.message("two", sender=ADA, To=SALES)
    run_jobs()
    assert sent_from(fake_twilio, BOT_NUMBER) == [(ADA, "Answer to: one")]
    assert sent_from(fake_twilio, SALES) == [(ADA, "Answer to: one"),
                                             (ADA, LIMIT_NOTICES[Allowance.SENDER_LIMITED])]


@pytest.mark.postgres
def test_the_daily_budget_counts_each_sender_per_number(services, post_webhook, run_jobs, fake_openrouter,
                                                        fake_twilio):
    # Room for two answers of 0.0001 a day; the third would pass the cap, so it is not asked for.
    services.budgets.environment = Caps(sender_daily=0.00025, monthly=None)
    fake_openrouter.cost = 0.0001
    add_number(SALES, "Sales")
    for text in ("one", "two", "three"):
        post_webhook.message(text, sender=ADA)
    post_webhook.message("one", sender=ADA, To=SALES)
    run_jobs()
    assert [body for _, body in sent_from(fake_twilio, BOT_NUMBER)] == [
        "Answer to: one", "Answer to: two", SENDER_DAILY_NOTICE]
    assert sent_from(fake_twilio, SALES) == [(ADA, "Answer to: one")]


@pytest.mark.postgres
def test_a_numbers_monthly_budget_holds_back_that_number_only(services, post_webhook, run_jobs,
                                                              fake_openrouter, fake_twilio):
    fake_openrouter.cost = 0.0001
    add_number(SALES, "Sales", monthly_budget=0.0001)
    post_webhook.message("one", sender=ADA, To=SALES)
    run_jobs()
    post_webhook.message("two", sender=BOB, To=SALES)
    post_webhook.message("one", sender=BOB)
    run_jobs()
    assert sent_from(fake_twilio, SALES) == [(ADA, "Answer to: one"), (BOB, MONTHLY_NOTICE)]
    assert sent_from(fake_twilio, BOT_NUMBER) == [(BOB, "Answer to: one")]
    assert Message.get(Message.content == "two").status == Status.OVER_BUDGET.value


@pytest.mark.postgres
def test_forget_erases_the_sender_on_every_number_and_confirms_from_the_one_written_to(
        services, post_webhook, run_jobs, fake_twilio):
    add_number(SALES, "Sales")
    post_webhook.message("Hello", sender=ADA)
    post_webhook.message("Hello", sender=ADA, To=SALES)
    run_jobs()
    post_webhook.message("/forget", sender=ADA, To=SALES)
    run_jobs()
    post_webhook.message("YES", sender=ADA, To=SALES)
    run_jobs()
    assert Conversation.select().where(Conversation.user_phone == ADA).count() == 0
    assert sent_from(fake_twilio, SALES)[-1] == (ADA, "Done: everything I stored about you is erased.")


@pytest.mark.postgres
def test_the_database_down_while_placing_an_unknown_number_answers_503(app_with, services, fake_twilio):
    from tests.conftest import WebhookPoster
    from tests.support import inbound_form

    down = app_with(database_url="postgresql://chatbot@127.0.0.1:1/nothing")
    try:
        response = WebhookPoster(down.test_client())(inbound_form("Hello", ADA, To=SALES))
        assert response.status_code == 503  # Twilio delivers it again later: nothing is lost
    finally:
        db.open_database(services.config.database_url)
