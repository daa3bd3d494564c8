"""AI adapters: a base with shared retry logic, the OpenRouter adapter, and the factory."""
from __future__ import annotations

import base64
import email.utils
import json
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
import urllib3

from chatbot.crypto import FieldCipher, SecretDecryptionError
from chatbot.errors import AIError
from chatbot.models import AIConfiguration
from chatbot.retries import with_retries
from config import comma_list

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = {408, 429, 500, 502, 503, 504}
DEFAULT_DEADLINE = 60.0
# A retry that could only start this close to the deadline would be cut off anyway.
DEADLINE_SLACK = 0.5
MAX_ANSWER_BYTES = 4 * 1024 * 1024
READ_CHUNK = 16 * 1024
# Models' input modalities change rarely: ask OpenRouter's /models once an hour per process.
MODEL_CATALOGUE_TTL = 3600.0


@dataclass(frozen=True)
class AISettings:
    """What a request to the model needs; `source` says where it came from (db or env)."""

    api_key: str = field(repr=False)
    model: str
    max_tokens: int
    temperature: float
    system_prompt: str
    source: str
    # Tried in order when `model` fails; the reply's `model` says which one answered.
    fallback_models: tuple[str, ...] = ()
    # Name the knowledge sources an answer was given below it.
    cite_sources: bool = False
    # The stored configuration these come from (None: the environment's), and its built-in tools.
    configuration_id: int | None = None
    offer_request_human: bool = True
    offer_follow_ups: bool = True


@dataclass(frozen=True)
class Transcript:
    """What a speech-to-text model heard, and what it cost (None when the provider did not say)."""

    text: str
    model: str
    cost: float | None


@dataclass(frozen=True)
class Embeddings:
    """The vectors of a batch of texts, in the texts' order, and what computing them cost."""

    vectors: list[list[float]]
    model: str
    tokens: int
    # USD; None when the provider did not say.
    cost: float | None


@dataclass(frozen=True)
class ListedModel:
    """What OpenRouter's catalogue says of one model: what it reads, and what one token of the prompt
    and of the answer costs in USD (None: not priced, or priced per request as a router is)."""

    inputs: frozenset[str]
    prompt_price: float | None = None
    completion_price: float | None = None
    # The request parameters it takes (`supported_parameters`): "tools" when it can call tools.
    parameters: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked to be called, with its arguments (decoded JSON; {} when unreadable) and
    the id its result must carry back."""

    name: str
    arguments: dict
    id: str = ""


@dataclass(frozen=True)
class Reply:
    """The model's answer and what it cost."""

    text: str
    model: str
    usage: dict
    tool_calls: tuple[ToolCall, ...] = ()


class AIAdapter(ABC):
    """Sends a chat to a model, retrying transient failures with backoff, all within one deadline."""

    def __init__(
        self,
        settings: AISettings,
        attempts: int = 3,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        deadline: float = DEFAULT_DEADLINE,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep
        self.deadline = deadline
        self.clock = clock

    def send_message(self, messages: list[dict], until: float | None = None, tools: list[dict] | None = None,
                     tool_choice: str | None = None) -> Reply:
        """Return the model's reply to `messages` (offering it `tools`, OpenAI's function format;
        `tool_choice` "none" makes it answer in words), retrying what is transient.

        Every attempt and every wait between attempts ends by `deadline` seconds from now (or by
        `until`, a `clock()` time, when that is sooner); past it the call fails for good.
        """
        return self._with_retries(lambda seconds_left: self._complete(messages, seconds_left, tools, tool_choice),
                                  until)

    @abstractmethod
    def _complete(self, messages: list[dict], seconds_left: float, tools: list[dict] | None = None,
                  tool_choice: str | None = None) -> Reply:
        """Make one attempt at a completion that ends within `seconds_left`."""

    @abstractmethod
    def validate_credentials(self) -> dict:
        """Check the API key without spending credits; return what the provider says of it."""

    def _with_retries(self, attempt: Callable[[float], Reply], until: float | None) -> Reply:
        started = self.clock()
        ends = started + self.deadline if until is None else min(started + self.deadline, until)

        def within_deadline(error: AIError, number: int, delay: float) -> None:
            if self.clock() + (delay if number < self.attempts else 0) >= ends - DEADLINE_SLACK:
                raise AIError(f"no answer within {ends - started:.0f}s ({number} attempt(s); last: "
                              f"{error.args[0]})", retryable=False, status=error.status, code=error.code,
                              deadline_exceeded=True) from error

        return with_retries(lambda: attempt(ends - self.clock()), attempts=self.attempts, backoff=self.backoff,
                            sleep=self.sleep, label="ai", before_retry=within_deadline)


class OpenRouterAdapter(AIAdapter):
    """Chat completions from OpenRouter's OpenAI-compatible API (OpenAI, Anthropic, ... by slug)."""

    def __init__(
        self,
        settings: AISettings,
        base_url: str,
        session: requests.Session,
        site_url: str = "",
        site_name: str = "",
        timeout: tuple[float, float] = (5.0, 60.0),
        **retry_options,
    ):
        super().__init__(settings, **retry_options)
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.timeout = timeout
        self.attribution = {"HTTP-Referer": site_url, "X-Title": site_name, "X-OpenRouter-Title": site_name}

    def _headers(self) -> dict:
        if not self.settings.api_key:
            raise AIError("no API key configured (set OPENROUTER_API_KEY or an active AI configuration)",
                          retryable=False)
        headers = {"Authorization": f"Bearer {self.settings.api_key}"}
        headers.update({name: value for name, value in self.attribution.items() if value})
        return headers

    def _complete(self, messages: list[dict], seconds_left: float, tools: list[dict] | None = None,
                  tool_choice: str | None = None) -> Reply:
        payload = {
            "model": self.settings.model,
            "messages": messages,
            "max_tokens": self.settings.max_tokens,
            "temperature": self.settings.temperature,
        }
        if self.settings.fallback_models:
            # OpenRouter routes to the next model of the list when one fails (down, rate limited, refusing).
            payload["models"] = [self.settings.model, *self.settings.fallback_models]
        if tools:
            payload["tools"] = tools
            if tool_choice:
                payload["tool_choice"] = tool_choice
        body = self._request("POST", "/chat/completions", seconds_left=seconds_left, json=payload)
        if body.get("error"):
            raise _error_from_body(body["error"], status=200)
        choices = body.get("choices") or []
        if not choices:
            raise AIError("answer had no choices", retryable=True, status=200)
        choice = choices[0]
        if choice.get("error"):
            raise _error_from_body(choice["error"], status=200)
        message = choice.get("message") or {}
        text = (message.get("content") or "").strip()
        offered = {tool["function"]["name"] for tool in tools or ()}
        # Only a tool it was offered: a call to one it made up is no answer at all.
        calls = tuple(call for call in (_tool_call(raw) for raw in message.get("tool_calls") or ()
                                        if isinstance(raw, dict)) if call.name in offered)
        if not text and not calls:
            raise AIError("answer was empty", retryable=True, status=200)
        return Reply(text=text, model=body.get("model") or self.settings.model, usage=body.get("usage") or {},
                     tool_calls=calls)

    def transcribe(self, audio: bytes, audio_format: str, model: str, until: float | None = None) -> Transcript:
        """Return what `model` hears in `audio` (POST /audio/transcriptions), retrying what is transient."""
        payload = {"model": model, "input_audio": {"data": base64.b64encode(audio).decode("ascii"),
                                                   "format": audio_format}}

        def attempt(seconds_left: float) -> Transcript:
            body = self._request("POST", "/audio/transcriptions", seconds_left=seconds_left, json=payload)
            text = str(body.get("text") or "").strip()
            if not text:
                raise AIError("transcript was empty", retryable=False, status=200)
            cost = (body.get("usage") or {}).get("cost")
            return Transcript(text=text, model=model, cost=cost if isinstance(cost, (int, float)) else None)

        return self._with_retries(attempt, until)

    def embed(self, texts: list[str], model: str, dimensions: int = 0, until: float | None = None) -> Embeddings:
        """Return `model`'s vector of each of `texts` (POST /embeddings), `dimensions` long when
        given, retrying what is transient."""
        payload = {"model": model, "input": texts, **({"dimensions": dimensions} if dimensions else {})}

        def attempt(seconds_left: float) -> Embeddings:
            body = self._request("POST", "/embeddings", seconds_left=seconds_left, json=payload)
            if body.get("error"):
                raise _error_from_body(body["error"], status=200)
            rows = body.get("data")
            if not isinstance(rows, list) or len(rows) != len(texts):
                raise AIError(f"embeddings answer had {len(rows) if isinstance(rows, list) else 'no'} vectors "
                              f"for {len(texts)} texts", retryable=True, status=200)
            try:
                ordered = sorted(rows, key=lambda row: row["index"])
                vectors = [[float(value) for value in row["embedding"]] for row in ordered]
            except (KeyError, TypeError, ValueError) as exc:
                raise AIError("embeddings answer was malformed", retryable=True, status=200) from exc
            if len({len(vector) for vector in vectors}) > 1 or not vectors[0]:
                raise AIError("embeddings answer mixed vector sizes", retryable=True, status=200)
            usage = body.get("usage") or {}
            cost = usage.get("cost")
            return Embeddings(vectors=vectors, model=model, tokens=int(usage.get("prompt_tokens") or 0),
                              cost=cost if isinstance(cost, (int, float)) else None)

        return self._with_retries(attempt, until)

    def listed_models(self) -> dict[str, ListedModel]:
        """Return what each offered model takes as input (`architecture.input_modalities`) and what
        its tokens cost (`pricing`), from GET /models."""
        models = self._request("GET", "/models").get("data")
        if not isinstance(models, list):
            raise AIError("model list was not a list", retryable=True, status=200)
        return {
            model["id"]: ListedModel(
                inputs=frozenset((model.get("architecture") or {}).get("input_modalities") or ("text",)),
                prompt_price=_token_price(model.get("pricing"), "prompt"),
                completion_price=_token_price(model.get("pricing"), "completion"),
                parameters=frozenset(model.get("supported_parameters") or ()),
            )
            for model in models if isinstance(model, dict) and model.get("id")
        }

    def validate_credentials(self) -> dict:
        """Describe the key (GET /key); spends no credits."""
        return self._request("GET", "/key").get("data", {})

    def list_models(self) -> set[str]:
        """Return the slugs of the models OpenRouter offers (GET /models); spends no credits."""
        models = self._request("GET", "/models").get("data")
        if not isinstance(models, list):
            raise AIError("model list was not a list", retryable=True, status=200)
        return {model["id"] for model in models if isinstance(model, dict) and model.get("id")}

    def _request(self, method: str, path: str, seconds_left: float | None = None, **kwargs) -> dict:
        """Make one request; with `seconds_left`, the whole exchange (body included) ends by then."""
        connect_timeout, read_timeout = self.timeout
        ends = None
        if seconds_left is not None:
            ends = self.clock() + seconds_left
            connect_timeout = max(0.01, min(connect_timeout, seconds_left))
            read_timeout = max(0.01, min(read_timeout, seconds_left))
        try:
            response = self.session.request(method, self.base_url + path, headers=self._headers(),
                                            timeout=(connect_timeout, read_timeout), stream=True, **kwargs)
            try:
                raw = self._read_body(response, ends)
            finally:
                response.close()
        except requests.Timeout as exc:
            raise AIError(f"timed out after {read_timeout:g}s", retryable=True) from exc
        except requests.RequestException as exc:
            raise AIError(f"could not connect: {exc.__class__.__name__}", retryable=True) from exc
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if response.status_code != 200:
            error = _error_from_body(
                body.get("error") if isinstance(body, dict) else None,
                status=response.status_code,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
            raise error
        if not isinstance(body, dict):
            raise AIError("answer was not JSON", retryable=True, status=200)
        return body

    def _read_body(self, response: requests.Response, ends: float | None) -> bytes:
        """Read the body as it arrives, so a provider that trickles bytes cannot outlast the deadline."""
        chunks, size = [], 0
        try:
            # read1 returns what has arrived; iter_content would wait to fill each whole chunk.
            while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise AIError(f"answer was larger than {MAX_ANSWER_BYTES} bytes", retryable=True,
                                  status=response.status_code)
                if ends is not None and self.clock() > ends:
                    raise AIError("timed out while reading the answer", retryable=True,
                                  status=response.status_code)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise requests.Timeout(str(exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.ConnectionError(str(exc)) from exc
        return b"".join(chunks)


def _error_from_body(error: dict | None, status: int, retry_after: float | None = None) -> AIError:
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    effective = code if isinstance(code, int) else status
    message = str(error.get("message") or f"HTTP {status}")[:300]
    retryable = effective in RETRYABLE_STATUSES or (status == 200 and not isinstance(code, int))
    return AIError(message, retryable=retryable, status=status, code=code, retry_after=retry_after)


def _token_price(pricing, kind: str) -> float | None:
    """Read one of a listed model's per-token prices (USD, sent as a string); OpenRouter's routers
    list -1, a price known only once a model is chosen."""
    try:
        price = float((pricing or {}).get(kind))
    except (TypeError, ValueError, AttributeError):
        return None
    return price if math.isfinite(price) and price >= 0 else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class ModelCatalogue:
    """What each model takes as input and costs, asked of OpenRouter at most once per `ttl` seconds per process."""

    def __init__(self, ttl: float = MODEL_CATALOGUE_TTL, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._models: dict[str, ListedModel] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def models(self, adapter: OpenRouterAdapter) -> dict[str, ListedModel]:
        """Return every listed model, from the cache while it is fresh."""
        with self._lock:
            if self._fetched_at is None or self.clock() - self._fetched_at > self.ttl:
                self._models = adapter.listed_models()
                self._fetched_at = self.clock()
            return self._models

    def takes(self, adapter: OpenRouterAdapter, model: str, modality: str) -> bool:
        """Whether `model` accepts `modality` input; a model the catalogue does not list is given the
        benefit of the doubt (its provider refuses what it cannot read)."""
        try:
            models = self.models(adapter)
        except AIError as error:
            # The model itself may still read it: an unanswered catalogue must not stop the message.
            log.warning("model catalogue unavailable, assuming model=%s takes %s: %s", model, modality, error)
            return True
        return model not in models or modality in models[model].inputs

    def calls_tools(self, adapter: OpenRouterAdapter, model: str) -> bool:
        """Whether the catalogue says `model` takes tools; an unlisted model, or no catalogue, is
        offered none (a tool it cannot take would fail the whole answer)."""
        try:
            listed = self.models(adapter).get(model)
        except AIError as error:
            log.warning("model catalogue unavailable, no tools offered to model=%s: %s", model, error)
            return False
        return listed is not None and "tools" in listed.parameters

    def models_taking(self, adapter: OpenRouterAdapter, modality: str, limit: int = 3) -> list[str]:
        """Return up to `limit` model slugs that accept `modality` input, for an operator's hint."""
        return sorted(slug for slug, listed in self.models(adapter).items() if modality in listed.inputs)[:limit]

    def prices(self, adapter: OpenRouterAdapter, model: str) -> tuple[float, float] | None:
        """Return what one prompt token and one answer token of `model` cost in USD; None when the
        catalogue does not price it or cannot be read."""
        try:
            listed = self.models(adapter).get(model)
        except AIError as error:
            log.warning("model catalogue unavailable, no price list for model=%s: %s", model, error)
            return None
        if listed is None or listed.prompt_price is None or listed.completion_price is None:
            return None
        return listed.prompt_price, listed.completion_price


class AIAdapterFactory:
    """Builds the adapter for the active AI configuration, else for the environment's settings."""

    def __init__(self, config, cipher: FieldCipher, session: requests.Session, **adapter_options):
        self.config = config
        self.cipher = cipher
        self.session = session
        self.adapter_options = adapter_options
        self.catalogue = ModelCatalogue()

    def settings(self) -> AISettings:
        """Return the settings in force now (read on every message, so changes need no restart)."""
        active = AIConfiguration.active()
        return self.settings_for(active) if active is not None else self.environment_settings()

    def settings_for(self, configuration: AIConfiguration) -> AISettings:
        """Return the settings of a stored configuration; what it leaves empty comes from the environment."""
        try:
            stored_key = configuration.api_key(self.cipher)
        except SecretDecryptionError as exc:
            raise AIError(f"AI configuration {configuration.name!r}: {exc}", retryable=False) from exc
        return AISettings(
            api_key=stored_key or self.config.openrouter_api_key,
            model=configuration.model_name,
            max_tokens=configuration.max_tokens,
            temperature=configuration.temperature,
            system_prompt=configuration.system_prompt or self.config.ai_system_prompt,
            source=f"db:{configuration.name}",
            fallback_models=comma_list(configuration.fallback_models),
            cite_sources=bool(configuration.cite_sources),
            configuration_id=configuration.id,
            offer_request_human=bool(configuration.offer_request_human),
            offer_follow_ups=bool(configuration.offer_follow_ups),
        )

    def environment_settings(self) -> AISettings:
        """Return the settings from the environment (used when no configuration is active)."""
        return AISettings(
            api_key=self.config.openrouter_api_key,
            model=self.config.ai_model,
            max_tokens=self.config.ai_max_tokens,
            temperature=self.config.ai_temperature,
            system_prompt=self.config.ai_system_prompt,
            source="env",
            fallback_models=self.config.ai_fallback_models,
        )

    def current(self, configuration_id: int | None = None) -> AIAdapter:
        """Return an adapter for the settings in force now: those of the configuration
        `configuration_id` (a number's own) when given and still stored, else the active ones."""
        configuration = AIConfiguration.get_or_none(AIConfiguration.id == configuration_id) \
            if configuration_id is not None else None
        return self.adapter(self.settings_for(configuration) if configuration is not None else self.settings())

    def adapter(self, settings: AISettings, **options) -> AIAdapter:
        """Return an adapter for `settings`; `options` override the adapter options (e.g. timeout)."""
        return OpenRouterAdapter(
            settings,
            base_url=self.config.openrouter_base_url,
            session=self.session,
            site_url=self.config.public_base_url,
            site_name=self.config.site_name,
            **{"deadline": self.config.ai_deadline, **self.adapter_options, **options},
        )


def _tool_call(call: dict) -> ToolCall:
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        arguments = {}
    return ToolCall(name=str(function.get("name") or ""), arguments=arguments if isinstance(arguments, dict) else {},
                    id=str(call.get("id") or ""))
