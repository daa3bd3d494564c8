"""flask ai-config: the admin panel's operations on AI configurations, for scripts."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from chatbot.crypto import FieldCipher
from chatbot.models import AIConfiguration
from tests.fakes import FakeOpenRouter

KEY = "sk-or-v1-stdin-secret-1234567890"


@pytest.fixture
def create(cli):
    """Create a configuration named `name` with KEY read from stdin."""

    def run(name="claude", *options, key=KEY):
        return cli("ai-config", "create", "--name", name, "--model", "anthropic/claude-3.5-sonnet",
                   "--api-key-stdin", *options, input=f"{key}\n")

    return run


def test_create_reads_the_key_from_stdin_and_stores_it_encrypted(create, services):
    result = create("claude", "--max-tokens", "800", "--temperature", "0.2", "--system-prompt", "Be terse.")

    assert result.exit_code == 0, result.output
    assert KEY not in result.output
    assert "sk-or-…7890" in result.output
    assert "not active" in result.output
    stored = AIConfiguration.get(AIConfiguration.name == "claude")
    assert (stored.model_name, stored.max_tokens, stored.temperature, stored.system_prompt, stored.is_active) == (
        "anthropic/claude-3.5-sonnet", 800, 0.2, "Be terse.", False)
    assert KEY not in stored.api_key_encrypted
    assert stored.api_key(services.cipher) == KEY


def test_create_can_ask_for_the_key_hidden_and_activate(cli, services):
    result = cli("ai-config", "create", "--name", "gpt", "--model", "openai/gpt-4o", "--api-key-prompt",
                 "--activate", input=f"{KEY}\n")

    assert result.exit_code == 0, result.output
    assert KEY not in result.output
    assert AIConfiguration.active().name == "gpt"
    assert services.ai_factory.settings().api_key == KEY


def test_create_without_a_key_borrows_the_environments(cli, services):
    result = cli("ai-config", "create", "--name", "plain", "--model", "openai/gpt-4o")
    assert result.exit_code == 0, result.output
    assert "not set (uses OPENROUTER_API_KEY)" in result.output
    assert AIConfiguration.get().api_key_encrypted is None


@pytest.mark.parametrize("options, complaint", [
    (["--model", "gpt-4o"], "--model: Model must be an OpenRouter slug"),
    (["--model", "openai/gpt-4o", "--temperature", "3"], "--temperature: Temperature must be a number from 0 to 2"),
    (["--model", "openai/gpt-4o", "--max-tokens", "0"], "--max-tokens: Max tokens must be a whole number"),
    (["--model", "openai/gpt-4o", "--max-tokens", "many"], "'many' is not a valid integer"),
    ([], "give --model SLUG"),
    (["--model", "openai/gpt-4o", "--api-key-stdin", "--api-key-prompt"], "either --api-key-stdin or --api-key-prompt"),
    (["--model", "openai/gpt-4o", "--api-key-stdin"], "stdin held no key"),
])
def test_create_with_bad_options_is_bad_usage_and_stores_nothing(cli, services, options, complaint):
    result = cli("ai-config", "create", "--name", "bad", *options, input="")
    assert result.exit_code == 2, result.output
    assert complaint in result.output
    assert AIConfiguration.select().count() == 0


def test_create_with_a_taken_name_fails(create):
    create("claude")
    result = create("claude")
    assert result.exit_code == 1
    assert "exists already" in result.output


def test_list_marks_the_active_one_and_masks_keys(create, cli, services):
    create("claude", "--activate")
    cli("ai-config", "create", "--name", "gpt", "--model", "openai/gpt-4o")

    result = cli("ai-config", "list")

    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("* claude  openrouter  anthropic/claude-3.5-sonnet")
    assert "key=sk-or-…7890" in lines[0]
    assert lines[1].startswith("  gpt ") and "key=not set (uses OPENROUTER_API_KEY)" in lines[1]
    assert KEY not in result.output


def test_list_says_when_the_environment_answers(cli, services):
    result = cli("ai-config", "list")
    assert result.exit_code == 0
    assert "messages use the environment's settings (AI_MODEL=openai/gpt-4o-mini)" in result.output


def test_list_shows_a_key_that_no_longer_decrypts(cli, services):
    configuration = AIConfiguration(name="orphan", model_name="openai/gpt-4o")
    configuration.set_api_key(KEY, FieldCipher(Fernet.generate_key().decode()))
    configuration.save()
    assert "key=cannot decrypt (check FIELD_ENCRYPTION_KEY)" in cli("ai-config", "list").output


def test_update_changes_only_what_is_given(create, cli, services):
    create("claude")

    result = cli("ai-config", "update", "claude", "--name", "sonnet", "--model", "anthropic/claude-3.7-sonnet",
                 "--api-key-stdin", input="sk-or-v1-replacement-key-abcd\n")

    assert result.exit_code == 0, result.output
    assert "sk-or-v1-replacement-key-abcd" not in result.output
    stored = AIConfiguration.get()
    assert (stored.name, stored.model_name, stored.max_tokens) == ("sonnet", "anthropic/claude-3.7-sonnet", 500)
    assert stored.api_key(services.cipher) == "sk-or-v1-replacement-key-abcd"


def test_update_can_forget_the_key_and_activate(create, cli, services):
    create("claude")
    result = cli("ai-config", "update", "claude", "--clear-api-key", "--activate")
    assert result.exit_code == 0, result.output
    stored = AIConfiguration.get()
    assert stored.api_key_encrypted is None and stored.is_active


@pytest.mark.parametrize("args, code, complaint", [
    (["update", "nobody", "--model", "openai/gpt-4o"], 1, "no AI configuration named 'nobody'"),
    (["update", "claude"], 2, "nothing to change"),
    (["update", "claude", "--temperature", "-1"], 2, "--temperature: Temperature must be a number from 0 to 2"),
    (["activate", "nobody"], 1, "no AI configuration named 'nobody'"),
    (["delete", "nobody", "--yes"], 1, "no AI configuration named 'nobody'"),
    (["test", "nobody"], 1, "no AI configuration named 'nobody'"),
])
def test_bad_requests_fail_with_their_exit_code(create, cli, args, code, complaint):
    create("claude")
    result = cli("ai-config", *args)
    assert result.exit_code == code, result.output
    assert complaint in result.output
    assert AIConfiguration.get().temperature == 0.7


def test_update_to_a_taken_name_fails(create, cli):
    create("claude")
    create("gpt")
    result = cli("ai-config", "update", "gpt", "--name", "claude")
    assert result.exit_code == 1
    assert "exists already" in result.output


def test_activate_switches_what_answers_messages(create, cli, services):
    create("claude", "--activate")
    create("gpt")

    result = cli("ai-config", "activate", "gpt")

    assert result.exit_code == 0
    assert [c.name for c in AIConfiguration.select().where(AIConfiguration.is_active == True)] == ["gpt"]  # noqa: E712
    assert services.ai_factory.settings().source == "db:gpt"


def test_delete_asks_first(create, cli):
    create("claude")
    result = cli("ai-config", "delete", "claude", input="n\n")
    assert result.exit_code == 1
    assert AIConfiguration.select().count() == 1


def test_deleting_the_active_one_hands_back_to_the_environment(create, cli, services):
    create("claude", "--activate")
    result = cli("ai-config", "delete", "claude", "--yes")
    assert result.exit_code == 0
    assert "messages now use the environment's settings" in result.output
    assert AIConfiguration.select().count() == 0
    assert services.ai_factory.settings().source == "env"


def test_test_checks_the_configurations_own_key_and_model(create, cli, fake_openrouter):
    create("claude")

    result = cli("ai-config", "test", "claude")

    assert result.exit_code == 0, result.output
    assert "✓ OpenRouter key: sk-or-…7890 from AI configuration claude accepted" in result.output
    assert "✓ OpenRouter model: anthropic/claude-3.5-sonnet is available" in result.output
    assert [r.path for r in fake_openrouter.requests] == ["/api/v1/key", "/api/v1/models"]
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in fake_openrouter.requests)


def test_test_with_a_rejected_key_fails_with_the_fix(create, cli, fake_openrouter):
    create("claude")
    fake_openrouter.then(FakeOpenRouter.error(401, "User not found"))
    result = cli("ai-config", "test", "claude")
    assert result.exit_code == 1
    assert "✗ OpenRouter key" in result.output and "User not found" in result.output
    assert "fix: store a key: flask ai-config update claude --api-key-prompt" in result.output


def test_test_without_a_name_checks_the_settings_in_force(cli, fake_openrouter):
    result = cli("ai-config", "test")
    assert result.exit_code == 0, result.output
    assert "AI settings in force" in result.output and "from the environment accepted" in result.output
    assert fake_openrouter.requests[0].headers["Authorization"] == "Bearer sk-or-v1-test-key"


def test_test_of_a_key_that_no_longer_decrypts_fails(cli, services, fake_openrouter):
    configuration = AIConfiguration(name="orphan", model_name="openai/gpt-4o")
    configuration.set_api_key(KEY, FieldCipher(Fernet.generate_key().decode()))
    configuration.save()
    result = cli("ai-config", "test", "orphan")
    assert result.exit_code == 1
    assert "does not decrypt" in result.output
    assert fake_openrouter.requests == []
