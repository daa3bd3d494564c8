"""flask commands on conversations: chat in the terminal, inspect, export, reset, delete, clean up and retry."""
from __future__ import annotations

import logging
import sys
from datetime import timedelta
from zoneinfo import ZoneInfo

import click
from flask.cli import with_appcontext

from chatbot import audit, exports
from chatbot.cli.shared import Address, number_key, operator_errors, services, when
from chatbot.console_chat import (
    CONSOLE_PHONE,
    ConsoleWhatsApp,
    ConversationBusy,
    abandon_console_message,
    store_console_message,
    typed_lines,
)
from chatbot.jobs import queueing, tasks
from chatbot.models import Conversation, Message, Origin, Status, utcnow
from chatbot.processor import MessageProcessor
from chatbot.redact import mask_phone
from chatbot.stages.approved import ApprovedAnswers
from chatbot.stages.rehearsal import is_customer
from chatbot.users import CLI


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
    processor = MessageProcessor(built.ai_factory,
                                 built.operator_channel(Origin.CONSOLE, console,
                                                        ApprovedAnswers(built.retriever, built.ai_factory)),
                                 built.context, built.errors, max_inbound_chars=built.config.max_inbound_chars,
                                 retriever=built.retriever)
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
        for text in typed_lines(interactive):
            if not text:
                continue
            try:
                message_id = store_console_message(phone, text, built.config)
            except ConversationBusy as busy:
                raise click.ClickException(f"{busy}; try again when they are answered") from busy
            outcome = processor.process(message_id)
            # None once a confirmed /forget erased it with everything else of this sender.
            question = Message.get_or_none(Message.id == message_id)
            message_id = None
            if outcome.failed:
                failures += 1
                click.echo(f"✗ The AI did not answer: {question.error}\n"
                           "    fix: run flask check-config (or flask ai-config test)", err=True)
            elif question is not None and question.status == Status.OPTED_OUT.value:
                words = built.config.user_commands
                who = mask_phone(phone) if is_customer(phone) else phone
                click.echo(f"(no answer: {who} wrote {words['stop']} to this number; "
                           f"{words['start']} resumes)", err=True)
    except KeyboardInterrupt:
        click.echo()
    finally:
        chatbot_log.setLevel(level)
        if message_id is not None:
            abandon_console_message(message_id)
    if failures:
        sys.exit(1)


def _latest_conversation(phone: str) -> Conversation:
    conversation = Conversation.latest_for(phone)
    if conversation is None:
        raise click.ClickException(f"no conversation with {mask_phone(phone)}")
    return conversation


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
    """List conversations, the most recently active first (times in ADMIN_TIMEZONE)."""
    rows = list(Conversation.recent(include_ended, limit))
    if not rows:
        click.echo("No conversations." if include_ended else "No active conversations (--all shows ended ones).")
        return
    for conversation in rows:
        phone = conversation.user_phone if show_numbers else mask_phone(conversation.user_phone)
        state = "active" if conversation.is_active else "ended"
        name = f"  {conversation.profile_name}" if conversation.profile_name else ""
        click.echo(f"{phone}  {state}  {conversation.message_count} message(s)  "
                   f"last {when(conversation.updated_at)}{name}")


@conversations_group.command("show")
@click.argument("phone", type=Address(console=True))
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Show the last this many messages.")
@with_appcontext
@operator_errors
def conversations_show(phone, limit):
    """Show the latest conversation with PHONE, message by message."""
    conversation = _latest_conversation(phone)
    messages = list(conversation.messages.order_by(Message.id.desc()).limit(limit))[::-1]
    total = conversation.messages.count()
    name = f" ({conversation.profile_name})" if conversation.profile_name else ""
    click.echo(f"Conversation with {mask_phone(phone)}{name}: "
               f"{'active' if conversation.is_active else 'ended'}, started {when(conversation.created_at)}, "
               f"last activity {when(conversation.updated_at)}, {total} message(s)")
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
        click.echo(f"[{when(message.created_at)}] {message.role} ({', '.join(details)}): {message.content}")
        if message.error:
            click.echo(f"    error: {message.error}")


class Moment(click.ParamType):
    """A day (YYYY-MM-DD, in ADMIN_TIMEZONE) or an ISO 8601 date and time, with or without its offset."""

    name = "DATE"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return exports.parse_moment(value)
        except ValueError:
            self.fail(f"{value!r} is neither a day (YYYY-MM-DD) nor an ISO 8601 date and time "
                      "(2026-03-01T09:00, or 2026-03-01T09:00+01:00)", param, ctx)


@conversations_group.command("export")
@click.option("--format", "shape", type=click.Choice(sorted(exports.WRITERS)), default="csv", show_default=True,
              help="csv (a header row), json (one array) or jsonl (an object a line).")
@click.option("--since", type=Moment(), help="From this day (in ADMIN_TIMEZONE) or moment on.")
@click.option("--until", type=Moment(), help="Up to this day, inclusive (in ADMIN_TIMEZONE), or this moment.")
@click.option("--number", type=Address(), help="Only conversations with this business number.")
@click.option("--reveal", is_flag=True, help="Write senders' whole phone numbers (recorded in the audit log).")
@with_appcontext
@operator_errors
def conversations_export(shape, since, until, number, reveal):
    """Write every WhatsApp message to standard output, one row a message, as it is read.

    Columns: conversation, time (in ADMIN_TIMEZONE, with its offset), number, sender (masked unless
    --reveal), role, text, status, model, tokens, cost, rating. Playground and console
    conversations are left out.
    """
    config = services().config
    zone = ZoneInfo(config.admin_timezone)
    scope = exports.Scope(zone=zone, default_number=config.twilio_whatsapp_number,
                          since=None if since is None else exports.start_of(since, zone),
                          before=None if until is None else exports.end_of(until, zone),
                          number=number_key(number), reveal=reveal)
    if scope.since is not None and scope.before is not None and scope.since >= scope.before:
        raise click.BadParameter(f"{until} is before {since}", param_hint="'--until'")
    if reveal:
        # Written before the first row: an export cut short has shown numbers all the same.
        audit.record("export_revealed", actor=CLI, target="flask conversations export", address=CLI,
                     detail=f"format={shape} since={since or ''} until={until or ''} number={number or 'every'}")
    for chunk in exports.export(scope, shape):
        click.echo(chunk, nl=False)


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
    Conversation.end([conversation.id], services().context)
    click.echo(f"Ended the conversation with {mask_phone(phone)} and forgot its context "
               f"({conversation.messages.count()} message(s) kept); the next message starts a new one.")


@conversations_group.command("delete")
@click.argument("phone", type=Address(console=True))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
@operator_errors
def conversations_delete(phone, yes):
    """Delete every conversation with PHONE: messages, context and webhook log entries."""
    conversation_ids = [
        conversation.id
        for conversation in Conversation.select(Conversation.id).where(Conversation.user_phone == phone)
    ]
    if not conversation_ids:
        raise click.ClickException(f"no conversation with {mask_phone(phone)}")
    if not yes:
        click.confirm(f"Delete {len(conversation_ids)} conversation(s) with {mask_phone(phone)} and all their "
                      "messages? This cannot be undone.", abort=True)
    messages, logs = Conversation.delete_with_history(conversation_ids, services().context)
    click.echo(f"Deleted {len(conversation_ids)} conversation(s), {messages} message(s) and {logs} webhook log "
               f"entr{'y' if logs == 1 else 'ies'} of {mask_phone(phone)}.")


@click.command("cleanup")
@with_appcontext
@operator_errors
def cleanup_command():
    """End idle conversations and delete what is past RETENTION_DAYS and WEBHOOK_LOG_RETENTION_DAYS, now."""
    built = services()
    tasks.install(built)
    counts = tasks.cleanup_expired_conversations()
    click.echo(f"Deactivated {counts['conversations_ended']} idle conversation(s).")
    if built.config.retention_days:
        click.echo(f"Deleted {counts['conversations_deleted']} conversation(s) untouched for "
                   f"{built.config.retention_days} days, with {counts['messages_deleted']} message(s).")
    else:
        click.echo("Conversations are kept forever (RETENTION_DAYS=0).")
    if counts["campaigns_deleted"]:
        click.echo(f"Deleted {counts['campaigns_deleted']} campaign(s) that ended {built.config.retention_days} "
                   "days ago or more, with their recipients.")
    logs = counts["webhook_logs_deleted"]
    entries = f"{logs} webhook log entr{'y' if logs == 1 else 'ies'}"
    if built.config.webhook_log_retention_days:
        click.echo(f"Deleted {entries} (older than {built.config.webhook_log_retention_days} days, "
                   "or of deleted conversations).")
    else:
        click.echo(f"Deleted {entries} of deleted conversations; the rest are kept forever "
                   "(WEBHOOK_LOG_RETENTION_DAYS=0).")


@click.command("retry-failed")
@click.option("--hours", default=24, show_default=True, type=click.IntRange(min=1),
              help="Retry messages that failed within this many hours.")
@with_appcontext
@operator_errors
def retry_failed_command(hours):
    """Ask the AI again for messages that got the apology instead of an answer."""
    built = services()
    retried = Message.failed_since(utcnow() - timedelta(hours=hours))
    queueing.answer_again(built.queue, retried)
    click.echo(f"Queued {len(retried)} failed message(s) for another answer.")
