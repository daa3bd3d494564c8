"""flask ai-config: list, create, update, activate, delete and test the stored AI configurations."""
from __future__ import annotations

import sys
from collections.abc import Callable

import click
from flask.cli import with_appcontext
from peewee import IntegrityError

from chatbot.checks import fail, openrouter_checks
from chatbot.cli.shared import conclude, echo_checks, operator_errors, services
from chatbot.errors import AIError
from chatbot.models import PROVIDERS, AIConfiguration, utcnow
from chatbot.models.db import database

OPTION_FOR_FIELD = {"name": "--name", "provider": "--provider", "model_name": "--model",
                    "max_tokens": "--max-tokens", "temperature": "--temperature"}


def _configuration(name: str) -> AIConfiguration:
    configuration = AIConfiguration.get_or_none(AIConfiguration.name == name)
    if configuration is None:
        raise click.ClickException(f"no AI configuration named {name!r} (see: flask ai-config list)")
    return configuration


def _read_api_key(from_stdin: bool, prompt: bool) -> str | None:
    """Return the key from stdin's first line or a hidden prompt, or None when neither was asked for."""
    if from_stdin and prompt:
        raise click.UsageError("use either --api-key-stdin or --api-key-prompt, not both")
    if from_stdin:
        key = sys.stdin.readline().strip()
        if not key:
            raise click.UsageError("--api-key-stdin: stdin held no key")
        return key
    if prompt:
        return click.prompt("OpenRouter API key", hide_input=True).strip()
    return None


def _system_prompt(text: str | None, file) -> str | None:
    if text is not None and file is not None:
        raise click.UsageError("use either --system-prompt or --system-prompt-file, not both")
    return file.read().strip() if file is not None else text


def _save(configuration: AIConfiguration) -> None:
    """Validate and save, or exit 2 naming each invalid option (exit 1 if the name is taken)."""
    errors = configuration.validation_errors()
    if errors:
        raise click.UsageError("; ".join(f"{OPTION_FOR_FIELD.get(field, field)}: {message}"
                                         for field, message in errors.items()))
    try:
        with database.atomic():
            configuration.save()
    except IntegrityError as error:
        raise click.ClickException(f"an AI configuration named {configuration.name!r} exists already") from error


def _key_shown(configuration: AIConfiguration) -> str:
    return configuration.masked_key(services().cipher)


def configuration_options(command: Callable) -> Callable:
    """The options create and update share."""
    options = [
        click.option("--model", "model_name", help="OpenRouter model slug, e.g. openai/gpt-4o-mini."),
        click.option("--provider", type=click.Choice(PROVIDERS), help="The AI provider."),
        click.option("--max-tokens", type=int, help="Longest answer in tokens (1 to 1,000,000)."),
        click.option("--temperature", type=float, help="Randomness, 0 to 2."),
        click.option("--system-prompt", help="How the assistant behaves (empty: AI_SYSTEM_PROMPT)."),
        click.option("--system-prompt-file", type=click.File("r", encoding="utf-8"),
                     help="Read the system prompt from a file."),
        click.option("--api-key-stdin", is_flag=True, help="Read the API key from the first line of stdin."),
        click.option("--api-key-prompt", is_flag=True, help="Ask for the API key (input hidden)."),
        click.option("--activate", is_flag=True, help="Make it the active configuration."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group("ai-config")
def ai_config_group():
    """Manage AI configurations.

    The active configuration answers messages; with none active, the environment's settings do.
    """


@ai_config_group.command("list")
@with_appcontext
@operator_errors
def ai_config_list():
    """List the AI configurations (* marks the active one)."""
    configurations = list(AIConfiguration.select().order_by(AIConfiguration.name))
    active = AIConfiguration.active()
    for configuration in configurations:
        marker = "*" if active is not None and configuration.id == active.id else " "
        click.echo(f"{marker} {configuration.name}  {configuration.provider}  {configuration.model_name}  "
                   f"max_tokens={configuration.max_tokens}  temperature={configuration.temperature:g}  "
                   f"key={_key_shown(configuration)}")
    if active is None:
        situation = "None is active" if configurations else "No AI configurations yet"
        click.echo(f"{situation}: messages use the environment's settings (AI_MODEL={services().config.ai_model}).")


@ai_config_group.command("create")
@click.option("--name", required=True, help="A unique name.")
@configuration_options
@with_appcontext
@operator_errors
def ai_config_create(name, model_name, provider, max_tokens, temperature, system_prompt, system_prompt_file,
                     api_key_stdin, api_key_prompt, activate):
    """Create an AI configuration.

    The key is read with --api-key-stdin or --api-key-prompt, never from the command line.
    """
    if not model_name:
        raise click.UsageError("give --model SLUG, e.g. --model openai/gpt-4o-mini")
    if AIConfiguration.get_or_none(AIConfiguration.name == name.strip()) is not None:
        raise click.ClickException(f"an AI configuration named {name.strip()!r} exists already "
                                   "(change it with: flask ai-config update)")
    configuration = AIConfiguration(name=name.strip(), model_name=model_name.strip())
    values = {"provider": provider, "max_tokens": max_tokens, "temperature": temperature,
              "system_prompt": _system_prompt(system_prompt, system_prompt_file)}
    for field, value in values.items():
        if value is not None:
            setattr(configuration, field, value)
    key = _read_api_key(api_key_stdin, api_key_prompt)
    if key:
        configuration.set_api_key(key, services().cipher)
    _save(configuration)
    if activate:
        configuration.activate()
    click.echo(f"Created AI configuration {configuration.name!r}: {configuration.model_name}, "
               f"key {_key_shown(configuration)}, {'active' if activate else 'not active'}.")
    if not activate:
        click.echo(f"Make it answer messages with: flask ai-config activate {configuration.name}")


@ai_config_group.command("update")
@click.argument("name")
@click.option("--name", "new_name", help="Rename it.")
@configuration_options
@click.option("--clear-api-key", is_flag=True, help="Forget the stored key (OPENROUTER_API_KEY is used).")
@with_appcontext
@operator_errors
def ai_config_update(name, new_name, model_name, provider, max_tokens, temperature, system_prompt,
                     system_prompt_file, api_key_stdin, api_key_prompt, activate, clear_api_key):
    """Change an AI configuration; only the options given change."""
    configuration = _configuration(name)
    key = _read_api_key(api_key_stdin, api_key_prompt)
    if key and clear_api_key:
        raise click.UsageError("use either a new key or --clear-api-key, not both")
    values = {"name": new_name.strip() if new_name else None,
              "model_name": model_name.strip() if model_name else None,
              "provider": provider, "max_tokens": max_tokens, "temperature": temperature,
              "system_prompt": _system_prompt(system_prompt, system_prompt_file)}
    changed = [field for field, value in values.items() if value is not None]
    for field in changed:
        setattr(configuration, field, values[field])
    if key or clear_api_key:
        configuration.set_api_key(key or "", services().cipher)
        changed.append("api_key")
    if not changed and not activate:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    configuration.updated_at = utcnow()
    _save(configuration)
    if activate:
        configuration.activate()
    click.echo(f"Updated AI configuration {configuration.name!r}"
               f"{': ' + ', '.join(changed) if changed else ''}{' and made it active' if activate else ''}.")


@ai_config_group.command("activate")
@click.argument("name")
@with_appcontext
@operator_errors
def ai_config_activate(name):
    """Make NAME the only active configuration: new messages use it at once."""
    configuration = _configuration(name)
    configuration.activate()
    click.echo(f"AI configuration {configuration.name!r} is active: messages use {configuration.model_name}.")


@ai_config_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
@operator_errors
def ai_config_delete(name, yes):
    """Delete an AI configuration and its stored key."""
    configuration = _configuration(name)
    if not yes:
        click.confirm(f"Delete AI configuration {configuration.name!r}?", abort=True)
    was_active = configuration.is_active
    configuration.delete_instance()
    click.echo(f"Deleted AI configuration {configuration.name!r}.")
    if was_active:
        click.echo(f"It was active: messages now use the environment's settings "
                   f"(AI_MODEL={services().config.ai_model}).")


@ai_config_group.command("test")
@click.argument("name", required=False)
@with_appcontext
@operator_errors
def ai_config_test(name):
    """Check a configuration's key and model with OpenRouter (default: the settings in force)."""
    factory = services().ai_factory
    settings = None
    if name is not None:
        configuration = _configuration(name)
        try:
            settings = factory.settings_for(configuration)
        except AIError as error:
            checks = [fail("OpenRouter key", str(error),
                                      f"enter it again: flask ai-config update {name} --api-key-prompt")]
            echo_checks(f"AI configuration {name!r}", checks)
            conclude(checks)
            return
    checks = openrouter_checks(factory, settings=settings)
    echo_checks(f"AI configuration {name!r}" if name else "AI settings in force", checks)
    conclude(checks)

