"""The OpenRouter adapter and its factory, over real HTTP against the loopback fake."""
from __future__ import annotations

import time

import pytest
import requests
from cryptography.fernet import Fernet

from chatbot.ai import AISettings, ModelCatalogue, OpenRouterAdapter
from chatbot.crypto import FieldCipher
from chatbot.errors import AIError
from chatbot.models import AIConfiguration
from tests.conftest import PUBLIC_BASE_URL, free_port
from tests.fakes import FakeOpenRouter, Scripted

API_KEY = "sk-or-v1-unit-test-key"
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]


class RecordingSleep:
    """Stands in for time.sleep: remembers each delay and returns at once."""

    def __init__(self):
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def ai_settings(**changes) -> AISettings:
    values = dict(api_key=API_KEY, model="openai/gpt-4o-mini", max_tokens=321, temperature=0.25,
                  system_prompt="Be brief.", source="test")
    return AISettings(**{**values, **changes})


@pytest.fixture
def sleep():
    return RecordingSleep()


@pytest.fixture
def make_adapter(fake_openrouter, sleep):
    """Build an adapter aimed at the fake; keyword arguments override settings or adapter options."""
    sessions = []

    def make(base_url: str | None = None, settings: AISettings | None = None, **options):
        session = requests.Session()
        sessions.append(session)
        options = {"site_url": PUBLIC_BASE_URL, "site_name": "Test Bot", "backoff": 1.0,
                   "sleep": sleep, **options}
        return OpenRouterAdapter(settings or ai_settings(), base_url=base_url or fake_openrouter.url + "/api/v1",
                                 session=session, **options)

    yield make
    for session in sessions:
        session.close()


def lower_keys(headers: dict) -> dict:
    return {name.lower(): value for name, value in headers.items()}


def test_completion_is_posted_with_auth_attribution_and_settings(make_adapter, fake_openrouter):
    reply = make_adapter().send_message(QUESTION)

    [request] = fake_openrouter.requests
    headers = lower_keys(request.headers)
    assert (request.method, request.path) == ("POST", "/api/v1/chat/completions")
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["http-referer"] == PUBLIC_BASE_URL
    assert headers["x-title"] == "Test Bot"
    assert headers["x-openrouter-title"] == "Test Bot"
    assert request.body == {"model": "openai/gpt-4o-mini", "messages": QUESTION,
                            "max_tokens": 321, "temperature": 0.25}
    assert reply.text == "Answer to: Capital of France?"


def test_reply_carries_the_model_that_ran_and_the_usage(make_adapter, fake_openrouter):
    fake_openrouter.then(Scripted(200, FakeOpenRouter.completion("  Paris.  ", model="openai/gpt-4o")))

    reply = make_adapter().send_message(QUESTION)

    assert reply.text == "Paris."
    assert reply.model == "openai/gpt-4o"
    assert reply.usage == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "cost": 0.00001}


def test_attribution_headers_are_left_out_when_not_configured(make_adapter, fake_openrouter):
    make_adapter(site_url="", site_name="").send_message(QUESTION)

    headers = lower_keys(fake_openrouter.requests[0].headers)
    assert "http-referer" not in headers
    assert "x-title" not in headers
    assert "x-openrouter-title" not in headers


def test_anthropic_slug_is_passed_through_unchanged(make_adapter, fake_openrouter):
    adapter = make_adapter(settings=ai_settings(model="anthropic/claude-3.5-sonnet"))

    reply = adapter.send_message(QUESTION)

    assert fake_openrouter.completions[0].body["model"] == "anthropic/claude-3.5-sonnet"
    assert reply.model == "anthropic/claude-3.5-sonnet"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_transient_status_is_retried_with_backoff_then_succeeds(status, make_adapter, fake_openrouter, sleep):
    fake_openrouter.then(FakeOpenRouter.error(status, "try again"))

    reply = make_adapter(backoff=1.0).send_message(QUESTION)

    assert reply.text == "Answer to: Capital of France?"
    assert len(fake_openrouter.completions) == 2
    [delay] = sleep.delays
    assert 0.5 <= delay <= 1.0


def test_backoff_grows_between_attempts(make_adapter, fake_openrouter, sleep):
    fake_openrouter.then(*[FakeOpenRouter.error(503, "overloaded")] * 3)

    make_adapter(attempts=4, backoff=1.0).send_message(QUESTION)

    assert len(fake_openrouter.completions) == 4
    first, second, third = sleep.delays
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 2.0
    assert 2.0 <= third <= 4.0


def test_429_is_retried_after_retry_after(make_adapter, fake_openrouter, sleep):
    fake_openrouter.then(FakeOpenRouter.error(429, "rate limited", **{"Retry-After": "2"}))

    reply = make_adapter(backoff=0.01).send_message(QUESTION)

    assert reply.text == "Answer to: Capital of France?"
    assert sleep.delays == [2]
    assert len(fake_openrouter.completions) == 2


def test_huge_retry_after_is_capped(make_adapter, fake_openrouter, sleep):
    fake_openrouter.then(FakeOpenRouter.error(429, "rate limited", **{"Retry-After": "3600"}))

    make_adapter().send_message(QUESTION)

    assert sleep.delays == [30]


@pytest.mark.parametrize("status", [400, 401, 402, 403])
def test_client_error_is_not_retried(status, make_adapter, fake_openrouter, sleep):
    fake_openrouter.then(FakeOpenRouter.error(status, "you cannot do that"))

    with pytest.raises(AIError) as caught:
        make_adapter().send_message(QUESTION)

    assert len(fake_openrouter.requests) == 1
    assert caught.value.retryable is False
    assert caught.value.status == status
    assert "you cannot do that" in str(caught.value)
    assert sleep.delays == []


def test_timed_out_attempt_is_retried(make_adapter, fake_openrouter):
    fake_openrouter.then(Scripted(200, FakeOpenRouter.completion("too late"), delay=1.0))

    reply = make_adapter(timeout=(1, 0.3), backoff=0.01).send_message(QUESTION)

    assert reply.text == "Answer to: Capital of France?"
    assert len(fake_openrouter.completions) == 2


def test_timeout_is_a_retryable_error(make_adapter, fake_openrouter):
    fake_openrouter.then(Scripted(200, FakeOpenRouter.completion("too late"), delay=1.0))

    with pytest.raises(AIError) as caught:
        make_adapter(timeout=(1, 0.3), attempts=1).send_message(QUESTION)

    assert caught.value.retryable is True
    assert "timed out" in str(caught.value)


class FakeClock:
    """A monotonic clock that moves only when the adapter sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_retries_stop_at_the_deadline_with_a_final_error(make_adapter, fake_openrouter):
    clock = FakeClock()
    fake_openrouter.then(*[FakeOpenRouter.error(503, "Provider overloaded")] * 20)

    with pytest.raises(AIError) as caught:
        make_adapter(attempts=20, backoff=1.0, deadline=5, clock=clock, sleep=clock.sleep).send_message(QUESTION)

    assert caught.value.deadline_exceeded and caught.value.retryable is False
    assert "no answer within 5s" in str(caught.value) and "Provider overloaded" in str(caught.value)
    assert sum(clock.sleeps) < 5
    assert len(fake_openrouter.completions) == len(clock.sleeps) + 1 < 20


def test_retry_after_beyond_the_deadline_is_not_waited_for(make_adapter, fake_openrouter, sleep):
    fake_openrouter.then(FakeOpenRouter.error(429, "rate limited", **{"Retry-After": "20"}))

    with pytest.raises(AIError) as caught:
        make_adapter(deadline=10).send_message(QUESTION)

    assert caught.value.deadline_exceeded
    assert sleep.delays == []
    assert len(fake_openrouter.completions) == 1


def test_attempts_used_up_before_the_deadline_stay_retryable(make_adapter, fake_openrouter):
    fake_openrouter.then(*[FakeOpenRouter.error(503, "Provider overloaded")] * 3)

    with pytest.raises(AIError) as caught:
        make_adapter(attempts=3).send_message(QUESTION)

    # The job runs again later: a quick string of 503s is not yet a reason to apologise.
    assert caught.value.retryable is True and not caught.value.deadline_exceeded


def test_trickled_answer_is_cut_off_at_the_callers_deadline(make_adapter, fake_openrouter):
    fake_openrouter.then(Scripted(200, FakeOpenRouter.completion("slowly"), drip=0.2))
    started = time.monotonic()

    with pytest.raises(AIError) as caught:
        make_adapter(deadline=60).send_message(QUESTION, until=started + 1)

    assert caught.value.deadline_exceeded and "no answer within 1s" in str(caught.value)
    assert time.monotonic() - started < 10  # the whole trickle would take over a minute


def test_connection_refused_is_a_retryable_error(make_adapter, sleep):
    adapter = make_adapter(base_url=f"http://127.0.0.1:{free_port()}/api/v1", attempts=2)

    with pytest.raises(AIError) as caught:
        adapter.send_message(QUESTION)

    assert caught.value.retryable is True
    assert "could not connect" in str(caught.value)
    assert len(sleep.delays) == 1


@pytest.mark.parametrize("answer", [
    Scripted(200, {"error": {"code": 502, "message": "provider returned error"}}),
    Scripted(200, {"id": "gen-1", "model": "openai/gpt-4o-mini", "choices": []}),
    Scripted(200, {"id": "gen-1", "model": "openai/gpt-4o-mini"}),
    Scripted(200, FakeOpenRouter.completion("")),
    Scripted(200, FakeOpenRouter.completion(" \n\t ")),
    Scripted(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]}),
    Scripted(200, {"choices": [{"index": 0, "error": {"code": 502, "message": "upstream died"}}]}),
    Scripted(200, "<html>Bad gateway</html>"),
], ids=["error-object", "empty-choices", "no-choices", "empty-content", "whitespace-content",
        "null-content", "choice-error", "not-json"])
def test_unusable_200_answer_is_an_error_not_a_reply(answer, make_adapter, fake_openrouter):
    fake_openrouter.then(answer)

    with pytest.raises(AIError) as caught:
        make_adapter(attempts=1).send_message(QUESTION)

    assert caught.value.status == 200
    assert caught.value.retryable is True


def test_unusable_200_answer_is_retried(make_adapter, fake_openrouter):
    fake_openrouter.then(Scripted(200, FakeOpenRouter.completion("   ")))

    reply = make_adapter(backoff=0.01).send_message(QUESTION)

    assert reply.text == "Answer to: Capital of France?"
    assert len(fake_openrouter.completions) == 2


def test_200_with_a_client_error_object_is_not_retried(make_adapter, fake_openrouter):
    fake_openrouter.then(Scripted(200, {"error": {"code": 400, "message": "context length exceeded"}}))

    with pytest.raises(AIError) as caught:
        make_adapter().send_message(QUESTION)

    assert caught.value.retryable is False
    assert caught.value.code == 400
    assert len(fake_openrouter.requests) == 1


def test_attempts_are_bounded(make_adapter, fake_openrouter, sleep):
    fake_openrouter.then(*[FakeOpenRouter.error(503, "overloaded")] * 5)

    with pytest.raises(AIError) as caught:
        make_adapter(attempts=3, backoff=0.01).send_message(QUESTION)

    assert len(fake_openrouter.requests) == 3
    assert len(sleep.delays) == 2
    assert caught.value.status == 503
    assert caught.value.retryable is True


def test_missing_api_key_fails_without_a_request(make_adapter, fake_openrouter):
    adapter = make_adapter(settings=ai_settings(api_key=""))

    with pytest.raises(AIError) as caught:
        adapter.send_message(QUESTION)

    assert caught.value.retryable is False
    assert "OPENROUTER_API_KEY" in str(caught.value)
    assert fake_openrouter.requests == []


def test_validate_credentials_reads_the_key_description(make_adapter, fake_openrouter):
    described = make_adapter().validate_credentials()

    [request] = fake_openrouter.requests
    assert (request.method, request.path) == ("GET", "/api/v1/key")
    assert lower_keys(request.headers)["authorization"] == f"Bearer {API_KEY}"
    assert described == {"label": "sk-or-v1-abc...", "usage": 0.5, "limit": None}


def test_validate_credentials_with_a_bad_key_is_a_permanent_error(make_adapter, fake_openrouter):
    fake_openrouter.then(FakeOpenRouter.error(401, "No auth credentials found"))

    with pytest.raises(AIError) as caught:
        make_adapter().validate_credentials()

    assert caught.value.retryable is False
    assert caught.value.status == 401
    assert len(fake_openrouter.requests) == 1


def test_list_models_returns_the_slugs_on_offer(make_adapter, fake_openrouter):
    assert make_adapter().list_models() == {"openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet"}
    assert [(r.method, r.path) for r in fake_openrouter.requests] == [("GET", "/api/v1/models")]


def test_list_models_rejects_an_answer_without_a_list(make_adapter, fake_openrouter):
    fake_openrouter.models_error = Scripted(200, {"data": "nope"})
    with pytest.raises(AIError, match="model list was not a list"):
        make_adapter().list_models()


def store_configuration(cipher: FieldCipher | None, api_key: str = "sk-or-v1-from-db", active: bool = True,
                        **fields) -> AIConfiguration:
    values = dict(name="claude", model_name="anthropic/claude-3.5-sonnet", max_tokens=777,
                  temperature=1.3, system_prompt="You are the database's assistant.")
    configuration = AIConfiguration(**{**values, **fields})
    if cipher is not None:
        configuration.set_api_key(api_key, cipher)
    configuration.save()
    if active:
        configuration.activate()
    return configuration


@pytest.mark.postgres
def test_factory_uses_the_active_configuration(services, fake_openrouter):
    store_configuration(services.cipher, name="old", model_name="openai/gpt-4o")
    store_configuration(services.cipher, name="claude")

    settings = services.ai_factory.settings()
    services.ai_factory.current().send_message(QUESTION)

    assert settings.source == "db:claude"
    assert settings.system_prompt == "You are the database's assistant."
    [request] = fake_openrouter.requests
    assert lower_keys(request.headers)["authorization"] == "Bearer sk-or-v1-from-db"
    assert request.body["model"] == "anthropic/claude-3.5-sonnet"
    assert request.body["max_tokens"] == 777
    assert request.body["temperature"] == 1.3


@pytest.mark.postgres
def test_stored_key_is_encrypted_in_the_database(services):
    configuration = store_configuration(services.cipher)

    stored = AIConfiguration.get_by_id(configuration.id).api_key_encrypted
    assert "sk-or-v1-from-db" not in stored
    assert services.cipher.decrypt(stored) == "sk-or-v1-from-db"


def test_factory_falls_back_to_the_environment_without_an_active_configuration(services, fake_openrouter):
    store_configuration(services.cipher, active=False)

    settings = services.ai_factory.settings()
    services.ai_factory.current().send_message(QUESTION)

    assert settings.source == "env"
    assert settings.system_prompt == "You are a test assistant."
    [request] = fake_openrouter.requests
    assert lower_keys(request.headers)["authorization"] == "Bearer sk-or-v1-test-key"
    assert request.body["model"] == "openai/gpt-4o-mini"


def test_active_configuration_without_key_or_prompt_borrows_them_from_the_environment(services, fake_openrouter):
    store_configuration(None, system_prompt="")

    settings = services.ai_factory.settings()
    services.ai_factory.current().send_message(QUESTION)

    assert settings.source == "db:claude"
    assert settings.system_prompt == "You are a test assistant."
    assert lower_keys(fake_openrouter.requests[0].headers)["authorization"] == "Bearer sk-or-v1-test-key"
    assert fake_openrouter.requests[0].body["model"] == "anthropic/claude-3.5-sonnet"


def test_settings_for_an_inactive_configuration(services):
    store_configuration(services.cipher, name="spare", active=False, system_prompt="")

    settings = services.ai_factory.settings_for(AIConfiguration.get(AIConfiguration.name == "spare"))

    assert (settings.source, settings.api_key, settings.model) == ("db:spare", "sk-or-v1-from-db",
                                                                   "anthropic/claude-3.5-sonnet")
    assert settings.system_prompt == "You are a test assistant."
    assert services.ai_factory.settings().source == "env"


@pytest.mark.postgres
def test_key_encrypted_under_another_fernet_key_is_a_permanent_error(services, fake_openrouter):
    stranger = FieldCipher(Fernet.generate_key().decode())
    store_configuration(stranger)

    with pytest.raises(AIError) as caught:
        services.ai_factory.current()

    assert caught.value.retryable is False
    assert "claude" in str(caught.value)
    assert fake_openrouter.requests == []


def test_transcription_posts_the_audio_as_base64_json(make_adapter, fake_openrouter):
    transcript = make_adapter().transcribe(b"OggS-voice", "ogg", "openai/whisper-1")
    assert transcript.text == fake_openrouter.transcript
    assert transcript.cost == pytest.approx(0.0002)
    request = fake_openrouter.transcriptions[-1]
    assert lower_keys(request.headers)["authorization"] == f"Bearer {API_KEY}"
    assert request.body == {"model": "openai/whisper-1", "input_audio": {"data": "T2dnUy12b2ljZQ==", "format": "ogg"}}


def test_transcription_without_a_reported_cost_has_an_unknown_cost(make_adapter, fake_openrouter):
    fake_openrouter.transcription_cost = None
    assert make_adapter().transcribe(b"audio", "mp3", "openai/whisper-1").cost is None


def test_empty_transcript_is_a_permanent_error(make_adapter, fake_openrouter):
    fake_openrouter.transcript = ""
    with pytest.raises(AIError, match="transcript was empty"):
        make_adapter().transcribe(b"audio", "ogg", "openai/whisper-1")


def test_model_inputs_and_prices_come_from_the_catalogue(make_adapter, fake_openrouter):
    fake_openrouter.input_modalities["meta-llama/llama-3-8b-instruct"] = ["text"]
    fake_openrouter.pricing["openai/gpt-4o-mini"] = {"prompt": "0.00000015", "completion": "0.0000006"}
    fake_openrouter.pricing["openrouter/auto"] = {"prompt": "-1", "completion": "-1"}
    fake_openrouter.input_modalities["openrouter/auto"] = ["text"]
    listed = make_adapter().listed_models()
    assert listed["openai/gpt-4o-mini"].inputs == {"text", "image", "file"}
    assert (listed["openai/gpt-4o-mini"].prompt_price, listed["openai/gpt-4o-mini"].completion_price) == (
        0.00000015, 0.0000006)
    assert listed["meta-llama/llama-3-8b-instruct"].inputs == {"text"}
    assert listed["meta-llama/llama-3-8b-instruct"].prompt_price is None  # not priced
    assert listed["openrouter/auto"].completion_price is None  # a router's price is the model it picks


def test_model_catalogue_is_asked_once_per_ttl(make_adapter, fake_openrouter):
    now = [0.0]
    catalogue, adapter = ModelCatalogue(ttl=3600, clock=lambda: now[0]), make_adapter()
    assert catalogue.takes(adapter, "openai/gpt-4o-mini", "image")
    fake_openrouter.input_modalities["openai/gpt-4o-mini"] = ["text"]
    assert catalogue.takes(adapter, "openai/gpt-4o-mini", "image")
    now[0] = 3601.0
    assert not catalogue.takes(adapter, "openai/gpt-4o-mini", "image")
    assert len([r for r in fake_openrouter.requests if r.path.endswith("/models")]) == 2
