"""flask numbers: list, add, update and remove the WhatsApp numbers the assistant answers on."""
from __future__ import annotations

from collections.abc import Callable

import click
from flask.cli import with_appcontext
from peewee import IntegrityError

from chatbot.cli.shared import operator_errors, services
from chatbot.models import AIConfiguration, Conversation, WhatsAppNumber, utcnow
from chatbot.models.db import database
from chatbot.numbers import SWITCHED_OFF
from config import amount_problem, whatsapp_address

OPTION_FOR_FIELD = {"label": "--label", "greeting": "--greeting", "template_sid": "--template",
                    "monthly_budget": "--monthly-budget"}
# How much of a greeting the list shows: enough to recognise it on one line.
GREETING_SHOWN = 30


def _address(text: str) -> str:
    """Return `text` as the whatsapp:+E.164 address Twilio posts (`+E.164` is accepted), or exit 1."""
    address = whatsapp_address(text)
    problem = WhatsAppNumber.field_problem("address", address)
    if problem:
        raise click.ClickException(f"{text!r}: {problem}")
    return address


def _monthly_budget(text: str) -> float | str:
    """The amount in USD, or `text` itself when it is none, for field_problem to name what is wrong."""
    return float(text) if amount_problem(text) is None else text


def _ai_configuration(name: str) -> AIConfiguration:
    configuration = AIConfiguration.get_or_none(AIConfiguration.name == name)
    if configuration is None:
        raise click.ClickException(f"no AI configuration named {name!r} (see: flask ai-config list)")
    return configuration


def _is_default(address: str) -> bool:
    return address == services().config.twilio_whatsapp_number


def _number(address: str) -> WhatsAppNumber:
    number = WhatsAppNumber.get_or_none(WhatsAppNumber.address == address)
    if number is not None:
        return number
    if _is_default(address):
        raise click.ClickException(f"the default number {address} has no settings of its own yet; give it some "
                                   f"with: flask numbers add {address} --label TEXT ...")
    raise click.ClickException(f"no number {address} (see: flask numbers list)")


def _save(number: WhatsAppNumber) -> None:
    """Validate and save, or exit 1 naming each invalid option, storing nothing."""
    errors = number.validation_errors()
    if errors:
        raise click.ClickException("; ".join(f"{OPTION_FOR_FIELD.get(field, field)}: {message}"
                                             for field, message in errors.items()))
    try:
        with database.atomic():
            number.save()
    except IntegrityError as error:
        raise click.ClickException(f"the number {number.address} exists already") from error
    # This process answers with the change at once; the others read the table again within seconds.
    services().numbers.forget()


def number_options(command: Callable) -> Callable:
    """The options add and update share."""
    options = [
        click.option("--ai-config", "ai_config", metavar="NAME",
                     help="The AI configuration that answers here (default: the active one)."),
        click.option("--greeting", help="Sent once, before a sender's first answer from this number."),
        click.option("--template", metavar="HXSID",
                     help="Twilio Content SID of the template that carries replies past the 24-hour window."),
        click.option("--monthly-budget", metavar="USD", help="The most this number's answers may cost a month."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group("numbers")
def numbers_group():
    """Manage the WhatsApp numbers the assistant answers on.

    The default number (TWILIO_WHATSAPP_NUMBER) answers without being added; adding it only gives it
    settings of its own.
    """


@numbers_group.command("list")
@with_appcontext
@operator_errors
def numbers_list():
    """List the numbers and how each one answers."""
    directory = services().numbers
    # Show the table as it is now, not this process's copy of up to a few seconds ago.
    directory.forget()
    default = directory.default_address
    addresses = [default, *(address for (address,) in WhatsAppNumber.select(WhatsAppNumber.address)
                            .where(WhatsAppNumber.address != default)
                            .order_by(WhatsAppNumber.address)
                            .tuples())]
    configurations = dict(AIConfiguration.select(AIConfiguration.id, AIConfiguration.name).tuples())
    rows = [("ADDRESS", "LABEL", "AI CONFIGURATION", "GREETING", "TEMPLATE", "MONTHLY BUDGET", "ACTIVE")]
    for address in addresses:
        assistant = directory.for_key("" if address == default else address)
        rows.append((
            f"{address or '(TWILIO_WHATSAPP_NUMBER not set)'}{' default' if address == default else ''}",
            assistant.label,
            configurations.get(assistant.ai_configuration_id, "active configuration"),
            _shortened(assistant.greeting) or "-",
            assistant.template_sid or "-",
            f"${assistant.monthly_budget:g}" if assistant.monthly_budget is not None else "-",
            "yes" if assistant.answers else "no",
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _shortened(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= GREETING_SHOWN else line[:GREETING_SHOWN - 1] + "…"


@numbers_group.command("add")
@click.argument("address")
@click.option("--label", required=True, help="How the admin and this list name the number.")
@number_options
@with_appcontext
@operator_errors
def numbers_add(address, label, ai_config, greeting, template, monthly_budget):
    """Answer on ADDRESS (whatsapp:+14155238886 or +14155238886) as well.

    Point the Twilio sender's webhook at the same URL as the default number's.
    """
    address = _address(address)
    if WhatsAppNumber.get_or_none(WhatsAppNumber.address == address) is not None:
        raise click.ClickException(f"the number {address} exists already "
                                   f"(change it with: flask numbers update {address})")
    number = WhatsAppNumber(
        address=address,
        label=label.strip(),
        ai_configuration=_ai_configuration(ai_config) if ai_config else None,
        greeting=greeting or "",
        template_sid=template or None,
        monthly_budget=_monthly_budget(monthly_budget) if monthly_budget is not None else None,
    )
    _save(number)
    if _is_default(address):
        click.echo(f"Gave the default number {address} settings of its own: {number.label!r}.")
    else:
        click.echo(f"Added {address} ({number.label!r}): messages to it are answered from now on.")


@numbers_group.command("update")
@click.argument("address")
@click.option("--label", help="Rename it.")
@number_options
@click.option("--no-ai-config", is_flag=True, help="Answer with the active AI configuration.")
@click.option("--no-monthly-budget", is_flag=True, help="Drop its own monthly cap.")
@click.option("--active/--inactive", "active", default=None,
              help=f"Answer its messages, or not. {SWITCHED_OFF}")
@with_appcontext
@operator_errors
def numbers_update(address, label, ai_config, greeting, template, monthly_budget, no_ai_config, no_monthly_budget,
                   active):
    """Change a number; only the options given change (--greeting "" and --template "" clear them)."""
    if ai_config and no_ai_config:
        raise click.UsageError("use either --ai-config or --no-ai-config, not both")
    if monthly_budget is not None and no_monthly_budget:
        raise click.UsageError("use either --monthly-budget or --no-monthly-budget, not both")
    number = _number(_address(address))
    values = {
        "label": label.strip() if label is not None else None,
        "greeting": greeting,
        "template_sid": template,
        "monthly_budget": _monthly_budget(monthly_budget) if monthly_budget is not None else None,
        "is_active": active,
    }
    changed = [field for field, value in values.items() if value is not None]
    for field in changed:
        setattr(number, field, values[field])
    if number.template_sid == "":
        number.template_sid = None
    if ai_config or no_ai_config:
        number.ai_configuration = _ai_configuration(ai_config) if ai_config else None
        changed.append("ai_configuration")
    if no_monthly_budget:
        number.monthly_budget = None
        changed.append("monthly_budget")
    if not changed:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    number.updated_at = utcnow()
    _save(number)
    click.echo(f"Updated {number.address} ({number.label!r}): {', '.join(changed)}.")


@numbers_group.command("remove")
@click.argument("address")
@with_appcontext
@operator_errors
def numbers_remove(address):
    """Stop answering on ADDRESS; its conversations are kept (the default number is only reset)."""
    number = _number(_address(address))
    number.delete_instance()
    services().numbers.forget()
    if _is_default(number.address):
        click.echo(f"Reset the default number {number.address}: it answers with the defaults again "
                   "(it is TWILIO_WHATSAPP_NUMBER, so it cannot be removed).")
        return
    kept = Conversation.select().where(Conversation.number == number.address).count()
    click.echo(f"Removed {number.address} ({number.label!r}): its messages are no longer answered; "
               f"its {kept} conversation(s) are kept.")
