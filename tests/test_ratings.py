"""Ratings on WhatsApp, end to end: signed webhook → RQ worker → the sweeper asks "How did I do?" once
→ the customer's 1–5 is stored and thanked, never sent to the AI; the dashboard and /metrics show it."""
from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatbot import ratings
from chatbot.handoff import resolve
from chatbot.jobs import tasks
from chatbot.models import Conversation, Message, Rating, Role, Status, utcnow
from tests.test_handoff import tool_call

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"
TEMPLATE = "HX" + "fedcba9876543210" * 2
METRICS_TOKEN = "metrics-token-0123456789"


@pytest.fixture
def rating_template(request):
    return getattr(request, "param", "")


@pytest.fixture
def env(env):
    return {**env, "METRICS_TOKEN": METRICS_TOKEN}


@pytest.fixture
def config(config, rating_template):
    return config.replace(rating_after_minutes=30, rating_template_sid=rating_template)


def bodies(fake_twilio, to: str = ADA) -> list[str]:
    return [sent.get("Body") or sent.get("ContentSid") for sent in fake_twilio.sent if sent["To"] == to]


def quiet_for(minutes: int) -> None:
    """As if the conversations had been quiet this long (their messages stay inside the 24-hour window)."""
    Conversation.update(updated_at=utcnow() - timedelta(minutes=minutes)).execute()


def answered_then_quiet(post_webhook, run_jobs, sender: str = ADA) -> None:
    post_webhook.message("Do you deliver on Sundays?", sender=sender)
    run_jobs()
    quiet_for(31)


@pytest.mark.postgres
def test_a_quiet_conversation_is_asked_once_and_a_5_is_stored_thanked_and_never_sent_to_the_ai(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    post_webhook.message("Do you deliver on Sundays?", sender=ADA)
    run_jobs()
    quiet_for(29)
    assert tasks.ask_for_ratings() == 0  # not quiet long enough yet
    quiet_for(31)
    assert tasks.ask_for_ratings() == 1
    run_jobs()
    assert bodies(fake_twilio) == ["Answer to: Do you deliver on Sundays?", ratings.QUESTION]
    quiet_for(120)
    assert tasks.ask_for_ratings() == 0  # never twice in one conversation

    asked_ai = len(fake_openrouter.completions)
    post_webhook.message("5", sender=ADA)
    run_jobs()
    assert len(fake_openrouter.completions) == asked_ai
    assert bodies(fake_twilio)[-1] == ratings.THANKS
    [rating] = Rating.select()
    assert (rating.score, rating.ai_source, rating.number) == (5, "env", "")
    assert Message.get_by_id(rating.message_id).status == Status.ANSWERED.value

    # Rated once: a later "5" is an ordinary message for the AI.
    post_webhook.message("5", sender=ADA)
    run_jobs()
    assert len(fake_openrouter.completions) == asked_ai + 1 and Rating.select().count() == 1


def test_anything_else_continues_the_conversation_and_a_number_after_it_is_not_a_rating(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    answered_then_quiet(post_webhook, run_jobs)
    tasks.ask_for_ratings()
    run_jobs()
    post_webhook.message("How many parcels can I send?", sender=ADA)
    run_jobs()
    post_webhook.message("3", sender=ADA)
    run_jobs()
    assert Rating.select().count() == 0
    assert bodies(fake_twilio)[-2:] == ["Answer to: How many parcels can I send?", "Answer to: 3"]


@pytest.mark.parametrize("text, score", [("4/5", 4), (" 2. ", 2), ("1!", 1)])
def test_the_ways_a_customer_writes_a_score(services, post_webhook, run_jobs, fake_twilio, text, score):
    answered_then_quiet(post_webhook, run_jobs)
    tasks.ask_for_ratings()
    run_jobs()
    post_webhook.message(text, sender=ADA)
    run_jobs()
    assert Rating.get().score == score


@pytest.mark.parametrize("rating_template", [TEMPLATE], indirect=True)
def test_with_a_quick_reply_template_the_question_has_buttons_and_a_button_is_the_rating(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    answered_then_quiet(post_webhook, run_jobs)
    tasks.ask_for_ratings()
    run_jobs()
    question = fake_twilio.sent[-1]
    assert question["ContentSid"] == TEMPLATE and "ContentVariables" not in question and "Body" not in question
    asked_ai = len(fake_openrouter.completions)
    post_webhook.message("4 - Good", sender=ADA, ButtonText="4 - Good", ButtonPayload="rating_4")
    run_jobs()
    assert Rating.get().score == 4 and len(fake_openrouter.completions) == asked_ai


def test_nobody_is_asked_after_stop_outside_the_window_or_without_an_ai_answer(
        services, post_webhook, run_jobs, fake_twilio):
    answered_then_quiet(post_webhook, run_jobs, ADA)
    post_webhook.message("STOP", sender=ADA)
    run_jobs()
    post_webhook.message("/help", sender=BOB)  # answered by the command: no AI answer to rate
    run_jobs()
    post_webhook.message("Hi", sender="whatsapp:+15550003333")
    run_jobs()
    Message.update(created_at=utcnow() - timedelta(hours=24)).where(
        Message.role == Role.USER.value, Message.content == "Hi").execute()
    quiet_for(60)
    assert tasks.ask_for_ratings() == 0
    assert Conversation.select().where(Conversation.rating_asked_at.is_null(False)).count() == 0


def test_a_handoff_a_person_resolved_is_asked_for_at_once(services, post_webhook, run_jobs, fake_openrouter,
                                                          fake_twilio):
    fake_openrouter.tool_models = {"openai/gpt-4o-mini"}
    fake_openrouter.then(tool_call())
    post_webhook.message("I need to change my address", sender=ADA)
    run_jobs()
    assert tasks.ask_for_ratings() == 0  # a person has it
    resolve(Conversation.get().id, "ops")
    assert tasks.ask_for_ratings() == 1
    run_jobs()
    assert bodies(fake_twilio)[-1] == ratings.QUESTION


def test_zero_minutes_never_asks(services, post_webhook, run_jobs, fake_twilio):
    services.config = services.config.replace(rating_after_minutes=0)
    answered_then_quiet(post_webhook, run_jobs)
    assert tasks.ask_for_ratings() == 0


def test_a_lost_question_is_sent_by_the_next_sweep_once(services, post_webhook, run_jobs, fake_twilio):
    answered_then_quiet(post_webhook, run_jobs)
    tasks.ask_for_ratings()
    services.queue.empty()  # the job never reached a worker
    Message.update(created_at=utcnow() - timedelta(minutes=5)).where(Message.status == Status.UNSENT.value).execute()
    tasks.sweep_pending_messages()
    run_jobs()
    tasks.sweep_pending_messages()
    run_jobs()
    assert bodies(fake_twilio).count(ratings.QUESTION) == 1


def test_the_dashboard_and_metrics_show_the_ratings_by_number_and_configuration(
        services, operator, post_webhook, run_jobs, fake_twilio):
    before = rating_samples(operator)
    for sender, score in ((ADA, "5"), (BOB, "2")):
        answered_then_quiet(post_webhook, run_jobs, sender)
        tasks.ask_for_ratings()
        run_jobs()
        post_webhook.message(score, sender=sender)
        run_jobs()
    page = operator.get("/admin/").get_data(as_text=True)
    row = page[page.index('class="rating-group"'):]
    row = row[:row.index("</tr>")]
    assert "environment settings" in row and "<td class=\"text-right\">2</td>" in row
    assert "3.5 / 5" in row and "50 %" in row
    after = rating_samples(operator)
    # Counters of this process count other tests' ratings too: what moved is this test's.
    moved = {key: value - before.get(key, 0.0) for key, value in after.items() if value != before.get(key, 0.0)}
    assert moved == {("5", "default", "environment"): 1.0, ("2", "default", "environment"): 1.0}


def rating_samples(client) -> dict[tuple, float]:
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).get_data(as_text=True)
    return {(sample.labels["score"], sample.labels["number"], sample.labels["ai_configuration"]): sample.value
            for family in text_string_to_metric_families(scraped) for sample in family.samples
            if sample.name == "chatbot_ratings_total"}
