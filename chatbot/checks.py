"""The checks behind `flask check-config`: each setting's shape, then each service for real."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from peewee import PeeweeException
from redis.exceptions import RedisError

from chatbot.ai import AIAdapterFactory, AISettings
from chatbot.errors import AIError, WhatsAppError
from chatbot.models import db, migrations
from chatbot.redact import mask_phone, mask_secret
from chatbot.web import WEBHOOK_PATH
from chatbot.whatsapp import STATUS_CALLBACK_PATH
from config import MODEL_SLUG_SHAPE, Config, ConfigError, comma_list

# A check should answer in seconds, not wait out the adapter's 60 s completion timeout.
CHECK_TIMEOUT = (5.0, 15.0)
ENV_HINT = "set it in .env or the environment (see .env.example)"
FIXES = {
    "SECRET_KEY": "set it to a long random string: python -c 'import secrets; print(secrets.token_hex(32))'",
    "FIELD_ENCRYPTION_KEY": "make one with: python -c 'from cryptography.fernet import Fernet; "
                            "print(Fernet.generate_key().decode())'",
    "DATABASE_URL": "use sqlite:///absolute/path.sqlite3, postgres://... or postgresql://...",
    "REDIS_URL": "use redis://host:6379/0 (rediss:// for TLS)",
    "TWILIO_ACCOUNT_SID": "copy the Account SID from the Twilio Console (Account info); it starts with AC",
    "TWILIO_AUTH_TOKEN": "copy the Auth Token from the Twilio Console (Account info)",
    "TWILIO_WHATSAPP_NUMBER": "use the bot's WhatsApp sender, e.g. whatsapp:+14155238886 (the sandbox)",
    "TWILIO_API_BASE_URL": "leave it empty to reach Twilio itself",
    "PUBLIC_BASE_URL": "set it to the https origin Twilio calls, e.g. https://my-bot.example.com",
    "OPENROUTER_API_KEY": "create a key at https://openrouter.ai/keys",
    "OPENROUTER_BASE_URL": "leave it empty for https://openrouter.ai/api/v1",
    "AI_MODEL": "use an OpenRouter slug such as openai/gpt-4o-mini (see https://openrouter.ai/models)",
}


class CheckStatus(StrEnum):
    OK = "✓"
    FAIL = "✗"
    WARN = "!"
    SKIPPED = "-"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, its status, what was found, and how to fix it."""

    label: str
    status: CheckStatus
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status is CheckStatus.FAIL


def ok(label: str, detail: str) -> Check:
    return Check(label, CheckStatus.OK, detail)


def fail(label: str, detail: str, fix: str) -> Check:
    return Check(label, CheckStatus.FAIL, detail, fix)


def warn(label: str, detail: str, fix: str) -> Check:
    return Check(label, CheckStatus.WARN, detail, fix)


def skipped(label: str, detail: str) -> Check:
    return Check(label, CheckStatus.SKIPPED, detail)


def display_url(url: str) -> str:
    """Return `url` with any password replaced, fit to print."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:•••@{host}{port}"))


def webhook_url(config: Config) -> str:
    """Return the URL to give Twilio for incoming messages."""
    return (config.public_base_url or "https://<your-public-host>") + WEBHOOK_PATH


def status_callback_url(config: Config) -> str:
    """Return the URL to give Twilio for delivery receipts (the admin's delivery ticks)."""
    return (config.public_base_url or "https://<your-public-host>") + STATUS_CALLBACK_PATH


def problem_checks(error: ConfigError) -> list[Check]:
    """Turn each problem that stopped the settings from loading into a failed check."""
    checks = []
    for problem in error.problems:
        name = re.match(r"[A-Z_]+", problem).group(0)
        detail = problem[len(name):].strip().split(" (make one with")[0]
        checks.append(fail(name, detail, FIXES.get(name, ENV_HINT)))
    return checks


def settings_checks(config: Config) -> list[Check]:
    """Check what the loaded settings say without reaching any service."""
    key_count = len(comma_list(config.field_encryption_key))
    checks = [
        ok("SECRET_KEY", "set"),
        ok("FIELD_ENCRYPTION_KEY", f"{key_count} valid Fernet key{'s' if key_count > 1 else ''}"),
        ok("DATABASE_URL", display_url(config.database_url)),
        ok("REDIS_URL", display_url(config.redis_url)),
        *twilio_settings_checks(config),
    ]
    if not config.public_base_url:
        checks.append(fail("PUBLIC_BASE_URL", "not set: the web process refuses to start without it",
                           FIXES["PUBLIC_BASE_URL"]))
    elif not config.public_base_url.startswith("https://"):
        checks.append(warn("PUBLIC_BASE_URL", f"{config.public_base_url} is not https", FIXES["PUBLIC_BASE_URL"]))
    else:
        checks.append(ok("PUBLIC_BASE_URL", config.public_base_url))
    if config.openrouter_api_key:
        checks.append(ok("OPENROUTER_API_KEY", mask_secret(config.openrouter_api_key)))
    else:
        checks.append(warn("OPENROUTER_API_KEY", "not set (enough if the active AI configuration stores a key)",
                           FIXES["OPENROUTER_API_KEY"]))
    checks.append(ok("OPENROUTER_BASE_URL", config.openrouter_base_url))
    if config.alert_webhook_url:
        # The URL itself is often the secret (Slack-style webhooks): show its host only.
        checks.append(ok("ALERT_WEBHOOK_URL", f"alerts are posted to {urlsplit(config.alert_webhook_url).hostname}"))
    if MODEL_SLUG_SHAPE.match(config.ai_model):
        checks.append(ok("AI_MODEL", config.ai_model))
    else:
        checks.append(fail("AI_MODEL", f"{config.ai_model!r} is not a model slug", FIXES["AI_MODEL"]))
    return checks


def twilio_settings_checks(config: Config) -> list[Check]:
    """Check that the Twilio settings are present (their shape was checked when they loaded)."""
    checks = []
    for name, value, shown in (
        ("TWILIO_ACCOUNT_SID", config.twilio_account_sid, account_shown(config.twilio_account_sid)),
        ("TWILIO_AUTH_TOKEN", config.twilio_auth_token, "set"),
        ("TWILIO_WHATSAPP_NUMBER", config.twilio_whatsapp_number, mask_phone(config.twilio_whatsapp_number)),
    ):
        if value:
            checks.append(ok(name, shown))
        else:
            checks.append(fail(name, "not set; WhatsApp traffic needs it", FIXES[name]))
    if config.twilio_api_base_url:
        checks.append(warn("TWILIO_API_BASE_URL", f"Twilio API calls go to {config.twilio_api_base_url}",
                           FIXES["TWILIO_API_BASE_URL"]))
    return checks


def service_checks(services) -> list[Check]:
    """Reach the database, Redis, OpenRouter and Twilio for real."""
    database = database_check()
    return [
        database,
        redis_check(services.redis, services.config.redis_url),
        *openrouter_checks(services.ai_factory, database_ok=not database.failed),
        twilio_account_check(services),
    ]


def database_check() -> Check:
    label = "Database"
    try:
        with db.database.connection_context():
            version = migrations.current_version()
    except PeeweeException as error:
        return fail(label, f"not reachable: {first_line(error)}",
                    "start the database, or correct DATABASE_URL")
    latest = len(migrations.MIGRATIONS)
    if version < latest:
        return fail(label, f"reachable, but the schema is at version {version} of {latest}",
                    "run: flask init-db")
    if version > latest:
        return fail(label, f"schema version {version} is newer than this code ({latest})",
                    "deploy the code that matches the database")
    return ok(label, f"reachable, schema up to date (version {version})")


def redis_check(redis, url: str) -> Check:
    try:
        redis.ping()
    except RedisError as error:
        return fail("Redis", f"not reachable at {display_url(url)}: {first_line(error)}",
                    "start Redis, or correct REDIS_URL")
    return ok("Redis", f"reachable at {display_url(url)}")


def openrouter_checks(factory: AIAdapterFactory, database_ok: bool = True,
                      settings: AISettings | None = None) -> list[Check]:
    """Check the key and the model of `settings` (default: the settings in force now)."""
    if settings is None:
        if not database_ok:
            settings = factory.environment_settings()
        else:
            try:
                settings = factory.settings()
            except AIError as error:
                return [fail("OpenRouter key", str(error), "enter the key again: flask ai-config update NAME "
                             "--api-key-prompt (or restore the old FIELD_ENCRYPTION_KEY)")]
    source, key_fix, model_fix = _origin(settings)
    if not settings.api_key:
        return [fail("OpenRouter key", f"none in {source}", f"{key_fix} (create one at https://openrouter.ai/keys)")]
    adapter = factory.adapter(settings, attempts=1, timeout=CHECK_TIMEOUT)
    try:
        described = adapter.validate_credentials()
    except AIError as error:
        return [fail("OpenRouter key", f"{mask_secret(settings.api_key)} from {source}: {error}",
                     _openrouter_fix(error, key_fix))]
    checks = [ok("OpenRouter key", f"{mask_secret(settings.api_key)} from {source} accepted{_credit(described)}")]
    try:
        models = adapter.list_models()
    except AIError as error:
        return checks + [fail("OpenRouter model", f"could not list models: {error}", _openrouter_fix(error, key_fix))]
    if settings.model in models:
        return checks + [ok("OpenRouter model", f"{settings.model} is available")]
    return checks + [fail("OpenRouter model", f"{settings.model} is not offered by OpenRouter",
                          f"{model_fix} to a slug listed at https://openrouter.ai/models")]


def _origin(settings: AISettings) -> tuple[str, str, str]:
    """Name where `settings` came from, and how to change its key and its model there."""
    if settings.source == "env":
        return "the environment", "set OPENROUTER_API_KEY", "set AI_MODEL"
    name = shlex.quote(settings.source.removeprefix("db:"))
    return (f"AI configuration {name}", f"store a key: flask ai-config update {name} --api-key-prompt",
            f"run: flask ai-config update {name} --model SLUG")


def _credit(described: dict) -> str:
    usage, limit = described.get("usage"), described.get("limit")
    if not isinstance(usage, (int, float)):
        return ""
    return f" (used ${usage:.2f}, {f'limit ${limit:.2f}' if isinstance(limit, (int, float)) else 'no limit'})"


def _openrouter_fix(error: AIError, key_fix: str) -> str:
    if error.status in (401, 403):
        return f"{key_fix} to a valid key from https://openrouter.ai/keys"
    if error.status == 402:
        return "add credits at https://openrouter.ai/credits"
    if error.status is None:
        return "check the network, or OPENROUTER_BASE_URL"
    return "try again later; see https://status.openrouter.ai"


TWILIO_CREDENTIALS_FIX = "copy TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN from the Twilio Console"
TWILIO_NETWORK_FIX = "check the network, or TWILIO_API_BASE_URL; see https://status.twilio.com"


def twilio_send_fix(error: WhatsAppError) -> str:
    """Say how to fix what stopped a message from being sent."""
    if error.status == 401 or error.code == 20003:
        return TWILIO_CREDENTIALS_FIX
    if error.code in (63015, 63016):
        return ("the recipient must message the bot first (in the sandbox: send the join code); "
                "free-form messages are allowed only within 24 hours of their last message")
    if error.code in (21211, 21614):
        return "check the --to number (whatsapp:+ and the full international number)"
    if error.code in (21606, 63007):
        return "TWILIO_WHATSAPP_NUMBER must be a WhatsApp sender of this Twilio account"
    if error.status is None and not error.retryable:
        return "set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_WHATSAPP_NUMBER (flask check-config)"
    if error.code:
        return f"see https://www.twilio.com/docs/errors/{error.code}"
    return TWILIO_NETWORK_FIX


def twilio_account_check(services) -> Check:
    """Fetch the Twilio account with the configured credentials (sends nothing)."""
    label = "Twilio account"
    config = services.config
    if not (config.twilio_account_sid and config.twilio_auth_token):
        return skipped(label, "not checked: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed")
    try:
        status = services.whatsapp.account_status()
    except WhatsAppError as error:
        if error.status in (401, 403, 404) or error.code in (20003, 20404):
            return fail(label, f"credentials refused: {error}", TWILIO_CREDENTIALS_FIX + " (Account info)")
        return fail(label, str(error), TWILIO_NETWORK_FIX)
    if status != "active":
        return fail(label, f"credentials accepted, but the account is {status}",
                    "reactivate the account in the Twilio Console")
    return ok(label, f"credentials accepted, account {account_shown(config.twilio_account_sid)} is active")


def account_shown(sid: str) -> str:
    return f"{sid[:2]}…{sid[-4:]}"


def first_line(error: Exception) -> str:
    text = str(error).strip() or error.__class__.__name__
    return text.splitlines()[0][:200]
