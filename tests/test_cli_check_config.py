"""flask check-config and flask test-whatsapp, against real Redis, SQLite and the loopback fakes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from chatbot import create_config_error_app
from chatbot.models import AIConfiguration, migrations
from config import Config, ConfigError
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, PROJECT_DIR, free_port, run_flask
from tests.fakes import FakeOpenRouter, FakeTwilio

ADA = "whatsapp:+15550001111"


@pytest.fixture
def database_url(sqlite_url):
    """These commands read little from the database: SQLite is enough."""
    return sqlite_url


def nowhere() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def lines_with(output: str, mark: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith(mark)]


def test_working_deployment_passes_every_check(cli, env, fake_openrouter, fake_twilio):
    result = cli("check-config")

    assert result.exit_code == 0, result.output
    assert lines_with(result.output, "✗") == []
    for label in ("Database: reachable, schema up to date", "Redis: reachable", "OpenRouter key:",
                  "OpenRouter model: openai/gpt-4o-mini is available", "Twilio account: credentials accepted"):
        assert f"✓ {label}" in result.output
    assert "https://bot.example.com/whatsapp/webhook" in result.output
    assert "status callback URL, for delivery receipts (method POST): https://bot.example.com/whatsapp/status" \
        in result.output
    assert "All checks passed." in result.output
    assert [(r.method, r.path) for r in fake_openrouter.requests] == [("GET", "/api/v1/key"), ("GET", "/api/v1/models")]
    assert [(r.method, r.path) for r in fake_twilio.requests] == [("GET", f"/2010-04-01/Accounts/{ACCOUNT_SID}.json")]


def test_no_secret_is_printed(cli, env):
    output = cli("check-config").output
    for secret in (AUTH_TOKEN, env["OPENROUTER_API_KEY"], env["FIELD_ENCRYPTION_KEY"], env["SECRET_KEY"]):
        assert secret not in output
    assert "sk-or-…-key" in output


def test_alert_webhook_url_shows_its_host_only(app_with):
    app = app_with(alert_webhook_url="https://hooks.example.com/services/T000/B000/secret-token")
    output = app.test_cli_runner().invoke(args=["check-config", "--offline"]).output
    assert "✓ ALERT_WEBHOOK_URL: alerts are posted to hooks.example.com" in output
    assert "secret-token" not in output


def test_password_in_a_store_url_is_hidden(app_with, redis_url):
    with_password = redis_url.replace("redis://", "redis://:hunter2-secret@")
    output = app_with(redis_url=with_password).test_cli_runner().invoke(args=["check-config", "--offline"]).output
    assert "hunter2-secret" not in output
    assert "redis://:•••@127.0.0.1" in output


def test_missing_twilio_settings_fail_with_their_fix(app_with):
    app = app_with(twilio_account_sid="", twilio_auth_token="", twilio_whatsapp_number="")

    result = app.test_cli_runner().invoke(args=["check-config"])

    assert result.exit_code == 1
    assert "✗ TWILIO_ACCOUNT_SID: not set" in result.output
    assert "fix: copy the Account SID from the Twilio Console" in result.output
    assert "✗ TWILIO_WHATSAPP_NUMBER: not set" in result.output
    assert "- Twilio account: not checked" in result.output
    assert "3 checks failed." in result.output


def test_offline_reaches_no_service(app_with, fake_openrouter, fake_twilio, postgres_url):
    app = app_with(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                   database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")

    result = app.test_cli_runner().invoke(args=["check-config", "--offline"])

    assert result.exit_code == 0, result.output
    assert "skipped (--offline)" in result.output
    assert fake_openrouter.requests == [] and fake_twilio.requests == []


def test_each_service_that_is_down_fails_with_its_fix(app_with):
    app = app_with(redis_url=f"redis://127.0.0.1:{free_port()}/0",
                   database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere",
                   openrouter_base_url=nowhere() + "/api/v1", twilio_api_base_url=nowhere())

    result = app.test_cli_runner().invoke(args=["check-config"])

    assert result.exit_code == 1
    failed = lines_with(result.output, "✗")
    assert [line.split(":")[0] for line in failed] == ["✗ Database", "✗ Redis", "✗ OpenRouter key", "✗ Twilio account"]
    assert "fix: start the database, or correct DATABASE_URL" in result.output
    assert "fix: start Redis, or correct REDIS_URL" in result.output
    assert "fix: check the network, or OPENROUTER_BASE_URL" in result.output
    assert "could not reach Twilio" in result.output


def test_wrong_keys_fail_with_their_fix(cli, fake_openrouter, fake_twilio):
    fake_openrouter.then(FakeOpenRouter.error(401, "No auth credentials found"))
    fake_twilio.then(FakeTwilio.error(401, 20003, "Authenticate"))

    result = cli("check-config")

    assert result.exit_code == 1
    assert "✗ OpenRouter key: sk-or-…-key from the environment: openrouter: No auth credentials found" in result.output
    assert "fix: set OPENROUTER_API_KEY to a valid key from https://openrouter.ai/keys" in result.output
    assert "✗ Twilio account: credentials refused" in result.output
    assert "fix: copy TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN" in result.output


def test_unknown_model_fails(app_with):
    result = app_with(ai_model="openai/gpt-9-imaginary").test_cli_runner().invoke(args=["check-config"])
    assert result.exit_code == 1
    assert "✗ OpenRouter model: openai/gpt-9-imaginary is not offered by OpenRouter" in result.output
    assert "fix: set AI_MODEL to a slug listed at https://openrouter.ai/models" in result.output


def test_model_that_is_not_a_slug_fails_offline(app_with):
    result = app_with(ai_model="gpt4").test_cli_runner().invoke(args=["check-config", "--offline"])
    assert result.exit_code == 1
    assert "✗ AI_MODEL: 'gpt4' is not a model slug" in result.output


def test_the_active_ai_configuration_is_what_gets_checked(cli, services, fake_openrouter):
    configuration = AIConfiguration(name="claude", model_name="anthropic/claude-9")
    configuration.set_api_key("sk-or-v1-from-the-database", services.cipher)
    configuration.save()
    configuration.activate()

    result = cli("check-config")

    assert result.exit_code == 1
    assert "from AI configuration claude accepted" in result.output
    assert "✗ OpenRouter model: anthropic/claude-9 is not offered" in result.output
    assert "fix: run: flask ai-config update claude --model SLUG" in result.output
    assert fake_openrouter.requests[0].headers["Authorization"] == "Bearer sk-or-v1-from-the-database"


def test_unmigrated_database_fails_with_init_db_as_the_fix(app_with, tmp_path):
    app = app_with(database_url=f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    result = app.test_cli_runner().invoke(args=["check-config"])
    assert result.exit_code == 1
    assert f"✗ Database: reachable, but the schema is at version 0 of {len(migrations.MIGRATIONS)}" in result.output
    assert "fix: run: flask init-db" in result.output


def test_plain_http_public_url_is_a_warning_not_a_failure(app_with):
    result = app_with(public_base_url="http://bot.example.com").test_cli_runner().invoke(
        args=["check-config", "--offline"])
    assert result.exit_code == 0
    assert "! PUBLIC_BASE_URL: http://bot.example.com is not https" in result.output


def test_missing_public_url_fails_with_the_fix(app_with):
    result = app_with(public_base_url="").test_cli_runner().invoke(args=["check-config", "--offline"])
    assert result.exit_code == 1
    assert "✗ PUBLIC_BASE_URL: not set: the web process refuses to start without it" in result.output
    assert "fix: set it to the https origin Twilio calls" in result.output


# --- Settings that do not load ------------------------------------------------------------------

def invalid_settings_error(env) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Config.from_mapping({**env, "TWILIO_ACCOUNT_SID": "AC123", "FIELD_ENCRYPTION_KEY": "not-a-key"})
    return caught.value


def test_settings_that_do_not_load_are_each_reported_with_their_fix(env):
    app = create_config_error_app(invalid_settings_error(env))

    result = app.test_cli_runner().invoke(args=["check-config", "--offline"])

    assert result.exit_code == 1
    assert "✗ TWILIO_ACCOUNT_SID: must be AC followed by 32 hex characters" in result.output
    assert "✗ FIELD_ENCRYPTION_KEY: key #1 is not a valid Fernet key" in result.output
    assert "fix: make one with: python -c 'from cryptography.fernet import Fernet" in result.output
    assert "2 checks failed." in result.output


def test_other_commands_name_the_settings_problems_and_exit_1(env):
    app = create_config_error_app(invalid_settings_error(env))
    runner = app.test_cli_runner()

    for args in (["init-db"], ["ai-config", "list"], ["chat", "--phone", ADA]):
        result = runner.invoke(args=args)
        assert result.exit_code == 1, args
        assert "TWILIO_ACCOUNT_SID must be AC followed by 32 hex characters" in result.output
        assert "flask check-config" in result.output
    assert app.test_client().get("/health").status_code == 503


def test_flask_check_config_reports_settings_that_stop_the_app_loading(env):
    result = run_flask({**env, "TWILIO_ACCOUNT_SID": "AC123"}, "check-config")

    assert result.returncode == 1, result.stderr
    assert "✗ TWILIO_ACCOUNT_SID: must be AC followed by 32 hex characters" in result.stdout
    assert "Traceback" not in result.stderr


def test_web_process_refuses_to_start_on_invalid_settings(env):
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=PROJECT_DIR, capture_output=True, text=True,
                            env={**os.environ, **env, "TWILIO_ACCOUNT_SID": "AC123"}, timeout=60)
    assert result.returncode != 0
    assert "ConfigError" in result.stderr


def test_web_process_refuses_to_start_without_public_base_url(env, tmp_path):
    settings = {**os.environ, **env, "PUBLIC_BASE_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    imported = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=PROJECT_DIR, capture_output=True,
                              text=True, env=settings, timeout=60)
    served = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
                             f"127.0.0.1:{free_port()}", "wsgi:app"], cwd=PROJECT_DIR, capture_output=True,
                            text=True, env={**settings, "WEB_CONCURRENCY": "1"}, timeout=60)
    for result in (imported, served):
        assert result.returncode != 0
        assert "PUBLIC_BASE_URL is required by the web process but not set" in result.stderr


def test_flask_commands_run_without_public_base_url(env, tmp_path):
    result = run_flask({**env, "PUBLIC_BASE_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"},
                       "init-db")
    assert result.returncode == 0, result.stderr


# --- test-whatsapp --------------------------------------------------------------------------------

def test_test_whatsapp_sends_a_real_message(cli, fake_twilio):
    result = cli("test-whatsapp", "--to", ADA, "--message", "Hello from the operator")

    assert result.exit_code == 0, result.output
    assert fake_twilio.sent == [{"To": ADA, "From": BOT_NUMBER, "Body": "Hello from the operator",
                                 "StatusCallback": "https://bot.example.com/whatsapp/status"}]
    assert "✓ Sent to whatsapp:+1555•••1111" in result.output


def test_test_whatsapp_accepts_a_bare_e164_number_and_has_a_default_message(cli, fake_twilio):
    result = cli("test-whatsapp", "--to", "+15550001111")
    assert result.exit_code == 0, result.output
    assert fake_twilio.sent[0]["To"] == ADA
    assert "flask test-whatsapp" in fake_twilio.sent[0]["Body"]


@pytest.mark.parametrize("args", [[], ["--to", "15550001111"], ["--to", "whatsapp:+1"]])
def test_test_whatsapp_without_a_valid_recipient_is_bad_usage(cli, fake_twilio, args):
    result = cli("test-whatsapp", *args)
    assert result.exit_code == 2
    assert fake_twilio.requests == []


def test_test_whatsapp_explains_a_refused_send(cli, fake_twilio):
    fake_twilio.then(FakeTwilio.error(400, 63016, "Failed to send freeform message outside the window"))

    result = cli("test-whatsapp", "--to", ADA)

    assert result.exit_code == 1
    assert "✗ Not sent to whatsapp:+1555•••1111" in result.output
    assert "code=63016" in result.output
    assert "the recipient must message the bot first" in result.output


def test_test_whatsapp_with_twilio_down_fails(app_with):
    result = app_with(twilio_api_base_url=nowhere()).test_cli_runner().invoke(args=["test-whatsapp", "--to", ADA])
    assert result.exit_code == 1
    assert "could not reach Twilio" in result.output


def test_test_whatsapp_without_twilio_settings_fails_with_the_fix(app_with):
    result = app_with(twilio_auth_token="").test_cli_runner().invoke(args=["test-whatsapp", "--to", ADA])
    assert result.exit_code == 1
    assert "Twilio is not configured" in result.output
    assert "fix: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_WHATSAPP_NUMBER" in result.output


def test_test_whatsapp_check_config_sends_nothing(cli, fake_twilio):
    result = cli("test-whatsapp", "--check-config")

    assert result.exit_code == 0, result.output
    assert "✓ Twilio account: credentials accepted" in result.output
    assert fake_twilio.sent == []
    assert [r.method for r in fake_twilio.requests] == ["GET"]


def test_test_whatsapp_check_config_fails_on_a_wrong_token(cli, fake_twilio):
    fake_twilio.then(FakeTwilio.error(401, 20003, "Authenticate"))
    result = cli("test-whatsapp", "--check-config")
    assert result.exit_code == 1
    assert "✗ Twilio account: credentials refused" in result.output
    assert fake_twilio.sent == []
