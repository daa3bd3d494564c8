"""Fallback models: OpenRouter's `models` list carries them, the answer records who wrote it."""
from __future__ import annotations

import pytest

from chatbot import create_app
from chatbot.jobs import tasks
from chatbot.models import AIConfiguration, Message
from chatbot.reports import compute_stats
from chatbot.services import build_services
from tests.conftest import FAST_RETRIES, WebhookPoster
from tests.support import BurstWorker
from tests.test_admin import create_configuration
from worker import build_worker

PRIMARY = "anthropic/claude-3.5-sonnet"
FALLBACK = "openai/gpt-4o-mini"


def answers() -> list[Message]:
    return list(Message.select().where(Message.role == "assistant", Message.model.is_null(False)))


@pytest.mark.postgres
def test_failing_primary_is_answered_by_the_fallback_and_the_dashboard_counts_it(
        services, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    AIConfiguration.create(name="main", model_name=PRIMARY, fallback_models=f" {FALLBACK} ", is_active=True)
    fake_openrouter.failing_models = {PRIMARY}
    post_webhook.message("Hello")
    run_jobs()
    request = fake_openrouter.completions[-1].body
    assert (request["model"], request["models"]) == (PRIMARY, [PRIMARY, FALLBACK])
    [answer] = answers()
    assert answer.model == FALLBACK and answer.metadata["requested_model"] == PRIMARY
    assert fake_twilio.sent[-1]["Body"] == "Answer to: Hello"
    stats = compute_stats()
    assert (stats.fallback_answers_week, stats.ai_answers_week) == (1, 1)


@pytest.mark.postgres
def test_an_answer_by_the_primary_is_not_counted_as_a_fallback(services, post_webhook, run_jobs, fake_openrouter):
    AIConfiguration.create(name="main", model_name=PRIMARY, fallback_models=FALLBACK, is_active=True)
    post_webhook.message("Hello")
    run_jobs()
    [answer] = answers()
    assert answer.model == PRIMARY
    stats = compute_stats()
    assert (stats.fallback_answers_week, stats.ai_answers_week) == (0, 1)


def test_without_fallbacks_no_models_list_is_sent(services, post_webhook, run_jobs, fake_openrouter):
    post_webhook.message("Hello")
    run_jobs()
    assert "models" not in fake_openrouter.completions[-1].body


def test_environment_fallbacks_serve_when_no_configuration_is_active(config, services, fake_openrouter):
    changed = build_services(config.replace(ai_fallback_models=(PRIMARY, "google/gemini-flash-1.5")),
                             ai_options=FAST_RETRIES, whatsapp_options=FAST_RETRIES)
    fake_openrouter.failing_models = {config.ai_model, PRIMARY}
    tasks.install(changed)
    try:
        WebhookPoster(create_app(services=changed).test_client()).message("Hello")
        build_worker(changed, worker_class=BurstWorker).work(burst=True, with_scheduler=False)
    finally:
        tasks.install(services)
    assert fake_openrouter.completions[-1].body["models"] == [config.ai_model, PRIMARY, "google/gemini-flash-1.5"]
    [answer] = answers()
    assert answer.model == "google/gemini-flash-1.5" and answer.metadata["requested_model"] == config.ai_model


@pytest.mark.postgres
def test_dashboard_page_shows_fallback_use(operator, services, post_webhook, run_jobs, fake_openrouter):
    AIConfiguration.create(name="main", model_name=PRIMARY, fallback_models=FALLBACK, is_active=True)
    fake_openrouter.failing_models = {PRIMARY}
    post_webhook.message("Hello")
    run_jobs()
    page = operator.get("/admin/").get_data(as_text=True)
    assert 'Answered by a fallback model: <strong id="fallback-answers">1</strong>' in page


def test_admin_warns_of_an_unlisted_slug_and_still_saves(operator, fake_openrouter):
    page = create_configuration(operator, fallback_models="openai/gpt-4o-mini, acme/no-such-model")
    text = page.get_data(as_text=True)
    assert "OpenRouter does not list acme/no-such-model" in text
    assert AIConfiguration.get().fallback_models == "openai/gpt-4o-mini, acme/no-such-model"
    assert any(r.path.endswith("/models") for r in fake_openrouter.requests)


def test_admin_warns_when_openrouter_cannot_be_asked_and_still_saves(operator, fake_openrouter):
    fake_openrouter.models_error = fake_openrouter.error(503, "upstream down")
    text = create_configuration(operator, fallback_models=FALLBACK).get_data(as_text=True)
    assert "the models could not be checked with OpenRouter" in text
    assert AIConfiguration.get().fallback_models == FALLBACK


def test_admin_refuses_a_fallback_that_is_not_a_slug(operator):
    text = create_configuration(operator, fallback_models="openai/gpt-4o-mini, not a slug").get_data(as_text=True)
    assert "Fallback models must be OpenRouter slugs" in text
    assert AIConfiguration.select().count() == 0
