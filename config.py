"""Settings: the only reader of the environment and `.env`."""
from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.fernet import Fernet
from dotenv import dotenv_values

PROJECT_DIR = Path(__file__).resolve().parent
INSTANCE_DIR = PROJECT_DIR / "instance"
DEFAULT_DATABASE_URL = f"sqlite:///{INSTANCE_DIR / 'chatbot.sqlite3'}"


def deployment_metrics_dir(database_url: str) -> str:
    """Where a deployment's processes on one machine (gunicorn's workers, worker.py) write their
    metrics for /metrics to add up, unless PROMETHEUS_MULTIPROC_DIR says: a folder of its own, so two
    deployments on one machine never add up, nor delete, each other's counts. Beside an SQLite
    database's file (the processes sharing that file are the deployment); for a database server, in
    the instance folder, named by the database's URL."""
    parsed = urlparse(database_url)
    if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
        # As the database's own path is read (chatbot/models/db.py): sqlite:////srv/bot.db is /srv/bot.db.
        return "/" + parsed.path.lstrip("/") + ".metrics"
    return str(INSTANCE_DIR / f"metrics-{hashlib.sha256(database_url.encode()).hexdigest()[:12]}")


DEFAULT_METRICS_DIR = deployment_metrics_dir(DEFAULT_DATABASE_URL)
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant answering on WhatsApp. Keep answers short and clear, in short "
    "paragraphs, and answer in the language the user writes in. Use WhatsApp formatting only: "
    "*bold*, _italic_, ~strikethrough~, `code`, ``` for code blocks, and lists with \"- \" or "
    "\"1. \". No tables, no headings, no Markdown links: write a link as its plain address."
)

ACCOUNT_SID_SHAPE = re.compile(r"^AC[0-9a-fA-F]{32}$")
WHATSAPP_ADDRESS_SHAPE = re.compile(r"^whatsapp:\+[1-9][0-9]{6,14}$")
# A Twilio Content API template's sid: what WhatsApp accepts outside the 24-hour window.
CONTENT_SID_SHAPE = re.compile(r"^HX[0-9a-f]{32}$")
# Past this many seconds of waiting for the rest of a burst, people notice the wait more than the answers.
MAX_COALESCE_SECONDS = 30
# One worker process's jobs share its CPU and its database connection pool; past this, add processes.
MAX_WORKER_CONCURRENCY = 256
# Below the job's own deadline (chatbot.jobs.tasks.JOB_DEADLINE), so a stuck model still leaves time to apologise.
MAX_AI_DEADLINE = 120
# RQ's own default maintenance interval: a worker never looks for abandoned jobs less often than this.
MAX_WORKER_INTERVAL = 600
# No longer than a job waits for a conversation that another job holds (chatbot.jobs.locks.LOCK_WAIT):
# a killed worker's lock must be gone before the job handed on gives up waiting for it.
MAX_CONVERSATION_LOCK_TTL = 30
# Below the 15 s Twilio waits for the webhook's answer: a writer that cannot get its turn to write to
# SQLite by then answers 503, and Twilio delivers the message again, instead of Twilio giving up.
MAX_SQLITE_WRITER_WAIT = 14.0
# A century: far past any retention promise, and it keeps the cleanup's cutoff date computable.
MAX_RETENTION_DAYS = 36500
# A week, in minutes: a longer TAKEOVER_TIMEOUT would be no timeout (0) in all but name.
MAX_TAKEOVER_TIMEOUT = 7 * 24 * 60
# Each part of a reply arrives as its own WhatsApp message: past this many a reply is a flood.
MAX_REPLY_PARTS_CEILING = 50
# Twilio takes up to 80 messages a second from one sender on request; past this a rate is a typo.
MAX_CAMPAIGN_RATE = 100
# A larger audience is refused: a typo or the wrong file, and a day's sending at the default rate.
MAX_CAMPAIGN_RECIPIENTS_CEILING = 1_000_000
# Knowledge bounds: passages past this many tokens crowd out the conversation; a file past this
# many bytes is held whole in the database and in a worker's memory while it is read.
MAX_KNOWLEDGE_TOKENS = 20_000
MAX_KNOWLEDGE_FILE_BYTES = 100 * 1024 * 1024
MAX_KNOWLEDGE_PAGES = 1000
# Who may talk to the bot: everyone, only the listed numbers, or everyone but the listed numbers.
ACCESS_MODES = ("open", "allowlist", "blocklist")
DEFAULT_ACCESS_NOTICE = "Sorry, this assistant isn't available to you."
E164_SHAPE = re.compile(r"^\+[1-9][0-9]{6,14}$")
# Written between a number's digits by people and phone books; never part of the number.
PHONE_PUNCTUATION = re.compile(r"[-.()/]")


def whatsapp_address(text: str) -> str:
    """Return `text` as the `whatsapp:+E.164` address Twilio uses when it is given as `+E.164`;
    anything else is returned stripped, for the shape check to name what is wrong."""
    address = text.strip()
    return "whatsapp:" + address if address.startswith("+") else address


def e164(number: str) -> str | None:
    """Return `+15551234567` for `+15551234567`, `whatsapp:+1-555-123-4567` and the like; None when
    it is not an E.164 number."""
    text = number.strip()
    if text.lower().startswith("whatsapp:"):
        text = text[len("whatsapp:"):]
    text = PHONE_PUNCTUATION.sub("", text)
    return text if E164_SHAPE.match(text) else None


class ConfigError(Exception):
    """One or more settings are missing or malformed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


# What a WhatsApp user writes (the whole message, any case) for each command the bot answers itself.
DEFAULT_USER_COMMANDS = {"reset": "/reset", "help": "/help", "stop": "STOP", "start": "START",
                         "forget": "/forget", "confirm": "YES", "human": "/human"}
DEFAULT_HANDOFF_PHRASES = ("talk to a human", "talk to a person", "speak to a human", "speak to a person",
                           "speak to someone", "talk to someone", "real person", "human agent", "live agent",
                           "customer service representative")
DEFAULT_HANDOFF_MESSAGE = ("I've asked a person from our team to take over. They'll answer you here as soon as "
                           "they can.")
DEFAULT_HANDOFF_MESSAGE_OUT_OF_HOURS = ("I've asked a person from our team to take over. They're away right now "
                                        "({hours}); they'll answer you here when they're back.")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BUSINESS_HOURS_SHAPE = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)(?:-(mon|tue|wed|thu|fri|sat|sun))?\s+"
                                  r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$", re.IGNORECASE)


def parse_business_hours(text: str) -> tuple[tuple[int, int, int], ...]:
    """Read `Mon-Fri 09:00-17:30, Sat 10:00-14:00` into (weekday, first minute, end minute) spans,
    Monday 0; raise ValueError saying what is wrong."""
    spans = []
    for item in comma_list(text):
        match = BUSINESS_HOURS_SHAPE.match(item)
        if not match:
            raise ValueError(f"{item!r} is not like 'Mon-Fri 09:00-17:30'")
        first, last = WEEKDAYS.index(match[1].lower()), WEEKDAYS.index((match[2] or match[1]).lower())
        start, end = int(match[3]) * 60 + int(match[4]), int(match[5]) * 60 + int(match[6])
        if end <= start or end > 24 * 60:
            raise ValueError(f"{item!r} ends before it starts")
        days = range(first, last + 1) if first <= last else [*range(first, 7), *range(0, last + 1)]
        spans += [(day, start, end) for day in days]
    return tuple(spans)


# An OpenRouter model slug, `vendor/model` (with an optional `:variant`). The one home of the rule:
# settings here and AI configurations (chatbot/models/settings.py) both use it.
MODEL_SLUG_SHAPE = re.compile(r"^[a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._:+-]*$")


def comma_list(text: str | None) -> tuple[str, ...]:
    """Return the items of a comma-separated setting, stripped, empty ones left out, in order."""
    return tuple(filter(None, (item.strip() for item in (text or "").split(","))))


def fallback_models_problem(value: str) -> str | None:
    """Say what is wrong with a comma-separated list of fallback model slugs, or None."""
    slugs = comma_list(value)
    unknown = [slug for slug in slugs if not MODEL_SLUG_SHAPE.match(slug)]
    if unknown:
        return (f"Fallback models must be OpenRouter slugs separated by commas, such as "
                f"anthropic/claude-3.5-sonnet,openai/gpt-4o-mini (not {unknown[0]!r}).")
    return None


@dataclass(frozen=True)
class Config:
    """Typed, validated settings for every process."""

    secret_key: str
    field_encryption_key: str
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = "redis://127.0.0.1:6379/0"
    twilio_account_sid: str = ""
    twilio_auth_token: str = field(default="", repr=False)
    twilio_whatsapp_number: str = ""
    twilio_api_base_url: str = ""
    public_base_url: str = ""
    openrouter_api_key: str = field(default="", repr=False)
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    ai_model: str = "openai/gpt-4o-mini"
    # Tried in order when the model fails (OpenRouter's `models` list); used when no configuration is active.
    ai_fallback_models: tuple[str, ...] = ()
    ai_max_tokens: int = 500
    ai_temperature: float = 0.7
    ai_system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_context_messages: int = 20
    conversation_ttl: int = 86400
    site_name: str = "WhatsApp AI Assistant"
    rate_limit_messages: int = 20
    rate_limit_window: int = 60
    rate_limit_global: int = 1000
    max_inbound_chars: int = 4096
    # WhatsApp's own limit on a media file; a larger one is refused before it is read to the end.
    max_media_bytes: int = 16 * 1024 * 1024
    # What one message's files may add up to; the files past it are skipped and named to the user.
    max_media_bytes_per_message: int = 20 * 1024 * 1024
    # Attachment bytes one worker process holds in memory at once (building requests); more waits.
    max_media_bytes_in_memory: int = 40 * 1024 * 1024
    # Lets media redirects (and other URLs an outsider may pick) reach loopback and private addresses;
    # link-local and cloud metadata addresses stay refused.
    allow_private_hosts: bool = False
    # OpenRouter's embeddings model for knowledge passages and questions; changing it re-embeds everything.
    embedding_model: str = "openai/text-embedding-3-small"
    # Asks the embeddings model for vectors this long; 0 takes the model's own length. text-embedding-3
    # models shorten theirs on request and lose little by it: 512 of their 1536 take a third of the
    # memory and of the time a question's search takes (docs/knowledge.md#limits).
    embedding_dimensions: int = 512
    # Tokens of knowledge passages given with one question (an estimate: about 4 characters a token).
    knowledge_max_tokens: int = 800
    # The largest file (or all the pages of one web source together) that is indexed.
    knowledge_max_file_bytes: int = 10 * 1024 * 1024
    # Pages of a sitemap indexed at most.
    knowledge_max_pages: int = 50
    # Seconds a knowledge page fetch may take.
    knowledge_fetch_timeout: int = 15
    # A question whose best passage scores below this (cosine similarity) is listed as not covered.
    knowledge_min_score: float = 0.3
    # A question this similar to an approved one is answered with its approved answer, with no model call.
    approved_answer_min_score: float = 0.85
    # OpenRouter's speech-to-text model for voice notes.
    transcription_model: str = "openai/whisper-1"
    # What a customer writes to be handed to a person (matched anywhere in a message, any case).
    handoff_phrases: tuple[str, ...] = DEFAULT_HANDOFF_PHRASES
    # Consecutive failed or "not covered" answers in a conversation that call a person; 0 never does.
    handoff_after_failures: int = 3
    # Rounds of tool calls one answer may take before the model must answer with what it has.
    tool_max_rounds: int = 3
    # Minutes a conversation stays quiet after an AI answer before the customer is asked to rate it; 0 never asks.
    rating_after_minutes: int = 0
    # A quick-reply content template (HX…) that asks for the rating with buttons; empty: asked as text.
    rating_template_sid: str = ""
    # Template messages a campaign sends per second from one number (Twilio's default WhatsApp throughput).
    campaign_rate: float = 10.0
    # The largest audience a campaign may have; a larger one is refused when the campaign is created.
    campaign_max_recipients: int = 10_000
    handoff_message: str = DEFAULT_HANDOFF_MESSAGE
    handoff_message_out_of_hours: str = DEFAULT_HANDOFF_MESSAGE_OUT_OF_HOURS
    # When a person answers, in ADMIN_TIMEZONE (the text as set, and as spans); empty: always.
    business_hours: str = ""
    business_hours_spans: tuple = ()
    # Where a handoff is announced: a Slack- or Teams-compatible incoming webhook, and/or e-mail.
    notify_webhook_url: str = field(default="", repr=False)
    smtp_url: str = field(default="", repr=False)
    notify_emails: tuple[str, ...] = ()
    notify_from: str = ""
    # Minutes after which a handoff nobody claimed is announced again; 0 never.
    handoff_remind_minutes: int = 30
    # Every admin user must enrol a second factor (TOTP) at their next login.
    require_2fa: bool = False
    max_reply_parts: int = 10
    max_request_bytes: int = 64 * 1024
    force_https: bool = False
    # 0 trusts no X-Forwarded-* header: with nothing in front, any client could write them.
    trusted_proxies: int = 0
    alert_webhook_url: str = field(default="", repr=False)
    redis_tls_verify: bool = True
    worker_concurrency: int = 32
    # A worker renews its own and its running jobs' heartbeats every interval; a job whose heartbeat is
    # the grace overdue counts as abandoned (its worker died), and each worker's maintenance pass hands
    # abandoned jobs on: a killed worker's message is taken up again within about the sum of the three.
    worker_heartbeat_interval: int = 5
    worker_heartbeat_grace: int = 10
    worker_maintenance_interval: int = 5
    # Seconds between the scheduler's looks for due periodic jobs, and between its tries while Redis is down.
    scheduler_poll_interval: int = 5
    # Seconds a conversation stays locked after its job's worker stopped renewing the lock (was killed).
    conversation_lock_ttl: int = 20
    # Seconds a write to an SQLite database waits for its turn before it fails as "database unavailable".
    sqlite_writer_wait: float = 10.0
    ai_deadline: int = 60
    max_processing_attempts: int = 5
    retention_days: int = 90
    webhook_log_retention_days: int = 14
    # Minutes of silence after which a taken-over conversation goes back to the bot; 0 never does.
    takeover_timeout: int = 0
    # Seconds a sender's quick messages are gathered to be answered as one; 0 answers each at once.
    coalesce_seconds: int = 0
    # The approved template that carries the default number's replies past WhatsApp's 24-hour window.
    window_template_sid: str = ""
    access_mode: str = "open"
    # E.164 numbers (`+15551234567`), merged with the ones the admin keeps for the mode in force.
    access_list: tuple[str, ...] = ()
    # The one notice a day a sender who is not allowed gets; empty keeps the bot silent.
    access_notice: str = DEFAULT_ACCESS_NOTICE
    # USD caps on what answers may cost (None: no cap); the operator can override them in the admin.
    budget_per_sender_daily: float | None = None
    budget_monthly: float | None = None
    user_commands: dict = field(default_factory=lambda: dict(DEFAULT_USER_COMMANDS))
    # Empty turns /metrics off (404).
    metrics_token: str = field(default="", repr=False)
    metrics_dir: str = DEFAULT_METRICS_DIR
    # The IANA zone the admin dashboard counts hours and days in, and names beside its times.
    admin_timezone: str = "UTC"

    @classmethod
    def from_env(cls, environ: dict | None = None, dotenv_path: str | Path | None = None,
                 serving_web: bool = False) -> Config:
        """Read `.env` and the environment (which wins), validate, and return typed settings."""
        return cls.from_mapping(_environment(dotenv_path) if environ is None else environ, serving_web=serving_web)

    @classmethod
    def from_env_or_exit(cls, serving_web: bool = False) -> Config:
        """Read the settings as a process starts; invalid ones end it with their list, one line each
        (exit status 1), not a traceback that would bury what to fix."""
        try:
            return cls.from_env(serving_web=serving_web)
        except ConfigError as error:
            sys.exit(str(error))

    @classmethod
    def from_mapping(cls, values: dict, serving_web: bool = False) -> Config:
        """Validate a mapping of variable names to strings and return typed settings.

        `serving_web` adds what only the web process needs (PUBLIC_BASE_URL).
        """
        reader = _Reader(values)
        settings = {
            "secret_key": reader.text("SECRET_KEY", required=True),
            "field_encryption_key": reader.fernet_keys("FIELD_ENCRYPTION_KEY"),
            "database_url": reader.database_url("DATABASE_URL"),
            "redis_url": reader.url("REDIS_URL", ("redis", "rediss", "unix"), cls.redis_url),
            "twilio_account_sid": reader.pattern(
                "TWILIO_ACCOUNT_SID", ACCOUNT_SID_SHAPE, "AC followed by 32 hex characters"
            ),
            "twilio_auth_token": reader.text("TWILIO_AUTH_TOKEN"),
            "twilio_whatsapp_number": reader.pattern(
                "TWILIO_WHATSAPP_NUMBER", WHATSAPP_ADDRESS_SHAPE, "whatsapp:+ and an E.164 number"
            ),
            "twilio_api_base_url": reader.url("TWILIO_API_BASE_URL", ("http", "https"), "").rstrip("/"),
            "public_base_url": reader.url("PUBLIC_BASE_URL", ("http", "https"), "").rstrip("/"),
            "openrouter_api_key": reader.text("OPENROUTER_API_KEY"),
            "openrouter_base_url": reader.url(
                "OPENROUTER_BASE_URL", ("http", "https"), cls.openrouter_base_url
            ).rstrip("/"),
            "ai_model": reader.text("AI_MODEL", default=cls.ai_model),
            "ai_fallback_models": reader.model_slugs("AI_FALLBACK_MODELS"),
            "ai_max_tokens": reader.integer("AI_MAX_TOKENS", cls.ai_max_tokens, minimum=1),
            "ai_temperature": reader.number("AI_TEMPERATURE", cls.ai_temperature, 0.0, 2.0),
            "ai_system_prompt": reader.text("AI_SYSTEM_PROMPT", default=cls.ai_system_prompt),
            "max_context_messages": reader.integer(
                "MAX_CONTEXT_MESSAGES", cls.max_context_messages, minimum=1
            ),
            "conversation_ttl": reader.integer("CONVERSATION_TTL", cls.conversation_ttl, minimum=60),
            "site_name": reader.text("SITE_NAME", default=cls.site_name),
            "rate_limit_messages": reader.integer("RATE_LIMIT_MESSAGES", cls.rate_limit_messages, minimum=1),
            "rate_limit_window": reader.integer("RATE_LIMIT_WINDOW", cls.rate_limit_window, minimum=1),
            "rate_limit_global": reader.integer("RATE_LIMIT_GLOBAL", cls.rate_limit_global, minimum=1),
            "max_inbound_chars": reader.integer("MAX_INBOUND_CHARS", cls.max_inbound_chars, minimum=1),
            "max_media_bytes": reader.integer("MAX_MEDIA_BYTES", cls.max_media_bytes, minimum=1024),
            "max_media_bytes_per_message": reader.integer("MAX_MEDIA_BYTES_PER_MESSAGE",
                                                          cls.max_media_bytes_per_message, minimum=1024),
            "max_media_bytes_in_memory": reader.integer("MAX_MEDIA_BYTES_IN_MEMORY", cls.max_media_bytes_in_memory,
                                                        minimum=1024),
            "allow_private_hosts": reader.boolean("ALLOW_PRIVATE_HOSTS", cls.allow_private_hosts),
            "transcription_model": reader.text("TRANSCRIPTION_MODEL", default=cls.transcription_model),
            "handoff_phrases": reader.phrases("HANDOFF_PHRASES", cls.handoff_phrases),
            "handoff_after_failures": reader.integer("HANDOFF_AFTER_FAILURES", cls.handoff_after_failures, minimum=0,
                                                     maximum=100),
            "handoff_message": reader.text("HANDOFF_MESSAGE", default=cls.handoff_message),
            "handoff_message_out_of_hours": reader.text("HANDOFF_MESSAGE_OUT_OF_HOURS",
                                                        default=cls.handoff_message_out_of_hours),
            "business_hours": reader.text("BUSINESS_HOURS"),
            "business_hours_spans": reader.business_hours("BUSINESS_HOURS"),
            "notify_webhook_url": reader.url("NOTIFY_WEBHOOK_URL", ("http", "https"), ""),
            "smtp_url": reader.url("SMTP_URL", ("smtp", "smtps"), ""),
            "notify_emails": reader.email_list("NOTIFY_EMAILS"),
            "notify_from": reader.text("NOTIFY_FROM"),
            "require_2fa": reader.boolean("REQUIRE_2FA", cls.require_2fa),
            "tool_max_rounds": reader.integer("TOOL_MAX_ROUNDS", cls.tool_max_rounds, minimum=1, maximum=10),
            "rating_after_minutes": reader.integer("RATING_AFTER_MINUTES", cls.rating_after_minutes, minimum=0,
                                                   maximum=23 * 60),
            "rating_template_sid": reader.pattern("RATING_TEMPLATE_SID", CONTENT_SID_SHAPE,
                                                  "a Twilio Content SID: HX and 32 hex characters"),
            "campaign_rate": reader.number("CAMPAIGN_RATE", cls.campaign_rate, 0.1, MAX_CAMPAIGN_RATE),
            "campaign_max_recipients": reader.integer("CAMPAIGN_MAX_RECIPIENTS", cls.campaign_max_recipients,
                                                      minimum=1, maximum=MAX_CAMPAIGN_RECIPIENTS_CEILING),
            "handoff_remind_minutes": reader.integer("HANDOFF_REMIND_MINUTES", cls.handoff_remind_minutes, minimum=0,
                                                     maximum=7 * 24 * 60),
            "embedding_model": reader.text("EMBEDDING_MODEL", default=cls.embedding_model),
            "embedding_dimensions": reader.integer("EMBEDDING_DIMENSIONS", cls.embedding_dimensions, minimum=0,
                                                   maximum=8192),
            "knowledge_max_tokens": reader.integer("KNOWLEDGE_MAX_TOKENS", cls.knowledge_max_tokens, minimum=50,
                                                   maximum=MAX_KNOWLEDGE_TOKENS),
            "knowledge_max_file_bytes": reader.integer("KNOWLEDGE_MAX_FILE_BYTES", cls.knowledge_max_file_bytes,
                                                       minimum=1024, maximum=MAX_KNOWLEDGE_FILE_BYTES),
            "knowledge_max_pages": reader.integer("KNOWLEDGE_MAX_PAGES", cls.knowledge_max_pages, minimum=1,
                                                  maximum=MAX_KNOWLEDGE_PAGES),
            "knowledge_fetch_timeout": reader.integer("KNOWLEDGE_FETCH_TIMEOUT", cls.knowledge_fetch_timeout,
                                                      minimum=1, maximum=120),
            "knowledge_min_score": reader.number("KNOWLEDGE_MIN_SCORE", cls.knowledge_min_score, 0.0, 1.0),
            "approved_answer_min_score": reader.number("APPROVED_ANSWER_MIN_SCORE", cls.approved_answer_min_score,
                                                       0.5, 1.0),
            "max_reply_parts": reader.integer("MAX_REPLY_PARTS", cls.max_reply_parts, minimum=1,
                                              maximum=MAX_REPLY_PARTS_CEILING),
            "max_request_bytes": reader.integer("MAX_REQUEST_BYTES", cls.max_request_bytes, minimum=1024),
            "force_https": reader.boolean("FORCE_HTTPS", cls.force_https),
            "trusted_proxies": reader.integer("TRUSTED_PROXIES", cls.trusted_proxies, minimum=0),
            "alert_webhook_url": reader.url("ALERT_WEBHOOK_URL", ("http", "https"), ""),
            "redis_tls_verify": reader.boolean("REDIS_TLS_VERIFY", cls.redis_tls_verify),
            "worker_concurrency": reader.integer("WORKER_CONCURRENCY", cls.worker_concurrency, minimum=1,
                                                 maximum=MAX_WORKER_CONCURRENCY),
            "worker_heartbeat_interval": reader.integer("WORKER_HEARTBEAT_INTERVAL", cls.worker_heartbeat_interval,
                                                        minimum=1, maximum=MAX_WORKER_INTERVAL),
            "worker_heartbeat_grace": reader.integer("WORKER_HEARTBEAT_GRACE", cls.worker_heartbeat_grace, minimum=1,
                                                     maximum=MAX_WORKER_INTERVAL),
            "worker_maintenance_interval": reader.integer("WORKER_MAINTENANCE_INTERVAL",
                                                          cls.worker_maintenance_interval, minimum=1,
                                                          maximum=MAX_WORKER_INTERVAL),
            "scheduler_poll_interval": reader.integer("SCHEDULER_POLL_INTERVAL", cls.scheduler_poll_interval,
                                                      minimum=1, maximum=60),
            "conversation_lock_ttl": reader.integer("CONVERSATION_LOCK_TTL", cls.conversation_lock_ttl, minimum=1,
                                                    maximum=MAX_CONVERSATION_LOCK_TTL),
            "sqlite_writer_wait": reader.number("SQLITE_WRITER_WAIT_SECONDS", cls.sqlite_writer_wait, 0.1,
                                                MAX_SQLITE_WRITER_WAIT),
            "ai_deadline": reader.integer("AI_DEADLINE", cls.ai_deadline, minimum=5, maximum=MAX_AI_DEADLINE),
            "max_processing_attempts": reader.integer("MAX_PROCESSING_ATTEMPTS", cls.max_processing_attempts,
                                                      minimum=1, maximum=100),
            # 0 is allowed: it keeps that data forever.
            "user_commands": reader.user_commands("USER_COMMANDS"),
            "retention_days": reader.integer("RETENTION_DAYS", cls.retention_days, minimum=0,
                                             maximum=MAX_RETENTION_DAYS),
            "webhook_log_retention_days": reader.integer("WEBHOOK_LOG_RETENTION_DAYS", cls.webhook_log_retention_days,
                                                         minimum=0, maximum=MAX_RETENTION_DAYS),
            "takeover_timeout": reader.integer("TAKEOVER_TIMEOUT", cls.takeover_timeout, minimum=0,
                                               maximum=MAX_TAKEOVER_TIMEOUT),
            "coalesce_seconds": reader.integer("COALESCE_SECONDS", cls.coalesce_seconds, minimum=0,
                                               maximum=MAX_COALESCE_SECONDS),
            "window_template_sid": reader.pattern("WINDOW_TEMPLATE_SID", CONTENT_SID_SHAPE,
                                                  "a Twilio Content SID: HX and 32 hex characters"),
            "access_mode": reader.choice("ACCESS_MODE", ACCESS_MODES, cls.access_mode),
            "access_list": reader.phone_list("ACCESS_LIST"),
            "access_notice": reader.text_or_blank("ACCESS_NOTICE", cls.access_notice),
            "budget_per_sender_daily": reader.amount("BUDGET_PER_SENDER_DAILY"),
            "budget_monthly": reader.amount("BUDGET_MONTHLY"),
            "metrics_token": reader.text("METRICS_TOKEN"),
            "metrics_dir": reader.text("PROMETHEUS_MULTIPROC_DIR"),
            "admin_timezone": reader.time_zone("ADMIN_TIMEZONE", cls.admin_timezone),
        }
        if settings["max_media_bytes_in_memory"] < settings["max_media_bytes_per_message"]:
            # A message's files must fit in a worker's room at once, or they would wait for it forever.
            reader.problems.append(
                f"MAX_MEDIA_BYTES_IN_MEMORY ({settings['max_media_bytes_in_memory']}) must be at least "
                f"MAX_MEDIA_BYTES_PER_MESSAGE ({settings['max_media_bytes_per_message']}): raise it, or lower "
                "MAX_MEDIA_BYTES_PER_MESSAGE")
        if bool(settings["smtp_url"]) != bool(settings["notify_emails"]):
            # Half of it would send nothing and say nothing until a customer waited for a person.
            reader.problems.append("SMTP_URL and NOTIFY_EMAILS go together: set both to have handoffs e-mailed, "
                                   "or neither")
        # Without it the web process would check Twilio's signatures against the host the client names.
        if serving_web and not settings["public_base_url"]:
            reader.problems.append("PUBLIC_BASE_URL is required by the web process but not set: set it to the "
                                   "https origin Twilio calls, e.g. https://my-bot.example.com")
        if reader.problems:
            raise ConfigError(reader.problems)
        settings["metrics_dir"] = settings["metrics_dir"] or deployment_metrics_dir(settings["database_url"])
        return cls(**settings)

    def replace(self, **changes) -> Config:
        """Return a copy with some settings changed (tests and tools)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        return Config(**{**current, **changes})

    def redis_options(self) -> dict:
        """Extra arguments for `Redis.from_url`: skip certificate checks when REDIS_TLS_VERIFY is off
        (Heroku's Redis add-on serves TLS with a self-signed certificate)."""
        if self.redis_url.startswith("rediss://") and not self.redis_tls_verify:
            return {"ssl_cert_reqs": "none"}
        return {}

    def missing_for_whatsapp(self) -> list[str]:
        """Name the settings that real WhatsApp traffic still needs."""
        needed = {
            "TWILIO_ACCOUNT_SID": self.twilio_account_sid,
            "TWILIO_AUTH_TOKEN": self.twilio_auth_token,
            "TWILIO_WHATSAPP_NUMBER": self.twilio_whatsapp_number,
        }
        return [name for name, value in needed.items() if not value]


def amount_problem(raw: str) -> str | None:
    """Say what is wrong with `raw` as a cap in US dollars, or None when it is one (the admin's rule too)."""
    try:
        value = float(raw)
    except ValueError:
        return "must be an amount in US dollars such as 5 or 0.50"
    if not math.isfinite(value) or value <= 0:
        return "must be more than 0 US dollars (leave it empty for no cap)"
    return None


def _environment(dotenv_path: str | Path | None = None) -> dict:
    """`.env` and the environment, which wins."""
    path = Path(dotenv_path) if dotenv_path else PROJECT_DIR / ".env"
    file_values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return {**file_values, **os.environ}


class _Reader:
    """Collects every problem instead of stopping at the first."""

    def __init__(self, values: dict):
        self.values = values
        self.problems: list[str] = []

    def _raw(self, name: str) -> str:
        return (self.values.get(name) or "").strip()

    def text(self, name: str, required: bool = False, default: str = "") -> str:
        value = self._raw(name)
        if not value and required:
            self.problems.append(f"{name} is required but not set")
        return value or default

    def text_or_blank(self, name: str, default: str) -> str:
        """Like `text`, but a variable set to nothing stays empty: blank is a choice, unset is not."""
        return self._raw(name) if name in self.values else default

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self._raw(name).lower()
        if not value:
            return default
        if value not in choices:
            self.problems.append(f"{name} must be one of {', '.join(choices)}, got {value!r}")
            return default
        return value

    def phone_list(self, name: str) -> tuple[str, ...]:
        """Read comma-separated numbers (`+15551234567` or `whatsapp:+15551234567`) as E.164, each once."""
        numbers = []
        for item in comma_list(self._raw(name)):
            number = e164(item)
            if number is None:
                self.problems.append(f"{name}: {item!r} is not a phone number in E.164 form, e.g. +15551234567")
            elif number not in numbers:
                numbers.append(number)
        return tuple(numbers)

    def user_commands(self, name: str) -> dict:
        """Read `reset=/reset,help=/help,...`: the word a user writes for each command, any of them left
        at its default when not named."""
        words = dict(DEFAULT_USER_COMMANDS)
        for item in comma_list(self._raw(name)):
            command, _, word = (piece.strip() for piece in item.partition("="))
            if command not in DEFAULT_USER_COMMANDS or not word:
                self.problems.append(f"{name}: {item!r} is not command=word with a command among "
                                     f"{', '.join(DEFAULT_USER_COMMANDS)}")
                continue
            words[command] = word
        if len({word.casefold() for word in words.values()}) < len(words):
            self.problems.append(f"{name}: two commands share a word ({', '.join(words.values())})")
        return words

    def phrases(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """Read a comma list of phrases, any case; set to nothing, it is empty (unset: `default`)."""
        if name not in self.values:
            return default
        return tuple(phrase.casefold() for phrase in comma_list(self.values[name]))

    def business_hours(self, name: str) -> tuple:
        try:
            return parse_business_hours(self._raw(name))
        except ValueError as error:
            self.problems.append(f"{name}: {error}")
            return ()

    def email_list(self, name: str) -> tuple[str, ...]:
        """Read `ops@example.com, boss@example.com`."""
        addresses = comma_list(self._raw(name))
        for address in addresses:
            if not re.fullmatch(r"[^@\s,]+@[^@\s,]+\.[^@\s,]+", address):
                self.problems.append(f"{name}: {address!r} is not an e-mail address")
        return addresses

    def model_slugs(self, name: str) -> tuple[str, ...]:
        """Read `vendor/model,vendor/model`: OpenRouter slugs in the order they are tried."""
        raw = self._raw(name)
        problem = fallback_models_problem(raw)
        if problem:
            self.problems.append(f"{name}: {problem}")
        return comma_list(raw)

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        raw = self._raw(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name} must be a whole number, got {raw!r}")
            return default
        if value < minimum:
            self.problems.append(f"{name} must be at least {minimum}, got {value}")
        elif maximum is not None and value > maximum:
            self.problems.append(f"{name} must be at most {maximum}, got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._raw(name).lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name} must be true or false, got {raw!r}")
        return default

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self._raw(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problems.append(f"{name} must be a number, got {raw!r}")
            return default
        if not low <= value <= high:
            self.problems.append(f"{name} must be between {low:g} and {high:g}, got {raw}")
        return value

    def amount(self, name: str) -> float | None:
        """Read an optional amount of US dollars: empty is None (no cap)."""
        raw = self._raw(name)
        if not raw:
            return None
        problem = amount_problem(raw)
        if problem:
            self.problems.append(f"{name} {problem}, got {raw!r}")
            return None
        return float(raw)

    def time_zone(self, name: str, default: str) -> str:
        """Read an IANA time zone name such as Europe/Berlin, one Python's zoneinfo knows."""
        value = self._raw(name)
        if not value:
            return default
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            self.problems.append(f"{name} must be an IANA time zone name such as UTC, Europe/Berlin or "
                                 f"America/New_York, got {value!r}")
            return default
        return value

    def pattern(self, name: str, shape: re.Pattern, description: str) -> str:
        value = self._raw(name)
        if value and not shape.match(value):
            self.problems.append(f"{name} must be {description}")
        return value

    def url(self, name: str, schemes: tuple[str, ...], default: str) -> str:
        value = self._raw(name)
        if not value:
            return default
        parsed = urlparse(value)
        if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
            self.problems.append(f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value

    def database_url(self, name: str) -> str:
        value = self._raw(name)
        if not value:
            return DEFAULT_DATABASE_URL
        scheme = urlparse(value).scheme
        if scheme not in ("sqlite", "postgres", "postgresql"):
            self.problems.append(f"{name} must start with sqlite://, postgres:// or postgresql://")
        return value

    def fernet_keys(self, name: str) -> str:
        value = self._raw(name)
        if not value:
            self.problems.append(
                f"{name} is required but not set "
                "(make one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            )
            return value
        for position, key in enumerate(value.split(","), start=1):
            try:
                Fernet(key.strip())
            except (ValueError, TypeError):
                self.problems.append(f"{name} key #{position} is not a valid Fernet key (32 url-safe base64 bytes)")
        return value
