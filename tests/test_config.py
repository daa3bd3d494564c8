"""config.py: one read of the environment, every problem named at once."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from config import DEFAULT_ACCESS_NOTICE, DEFAULT_DATABASE_URL, PROJECT_DIR, Config, ConfigError

KEY = Fernet.generate_key().decode()
MINIMAL = {"SECRET_KEY": "s", "FIELD_ENCRYPTION_KEY": KEY}


def test_defaults_run_on_embedded_sqlite():
    config = Config.from_mapping(MINIMAL)
    assert config.database_url == DEFAULT_DATABASE_URL
    assert DEFAULT_DATABASE_URL.startswith("sqlite:///") and "/instance/" in DEFAULT_DATABASE_URL
    assert config.openrouter_base_url == "https://openrouter.ai/api/v1"
    assert (config.ai_max_tokens, config.ai_temperature, config.max_context_messages) == (500, 0.7, 20)
    assert config.missing_for_whatsapp() == [
        "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_WHATSAPP_NUMBER"
    ]


def test_every_missing_required_variable_is_named():
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({})
    message = str(error.value)
    assert "SECRET_KEY is required" in message
    assert "FIELD_ENCRYPTION_KEY is required" in message


def test_every_malformed_variable_is_named_in_one_error():
    bad = {
        **MINIMAL,
        "FIELD_ENCRYPTION_KEY": "not-a-key",
        "DATABASE_URL": "mysql://localhost/db",
        "REDIS_URL": "http://localhost:6379",
        "TWILIO_ACCOUNT_SID": "AC123",
        "TWILIO_WHATSAPP_NUMBER": "+14155238886",
        "TWILIO_API_BASE_URL": "ftp://x",
        "PUBLIC_BASE_URL": "bot.example.com",
        "OPENROUTER_BASE_URL": "openrouter.ai",
        "AI_MAX_TOKENS": "lots",
        "AI_TEMPERATURE": "3",
        "MAX_CONTEXT_MESSAGES": "0",
        "CONVERSATION_TTL": "1.5",
    }
    with pytest.raises(ConfigError) as error:
        Config.from_mapping(bad)
    named = {re.match(r"[A-Z_]+", problem).group(0) for problem in error.value.problems}
    assert named == set(bad) - {"SECRET_KEY"}
    assert "AI_TEMPERATURE must be between 0 and 2, got 3" in str(error.value)


@pytest.mark.parametrize("name, raw, problem", [
    ("WORKER_CONCURRENCY", "0", "WORKER_CONCURRENCY must be at least 1, got 0"),
    ("WORKER_CONCURRENCY", "1000", "WORKER_CONCURRENCY must be at most 256, got 1000"),
    ("WORKER_CONCURRENCY", "many", "WORKER_CONCURRENCY must be a whole number, got 'many'"),
    ("AI_DEADLINE", "2", "AI_DEADLINE must be at least 5, got 2"),
    ("AI_DEADLINE", "600", "AI_DEADLINE must be at most 120, got 600"),
    ("WORKER_HEARTBEAT_INTERVAL", "0", "WORKER_HEARTBEAT_INTERVAL must be at least 1, got 0"),
    ("WORKER_HEARTBEAT_GRACE", "601", "WORKER_HEARTBEAT_GRACE must be at most 600, got 601"),
    ("WORKER_MAINTENANCE_INTERVAL", "1.5", "WORKER_MAINTENANCE_INTERVAL must be a whole number, got '1.5'"),
    ("SCHEDULER_POLL_INTERVAL", "61", "SCHEDULER_POLL_INTERVAL must be at most 60, got 61"),
    ("CONVERSATION_LOCK_TTL", "0", "CONVERSATION_LOCK_TTL must be at least 1, got 0"),
    ("CONVERSATION_LOCK_TTL", "31", "CONVERSATION_LOCK_TTL must be at most 30, got 31"),
    ("SQLITE_WRITER_WAIT_SECONDS", "15", "SQLITE_WRITER_WAIT_SECONDS must be between 0.1 and 14, got 15"),
])
def test_worker_settings_out_of_range_are_named(name, raw, problem):
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({**MINIMAL, name: raw})
    assert error.value.problems == [problem]


def test_worker_settings_defaults_and_values():
    assert (Config.from_mapping(MINIMAL).worker_concurrency, Config.from_mapping(MINIMAL).ai_deadline) == (32, 60)
    config = Config.from_mapping({**MINIMAL, "WORKER_CONCURRENCY": "64", "AI_DEADLINE": "30"})
    assert (config.worker_concurrency, config.ai_deadline) == (64, 30)


def test_a_killed_workers_timings_default_to_production_values_and_can_be_shortened():
    defaults = Config.from_mapping(MINIMAL)
    assert (defaults.worker_heartbeat_interval, defaults.worker_heartbeat_grace, defaults.worker_maintenance_interval,
            defaults.conversation_lock_ttl) == (5, 10, 5, 20)
    short = Config.from_mapping({**MINIMAL, "WORKER_HEARTBEAT_INTERVAL": "1", "WORKER_HEARTBEAT_GRACE": "1",
                                 "WORKER_MAINTENANCE_INTERVAL": "1", "CONVERSATION_LOCK_TTL": "2"})
    assert (short.worker_heartbeat_interval, short.worker_heartbeat_grace, short.worker_maintenance_interval,
            short.conversation_lock_ttl) == (1, 1, 1, 2)


@pytest.mark.parametrize("name, raw, problem", [
    ("RETENTION_DAYS", "-1", "RETENTION_DAYS must be at least 0, got -1"),
    ("RETENTION_DAYS", "90d", "RETENTION_DAYS must be a whole number, got '90d'"),
    ("RETENTION_DAYS", "99999", "RETENTION_DAYS must be at most 36500, got 99999"),
    ("WEBHOOK_LOG_RETENTION_DAYS", "-14", "WEBHOOK_LOG_RETENTION_DAYS must be at least 0, got -14"),
    ("WEBHOOK_LOG_RETENTION_DAYS", "1.5", "WEBHOOK_LOG_RETENTION_DAYS must be a whole number, got '1.5'"),
    ("MAX_PROCESSING_ATTEMPTS", "0", "MAX_PROCESSING_ATTEMPTS must be at least 1, got 0"),
    ("MAX_PROCESSING_ATTEMPTS", "101", "MAX_PROCESSING_ATTEMPTS must be at most 100, got 101"),
    ("MAX_PROCESSING_ATTEMPTS", "five", "MAX_PROCESSING_ATTEMPTS must be a whole number, got 'five'"),
])
def test_retention_and_attempt_settings_out_of_range_are_named(name, raw, problem):
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({**MINIMAL, name: raw})
    assert error.value.problems == [problem]


def test_retention_and_attempt_settings_defaults_and_values():
    defaults = Config.from_mapping(MINIMAL)
    assert (defaults.retention_days, defaults.webhook_log_retention_days,
            defaults.max_processing_attempts) == (90, 14, 5)
    config = Config.from_mapping({**MINIMAL, "RETENTION_DAYS": "0", "WEBHOOK_LOG_RETENTION_DAYS": "0",
                                  "MAX_PROCESSING_ATTEMPTS": "3"})
    assert (config.retention_days, config.webhook_log_retention_days, config.max_processing_attempts) == (0, 0, 3)


@pytest.mark.parametrize("raw, problem", [
    ("-1", "TAKEOVER_TIMEOUT must be at least 0, got -1"),
    ("10081", "TAKEOVER_TIMEOUT must be at most 10080, got 10081"),
    ("30m", "TAKEOVER_TIMEOUT must be a whole number, got '30m'"),
])
def test_takeover_timeout_out_of_range_is_named(raw, problem):
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({**MINIMAL, "TAKEOVER_TIMEOUT": raw})
    assert error.value.problems == [problem]


def test_takeover_timeout_defaults_to_never_and_reads_minutes():
    assert Config.from_mapping(MINIMAL).takeover_timeout == 0
    assert Config.from_mapping({**MINIMAL, "TAKEOVER_TIMEOUT": "30"}).takeover_timeout == 30


@pytest.mark.parametrize("raw, problem", [
    ("0", "MAX_REPLY_PARTS must be at least 1, got 0"),
    ("51", "MAX_REPLY_PARTS must be at most 50, got 51"),
    ("ten", "MAX_REPLY_PARTS must be a whole number, got 'ten'"),
])
def test_reply_parts_out_of_range_are_named(raw, problem):
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({**MINIMAL, "MAX_REPLY_PARTS": raw})
    assert error.value.problems == [problem]


def test_reply_parts_default_and_values():
    assert Config.from_mapping(MINIMAL).max_reply_parts == 10
    assert [Config.from_mapping({**MINIMAL, "MAX_REPLY_PARTS": raw}).max_reply_parts for raw in ("1", "50")] == [1, 50]


@pytest.mark.parametrize("url", ["postgres://u:p@db:5432/app", "postgresql://u:p@db:5432/app",
                                 "sqlite:////tmp/x.sqlite3"])
def test_database_url_accepts_sqlite_and_both_postgres_spellings(url):
    assert Config.from_mapping({**MINIMAL, "DATABASE_URL": url}).database_url == url


def test_rotation_keys_are_each_checked():
    two = f"{Fernet.generate_key().decode()},{KEY}"
    assert Config.from_mapping({**MINIMAL, "FIELD_ENCRYPTION_KEY": two}).field_encryption_key == two
    with pytest.raises(ConfigError, match="key #2"):
        Config.from_mapping({**MINIMAL, "FIELD_ENCRYPTION_KEY": f"{KEY},broken"})


def test_dotenv_file_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"SECRET_KEY=from-file\nFIELD_ENCRYPTION_KEY={KEY}\nAI_MODEL=anthropic/claude-3.5-sonnet\n")
    monkeypatch.setenv("AI_MODEL", "openai/gpt-4o")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("FIELD_ENCRYPTION_KEY", raising=False)
    config = Config.from_env(dotenv_path=dotenv)
    assert config.secret_key == "from-file"
    assert config.ai_model == "openai/gpt-4o"


def test_secrets_are_not_in_the_repr():
    config = Config.from_mapping({**MINIMAL, "TWILIO_AUTH_TOKEN": "tok-123", "OPENROUTER_API_KEY": "sk-or-999"})
    assert "tok-123" not in repr(config) and "sk-or-999" not in repr(config)


def variables_read_by_config() -> set[str]:
    source = (PROJECT_DIR / "config.py").read_text()
    return set(re.findall(r'reader\.\w+\(\s*"([A-Z][A-Z0-9_]*)"', source))


def test_every_variable_config_reads_is_documented_in_env_example():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (PROJECT_DIR / ".env.example").read_text(), re.M))
    read = variables_read_by_config()
    assert len(read) >= 18
    assert read - documented == set()


def test_every_variable_config_reads_is_in_the_readme_table():
    readme = (Path(PROJECT_DIR) / "README.md").read_text()
    assert {name for name in variables_read_by_config() if f"`{name}`" not in readme} == set()


def test_redis_certificate_check_can_be_relaxed_only_for_tls_urls():
    heroku = Config.from_mapping({**MINIMAL, "REDIS_URL": "rediss://:p@ec2.example:6380", "REDIS_TLS_VERIFY": "false"})
    assert heroku.redis_options() == {"ssl_cert_reqs": "none"}
    assert Config.from_mapping({**MINIMAL, "REDIS_URL": "rediss://h:6380"}).redis_options() == {}
    assert Config.from_mapping({**MINIMAL, "REDIS_TLS_VERIFY": "false"}).redis_options() == {}
    with pytest.raises(ConfigError, match="REDIS_TLS_VERIFY must be true or false"):
        Config.from_mapping({**MINIMAL, "REDIS_TLS_VERIFY": "maybe"})


def test_only_the_web_process_needs_public_base_url():
    assert Config.from_mapping(MINIMAL).public_base_url == ""
    with pytest.raises(ConfigError) as error:
        Config.from_mapping(MINIMAL, serving_web=True)
    assert error.value.problems == ["PUBLIC_BASE_URL is required by the web process but not set: set it to the "
                                    "https origin Twilio calls, e.g. https://my-bot.example.com"]
    served = Config.from_mapping({**MINIMAL, "PUBLIC_BASE_URL": "https://bot.example.com/"}, serving_web=True)
    assert served.public_base_url == "https://bot.example.com"


def test_forwarded_headers_are_trusted_only_when_proxies_are_declared():
    assert Config.from_mapping(MINIMAL).trusted_proxies == 0
    assert Config.from_mapping({**MINIMAL, "TRUSTED_PROXIES": "1"}).trusted_proxies == 1


def test_user_commands_take_the_words_given_and_keep_the_rest():
    config = Config.from_mapping({**MINIMAL, "USER_COMMANDS": " stop=ARRET , start=DEMARRER"})
    assert config.user_commands["stop"] == "ARRET" and config.user_commands["start"] == "DEMARRER"
    assert config.user_commands["reset"] == "/reset"


@pytest.mark.parametrize("value, problem", [
    ("shout=HEY", "'shout=HEY' is not command=word"),
    ("stop=", "'stop=' is not command=word"),
    ("stop=/help", "two commands share a word"),
])
def test_bad_user_commands_are_named(value, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        Config.from_mapping({**MINIMAL, "USER_COMMANDS": value})


def test_budgets_are_optional_amounts_in_dollars():
    assert (Config.from_mapping(MINIMAL).budget_per_sender_daily, Config.from_mapping(MINIMAL).budget_monthly) == \
        (None, None)
    config = Config.from_mapping({**MINIMAL, "BUDGET_PER_SENDER_DAILY": "0.25", "BUDGET_MONTHLY": "50"})
    assert (config.budget_per_sender_daily, config.budget_monthly) == (0.25, 50.0)


@pytest.mark.parametrize("value", ["five", "0", "-1", "nan", "inf"])
def test_a_budget_that_is_not_a_positive_amount_is_named(value):
    with pytest.raises(ConfigError, match=r"BUDGET_MONTHLY must be"):
        Config.from_mapping({**MINIMAL, "BUDGET_MONTHLY": value})


def test_access_is_open_with_a_default_notice_unless_set():
    config = Config.from_mapping(MINIMAL)
    assert (config.access_mode, config.access_list) == ("open", ())
    assert config.access_notice == DEFAULT_ACCESS_NOTICE
    assert Config.from_mapping({**MINIMAL, "ACCESS_NOTICE": ""}).access_notice == ""  # blank: silence


def test_access_list_numbers_are_read_as_e164_each_once():
    config = Config.from_mapping({**MINIMAL, "ACCESS_MODE": "Allowlist",
                                  "ACCESS_LIST": "whatsapp:+15551234567, +15557654321,,+1-555-123-4567"})
    assert config.access_mode == "allowlist"
    assert config.access_list == ("+15551234567", "+15557654321")


@pytest.mark.parametrize("values, problem", [
    ({"ACCESS_MODE": "friends"}, "ACCESS_MODE must be one of open, allowlist, blocklist, got 'friends'"),
    ({"ACCESS_LIST": "+15551234567,5551234"}, "ACCESS_LIST: '5551234' is not a phone number in E.164 form"),
])
def test_bad_access_settings_are_named(values, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        Config.from_mapping({**MINIMAL, **values})


def test_fallback_models_are_read_in_order_and_each_must_be_a_slug():
    listed = " anthropic/claude-3.5-haiku , google/gemini-flash-1.5,"
    config = Config.from_mapping({**MINIMAL, "AI_FALLBACK_MODELS": listed})
    assert config.ai_fallback_models == ("anthropic/claude-3.5-haiku", "google/gemini-flash-1.5")
    assert Config.from_mapping(MINIMAL).ai_fallback_models == ()
    with pytest.raises(ConfigError, match="AI_FALLBACK_MODELS: Fallback models must be OpenRouter slugs"):
        Config.from_mapping({**MINIMAL, "AI_FALLBACK_MODELS": "openai/gpt-4o-mini,gpt 4"})


def test_metrics_are_off_without_a_token_and_the_token_is_never_shown():
    assert Config.from_mapping(MINIMAL).metrics_token == ""
    config = Config.from_mapping({**MINIMAL, "METRICS_TOKEN": "scrape-me-0123"})
    assert config.metrics_token == "scrape-me-0123" and "scrape-me-0123" not in repr(config)


def test_media_settings_defaults_and_values():
    config = Config.from_mapping(MINIMAL)
    assert (config.max_media_bytes, config.transcription_model) == (16 * 1024 * 1024, "openai/whisper-1")
    config = Config.from_mapping({**MINIMAL, "MAX_MEDIA_BYTES": "5000000",
                                  "TRANSCRIPTION_MODEL": "openai/gpt-4o-transcribe"})
    assert (config.max_media_bytes, config.transcription_model) == (5000000, "openai/gpt-4o-transcribe")


def test_tiny_media_limit_is_named():
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({**MINIMAL, "MAX_MEDIA_BYTES": "10"})
    assert error.value.problems == ["MAX_MEDIA_BYTES must be at least 1024, got 10"]


def test_attachment_budgets_and_private_hosts_default_to_safe_values():
    config = Config.from_mapping(MINIMAL)
    assert (config.max_media_bytes_per_message, config.max_media_bytes_in_memory) == (20 * 1024 * 1024,
                                                                                     40 * 1024 * 1024)
    assert config.allow_private_hosts is False
    config = Config.from_mapping({**MINIMAL, "MAX_MEDIA_BYTES_PER_MESSAGE": "5000000",
                                  "MAX_MEDIA_BYTES_IN_MEMORY": "5000000", "ALLOW_PRIVATE_HOSTS": "true"})
    assert (config.max_media_bytes_per_message, config.max_media_bytes_in_memory) == (5000000, 5000000)
    assert config.allow_private_hosts is True


def test_room_in_memory_smaller_than_one_messages_budget_is_named():
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({**MINIMAL, "MAX_MEDIA_BYTES_PER_MESSAGE": "3000000",
                             "MAX_MEDIA_BYTES_IN_MEMORY": "2000000"})
    assert error.value.problems == [
        "MAX_MEDIA_BYTES_IN_MEMORY (2000000) must be at least MAX_MEDIA_BYTES_PER_MESSAGE (3000000): raise it, "
        "or lower MAX_MEDIA_BYTES_PER_MESSAGE"]


@pytest.mark.parametrize(("name", "raw", "problem"), [
    ("KNOWLEDGE_MAX_TOKENS", "10", "KNOWLEDGE_MAX_TOKENS must be at least 50, got 10"),
    ("KNOWLEDGE_MAX_TOKENS", "50000", "KNOWLEDGE_MAX_TOKENS must be at most 20000, got 50000"),
    ("KNOWLEDGE_MAX_FILE_BYTES", "100", "KNOWLEDGE_MAX_FILE_BYTES must be at least 1024, got 100"),
    ("KNOWLEDGE_MAX_PAGES", "0", "KNOWLEDGE_MAX_PAGES must be at least 1, got 0"),
    ("KNOWLEDGE_FETCH_TIMEOUT", "soon", "KNOWLEDGE_FETCH_TIMEOUT must be a whole number, got 'soon'"),
    ("EMBEDDING_DIMENSIONS", "-1", "EMBEDDING_DIMENSIONS must be at least 0, got -1"),
])
def test_knowledge_settings_out_of_range_are_named(name, raw, problem):
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({**MINIMAL, name: raw})
    assert error.value.problems == [problem]


@pytest.mark.parametrize(("name", "raw", "problem"), [
    ("KNOWLEDGE_MIN_SCORE", "1.5", "KNOWLEDGE_MIN_SCORE must be between 0 and 1, got 1.5"),
    ("APPROVED_ANSWER_MIN_SCORE", "0.2", "APPROVED_ANSWER_MIN_SCORE must be between 0.5 and 1, got 0.2"),
    ("KNOWLEDGE_MIN_SCORE", "high", "KNOWLEDGE_MIN_SCORE must be a number, got 'high'"),
])
def test_knowledge_thresholds_out_of_range_are_named(name, raw, problem):
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({**MINIMAL, name: raw})
    assert error.value.problems == [problem]


def test_knowledge_settings_defaults_and_values():
    defaults = Config.from_mapping(MINIMAL)
    assert (defaults.embedding_model, defaults.embedding_dimensions, defaults.knowledge_max_tokens,
            defaults.knowledge_max_file_bytes, defaults.knowledge_max_pages, defaults.knowledge_fetch_timeout,
            defaults.knowledge_min_score, defaults.approved_answer_min_score) == (
        "openai/text-embedding-3-small", 512, 800, 10 * 1024 * 1024, 50, 15, 0.3, 0.85)
    changed = Config.from_mapping({**MINIMAL, "EMBEDDING_MODEL": "mistralai/mistral-embed", "EMBEDDING_DIMENSIONS": "0",
                                   "KNOWLEDGE_MAX_TOKENS": "1200", "APPROVED_ANSWER_MIN_SCORE": "0.9"})
    assert (changed.embedding_model, changed.embedding_dimensions, changed.knowledge_max_tokens,
            changed.approved_answer_min_score) == ("mistralai/mistral-embed", 0, 1200, 0.9)


def test_handoff_settings_defaults_and_values():
    defaults = Config.from_mapping(MINIMAL)
    assert (defaults.handoff_after_failures, defaults.handoff_remind_minutes, defaults.business_hours_spans,
            defaults.user_commands["human"]) == (3, 30, (), "/human")
    assert "talk to a human" in defaults.handoff_phrases
    changed = Config.from_mapping({**MINIMAL, "HANDOFF_PHRASES": "Agent please, HUMAN", "HANDOFF_AFTER_FAILURES": "0",
                                   "BUSINESS_HOURS": "Mon-Fri 09:00-17:30, Sun 10:00-12:00",
                                   "SMTP_URL": "smtp://bot:secret@mail.example.com:587",
                                   "NOTIFY_EMAILS": "ops@example.com, boss@example.com"})
    assert changed.handoff_phrases == ("agent please", "human")
    assert changed.handoff_after_failures == 0
    assert changed.business_hours_spans == tuple((day, 540, 1050) for day in range(5)) + ((6, 600, 720),)
    assert changed.notify_emails == ("ops@example.com", "boss@example.com")


@pytest.mark.parametrize(("values", "problem"), [
    ({"BUSINESS_HOURS": "weekdays 9 to 5"}, "BUSINESS_HOURS: 'weekdays 9 to 5' is not like 'Mon-Fri 09:00-17:30'"),
    ({"BUSINESS_HOURS": "Mon 17:00-09:00"}, "BUSINESS_HOURS: 'Mon 17:00-09:00' ends before it starts"),
    ({"NOTIFY_EMAILS": "ops@example.com", "SMTP_URL": "smtp://mail.example.com", "NOTIFY_WEBHOOK_URL": "ftp://x"},
     "NOTIFY_WEBHOOK_URL must be a URL starting with http:// or https://"),
    ({"NOTIFY_EMAILS": "ops@example.com"}, "SMTP_URL and NOTIFY_EMAILS go together: set both to have handoffs "
                                           "e-mailed, or neither"),
    ({"SMTP_URL": "smtp://mail.example.com", "NOTIFY_EMAILS": "not-an-address"},
     "NOTIFY_EMAILS: 'not-an-address' is not an e-mail address"),
    ({"HANDOFF_AFTER_FAILURES": "-1"}, "HANDOFF_AFTER_FAILURES must be at least 0, got -1"),
])
def test_bad_handoff_settings_are_named(values, problem):
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({**MINIMAL, **values})
    assert error.value.problems == [problem]
