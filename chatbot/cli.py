"""flask commands for operators: exit 0 when done, 1 when a check or an operation failed, 2 on bad usage."""
from __future__ import annotations

import functools
import logging
import re
import sys
from datetime import timedelta
from typing import Callable

import click
from flask import current_app
from flask.cli import with_appcontext
from peewee import IntegrityError, PeeweeException
from redis.exceptions import RedisError

from chatbot import auth, cli_checks, db, tasks
from chatbot.cli_checks import Check
from chatbot.crypto import SecretDecryptionError
from chatbot.db import database
from chatbot.errors import AIError, UpstreamError, WhatsAppError
from chatbot.models import (
    Origin,
    PROVIDERS,
    AIConfiguration,
    Conversation,
    Message,
    Role,
    Status,
    WebhookLog,
    utcnow,
)
from chatbot.processor import MessageProcessor
from chatbot.redact import mask_phone
from chatbot.sanitizer import clean_text
from chatbot.whatsapp import split_message
from config import WHATSAPP_ADDRESS_SHAPE, ConfigError

CONFIG_ERROR = "chatbot.config_error"
CONSOLE_PHONE = "console:local"
CONSOLE_ADDRESS_SHAPE = re.compile(r"^console:[A-Za-z0-9_.-]{1,40}$")


def init_app(app) -> None:
    """Register every operator command on `app`."""
    for command in COMMANDS:
        app.cli.add_command(command)


def init_config_error_app(app, error: ConfigError) -> None:
    """Register check-config to report `error`, and in place of every other command one that names it."""
    app.extensions[CONFIG_ERROR] = error
    for command in COMMANDS:
        app.cli.add_command(command if command is check_config_command else _refusing(command, error))


def _refusing(command: click.Command, error: ConfigError) -> click.Command:
    def refuse():
        raise click.ClickException(f"{error}\nRun `flask check-config` for how to fix each one.")

    return click.Command(command.name, callback=refuse, help=command.help, short_help=command.short_help,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                           "help_option_names": []})


def services():
    """Return this app's built clients."""
    return current_app.extensions["chatbot"]


def operator_errors(command: Callable) -> Callable:
    """Turn an unreachable database or Redis into a one-line error with its fix, and exit 1."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PeeweeException as error:
            raise click.ClickException(
                f"database: {cli_checks.first_line(error)}\n"
                "fix: check that the database is up and DATABASE_URL is right, then run `flask init-db`"
            ) from error
        except RedisError as error:
            raise click.ClickException(
                f"Redis: {cli_checks.first_line(error)}\nfix: start Redis, or correct REDIS_URL"
            ) from error
        except UpstreamError as error:
            raise click.ClickException(f"{error}\nfix: run flask check-config") from error

    return run


class Address(click.ParamType):
    """A WhatsApp address `whatsapp:+E164` (`+E164` is accepted), or a console one if allowed."""

    name = "whatsapp:+E164"

    def __init__(self, console: bool = False):
        self.console = console

    def convert(self, value, param, ctx):
        address = value.strip()
        if address.startswith("+"):
            address = "whatsapp:" + address
        if WHATSAPP_ADDRESS_SHAPE.match(address) or (self.console and CONSOLE_ADDRESS_SHAPE.match(address)):
            return address
        self.fail(f"{value!r} is not whatsapp:+ and an E.164 number, e.g. whatsapp:+14155550123", param, ctx)


def echo_checks(title: str, checks: list[Check]) -> None:
    click.echo(title)
    for check in checks:
        click.echo(f"  {check.verdict.value} {check.label}: {check.detail}")
        if check.fix:
            click.echo(f"      fix: {check.fix}")


def conclude(checks: list[Check]) -> None:
    """Say how many checks failed and exit 1 if any did."""
    failed = sum(check.failed for check in checks)
    if failed:
        click.echo(f"\n{failed} check{'s' if failed > 1 else ''} failed.")
        sys.exit(1)
    click.echo("\nAll checks passed.")


# --- Setup and diagnosis -------------------------------------------------------------------------

@click.command("init-db")
@with_appcontext
@operator_errors
def init_db_command():
    """Create or upgrade the database schema (safe to run on every deploy)."""
    before, after = db.upgrade()
    if before == after:
        click.echo(f"Database schema is up to date (version {after}).")
    else:
        click.echo(f"Database schema upgraded from version {before} to {after}.")


@click.command("check-config")
@click.option("--offline", is_flag=True, help="Check the settings only; reach no service.")
@with_appcontext
def check_config_command(offline):
    """Check the settings and every service.

    Each setting's presence and shape, then the database (reachable, migrated), Redis, the
    OpenRouter key and model, and the Twilio credentials, for real; prints a fix for each failure
    and the webhook URL to give Twilio.
    """
    error = current_app.extensions.get(CONFIG_ERROR)
    if error is not None:
        checks = cli_checks.problem_checks(error)
        echo_checks("Settings", checks)
        click.echo("\nThe settings do not load, so no service was checked: fix them and run this again.")
        conclude(checks)
        return
    built = services()
    checks = cli_checks.settings_checks(built.config)
    echo_checks("Settings", checks)
    if offline:
        click.echo("Services\n  - skipped (--offline)")
    else:
        service_checks = cli_checks.service_checks(built)
        echo_checks("Services", service_checks)
        checks += service_checks
    click.echo(f"Webhook\n  Give Twilio this URL for incoming messages (method POST): "
               f"{cli_checks.webhook_url(built.config)}")
    conclude(checks)


@click.command("test-whatsapp")
@click.option("--to", "recipient", type=Address(), help="Who receives the test message.")
@click.option("--message", default="", help="The text to send (default: a short test message).")
@click.option("--check-config", "check_only", is_flag=True,
              help="Only check the Twilio settings and credentials; send nothing.")
@with_appcontext
def test_whatsapp_command(recipient, message, check_only):
    """Send a real WhatsApp test message through Twilio."""
    built = services()
    if check_only:
        checks = cli_checks.twilio_settings_checks(built.config) + [cli_checks.twilio_account_check(built)]
        echo_checks("Twilio", checks)
        conclude(checks)
        return
    if recipient is None:
        raise click.UsageError("give --to whatsapp:+E164 (or --check-config to send nothing)")
    body = message or f"Test message from {built.config.site_name} (flask test-whatsapp)."
    try:
        sids = built.whatsapp.send(recipient, body)
    except WhatsAppError as error:
        click.echo(f"✗ Not sent to {mask_phone(recipient)}: {error}")
        click.echo(f"    fix: {_send_fix(error)}")
        sys.exit(1)
    click.echo(f"✓ Sent to {mask_phone(recipient)} in {len(sids)} message(s): {', '.join(sids)}")


def _send_fix(error: WhatsAppError) -> str:
    if error.status == 401 or error.code == 20003:
        return "copy TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN from the Twilio Console"
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
    return "check the network, or TWILIO_API_BASE_URL; see https://status.twilio.com"


# --- AI configurations ---------------------------------------------------------------------------

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
        click.option("--max-tokens", type=int, help="Longest answer in tokens (at least 1)."),
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
            checks = [cli_checks.fail("OpenRouter key", str(error),
                                      f"enter it again: flask ai-config update {name} --api-key-prompt")]
            echo_checks(f"AI configuration {name!r}", checks)
            conclude(checks)
            return
    checks = cli_checks.openrouter_checks(factory, settings=settings)
    echo_checks(f"AI configuration {name!r}" if name else "AI settings in force", checks)
    conclude(checks)


# --- Conversations -------------------------------------------------------------------------------

class ConsoleWhatsApp:
    """Stands in for WhatsAppClient in `flask chat`: prints each part of a reply instead of sending it."""

    def __init__(self, echo: Callable[[str], None], prefix: str = ""):
        self.echo = echo
        self.prefix = prefix

    def send(self, to: str, body: str, already_sent: int = 0,
             on_part_sent: Callable[[int, str], None] | None = None) -> list[str]:
        """Print `body` split as WhatsApp would receive it, skipping the first `already_sent` parts."""
        parts = split_message(body)
        ids = []
        for number, part in enumerate(parts, start=1):
            if number <= already_sent:
                continue
            if len(parts) > 1:
                self.echo(f"({number}/{len(parts)})")
            self.echo(f"{self.prefix}{part}")
            ids.append(f"console-{number}")
            if on_part_sent:
                on_part_sent(number, ids[-1])
        return ids


class ConversationBusy(Exception):
    """The conversation has messages waiting for the worker."""


def store_console_message(phone: str, text: str, config) -> int:
    """Store a typed line as the user's message, cleaned as the webhook cleans one; return its id."""
    body = clean_text(text, config.max_inbound_chars)
    metadata = {"trimmed": True} if body.trimmed else {}
    with database.atomic():
        conversation_id = Conversation.active_id_for(phone, "", config.conversation_ttl)
        waiting = Message.outstanding(conversation_id, up_to_id=sys.maxsize).count()
        if waiting:
            raise ConversationBusy(f"{mask_phone(phone)} has {waiting} message(s) waiting for the worker")
        return Message.insert(
            conversation=conversation_id,
            role=Role.USER.value,
            content=body.text,
            status=Status.PENDING.value,
            metadata=metadata,
            origin=Origin.CONSOLE.value,
        ).execute()


def _typed_lines(interactive: bool):
    """Yield each line typed (or piped) until end of input."""
    while True:
        if interactive:
            try:
                line = input("you> ")
            except EOFError:
                click.echo()
                return
        else:
            line = sys.stdin.readline()
            if not line:
                return
        yield line.strip()


@click.command("chat")
@click.option("--phone", type=Address(console=True), default=CONSOLE_PHONE, show_default=True,
              help="Whose conversation to continue: whatsapp:+E164, or console:NAME.")
@with_appcontext
@operator_errors
def chat_command(phone):
    """Chat with the assistant in the terminal; replies are printed, not sent.

    The real processor, database, context window and AI adapter answer, as for WhatsApp.

    One message per line, typed or piped. Exits at the end of input: 0, or 1 if the AI failed to
    answer a message.
    """
    built = services()
    interactive = sys.stdin.isatty()
    console = ConsoleWhatsApp(click.echo, "bot> " if interactive else "")
    processor = MessageProcessor(built.ai_factory, console, built.context, built.errors,
                                 max_inbound_chars=built.config.max_inbound_chars)
    settings = built.ai_factory.settings()
    click.echo(f"Chatting as {phone} with {settings.model} (settings from {settings.source}). "
               "Replies are printed, not sent. End with Ctrl-D.", err=True)
    failures = 0
    message_id = None
    # The processor's per-message INFO lines would interleave with the conversation.
    chatbot_log = logging.getLogger("chatbot")
    level = chatbot_log.level
    chatbot_log.setLevel(logging.WARNING)
    try:
        for text in _typed_lines(interactive):
            if not text:
                continue
            try:
                message_id = store_console_message(phone, text, built.config)
            except ConversationBusy as busy:
                raise click.ClickException(f"{busy}; try again when they are answered") from busy
            outcome = processor.process(message_id)
            question = Message.get_by_id(message_id)
            message_id = None
            if outcome.failed:
                failures += 1
                click.echo(f"✗ The AI did not answer: {question.error}\n"
                           "    fix: run flask check-config (or flask ai-config test)", err=True)
    except KeyboardInterrupt:
        click.echo()
    finally:
        chatbot_log.setLevel(level)
        if message_id is not None:
            # Interrupted mid-answer: keep the scheduler's sweep from answering it through Twilio.
            Message.update(status=Status.FAILED.value, error="console chat interrupted").where(
                Message.id == message_id, Message.status == Status.PENDING.value).execute()
    if failures:
        sys.exit(1)


def _latest_conversation(phone: str) -> Conversation:
    conversation = Conversation.latest_for(phone)
    if conversation is None:
        raise click.ClickException(f"no conversation with {mask_phone(phone)}")
    return conversation


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


@click.group("conversations")
def conversations_group():
    """Inspect, reset or delete conversations (PHONE is whatsapp:+E164)."""


@conversations_group.command("list")
@click.option("--all", "include_ended", is_flag=True, help="Include ended conversations.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Show at most this many.")
@click.option("--show-numbers", is_flag=True, help="Print whole phone numbers instead of masked ones.")
@with_appcontext
@operator_errors
def conversations_list(include_ended, limit, show_numbers):
    """List conversations, the most recently active first (times in UTC)."""
    rows = list(Conversation.recent(include_ended, limit))
    if not rows:
        click.echo("No conversations." if include_ended else "No active conversations (--all shows ended ones).")
        return
    for conversation in rows:
        phone = conversation.user_phone if show_numbers else mask_phone(conversation.user_phone)
        state = "active" if conversation.is_active else "ended"
        name = f"  {conversation.profile_name}" if conversation.profile_name else ""
        click.echo(f"{phone}  {state}  {conversation.message_count} message(s)  "
                   f"last {_when(conversation.updated_at)}{name}")


@conversations_group.command("show")
@click.argument("phone", type=Address(console=True))
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Show the last this many messages.")
@with_appcontext
@operator_errors
def conversations_show(phone, limit):
    """Show the latest conversation with PHONE, message by message."""
    conversation = _latest_conversation(phone)
    messages = list(conversation.messages.order_by(Message.id.desc()).limit(limit))[::-1]
    total = conversation.messages.count()
    click.echo(f"Conversation with {mask_phone(phone)}{' (' + conversation.profile_name + ')' if conversation.profile_name else ''}: "
               f"{'active' if conversation.is_active else 'ended'}, started {_when(conversation.created_at)}, "
               f"last activity {_when(conversation.updated_at)} (UTC), {total} message(s)")
    if total > len(messages):
        click.echo(f"... {total - len(messages)} earlier message(s) not shown (--limit)")
    for message in messages:
        details = [message.status]
        if message.model:
            details.append(message.model)
        if message.total_tokens is not None:
            details.append(f"{message.total_tokens} tokens")
        if message.latency_ms is not None:
            details.append(f"{message.latency_ms:.0f} ms")
        click.echo(f"[{_when(message.created_at)}] {message.role} ({', '.join(details)}): {message.content}")
        if message.error:
            click.echo(f"    error: {message.error}")


@conversations_group.command("reset")
@click.argument("phone", type=Address(console=True))
@with_appcontext
@operator_errors
def conversations_reset(phone):
    """End PHONE's active conversation and forget its context; the next message starts afresh."""
    conversation = _latest_conversation(phone)
    if not conversation.is_active:
        click.echo(f"{mask_phone(phone)} has no active conversation; nothing to reset.")
        return
    services().context.clear_history(conversation.id)
    Conversation.update(is_active=False).where(Conversation.id == conversation.id).execute()
    click.echo(f"Ended the conversation with {mask_phone(phone)} and forgot its context "
               f"({conversation.messages.count()} message(s) kept); the next message starts a new one.")


@conversations_group.command("delete")
@click.argument("phone", type=Address(console=True))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
@operator_errors
def conversations_delete(phone, yes):
    """Delete every conversation with PHONE: messages, context and webhook log entries."""
    conversation_ids = [c.id for c in Conversation.select(Conversation.id).where(Conversation.user_phone == phone)]
    if not conversation_ids:
        raise click.ClickException(f"no conversation with {mask_phone(phone)}")
    if not yes:
        click.confirm(f"Delete {len(conversation_ids)} conversation(s) with {mask_phone(phone)} and all their "
                      "messages? This cannot be undone.", abort=True)
    for conversation_id in conversation_ids:
        services().context.clear_history(conversation_id)
    with database.atomic():
        of_phone = Message.conversation.in_(conversation_ids)
        sids = [m.twilio_sid for m in Message.select(Message.twilio_sid).where(of_phone, Message.twilio_sid.is_null(False))]
        logs = WebhookLog.delete().where(WebhookLog.message_sid.in_(sids)).execute() if sids else 0
        # Counted first: SQLite does not count the answers its cascade deletes with their questions.
        messages = Message.select().where(of_phone).count()
        Message.delete().where(of_phone).execute()
        Conversation.delete().where(Conversation.id.in_(conversation_ids)).execute()
    click.echo(f"Deleted {len(conversation_ids)} conversation(s), {messages} message(s) and {logs} webhook log "
               f"entr{'y' if logs == 1 else 'ies'} of {mask_phone(phone)}.")


@click.command("cleanup")
@with_appcontext
@operator_errors
def cleanup_command():
    """Deactivate conversations idle longer than CONVERSATION_TTL, now."""
    tasks.install(services())
    count = tasks.cleanup_expired_conversations()
    click.echo(f"Deactivated {count} idle conversation(s).")


# --- Admin users and keys ------------------------------------------------------------------------

@click.command("create-admin")
@click.option("--username", required=True, help="Login name of the admin user.")
@click.option("--password", help="Password; prompted for (hidden, twice) when omitted.")
@with_appcontext
def create_admin_command(username, password):
    """Create an admin user for the panel at /admin, or reset an existing one's password."""
    if password is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise click.BadParameter("use at least 8 characters", param_hint="--password")
    _user, created = auth.create_or_reset_admin(username.strip(), password)
    click.echo(f"{'Created' if created else 'Reset the password of'} admin user {username.strip()!r}.")


@click.command("rotate-key")
@with_appcontext
def rotate_key_command():
    """Re-encrypt stored API keys with the first key of FIELD_ENCRYPTION_KEY.

    To rotate: put a new key first (NEW,OLD), deploy, run this, then drop OLD.
    """
    cipher = current_app.extensions["chatbot"].cipher
    rotated, failed = 0, []
    for config in AIConfiguration.select().where(AIConfiguration.api_key_encrypted.is_null(False)):
        try:
            token = cipher.rotate(config.api_key_encrypted)
        except SecretDecryptionError:
            failed.append(config.name)
            continue
        AIConfiguration.update(api_key_encrypted=token).where(AIConfiguration.id == config.id).execute()
        rotated += 1
    click.echo(f"Re-encrypted {rotated} API key(s) with the newest key.")
    if failed:
        click.echo(f"Could not decrypt: {', '.join(failed)} (is its old key still in FIELD_ENCRYPTION_KEY?)", err=True)
        raise SystemExit(1)


@click.command("retry-failed")
@click.option("--hours", default=24, show_default=True, type=click.IntRange(min=1),
              help="Retry messages that failed within this many hours.")
@with_appcontext
def retry_failed_command(hours):
    """Ask the AI again for messages that got the apology instead of an answer."""
    services = current_app.extensions["chatbot"]
    retried = Message.retry_failed(utcnow() - timedelta(hours=hours))
    for message in retried:
        tasks.enqueue_processing(services.queue, message.id, message.conversation.user_phone)
    click.echo(f"Queued {len(retried)} failed message(s) for another answer.")


COMMANDS = [
    init_db_command,
    check_config_command,
    test_whatsapp_command,
    ai_config_group,
    chat_command,
    conversations_group,
    cleanup_command,
    create_admin_command,
    rotate_key_command,
    retry_failed_command,
]
