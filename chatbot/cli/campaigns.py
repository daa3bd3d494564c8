"""flask campaigns: create a template campaign from a CSV file or recent conversations, send it now or
at a time, pause, resume, cancel, and read its figures.

The rules live in chatbot/campaigns/ (the admin's Campaigns page applies the same ones); this module
reads options, says the outcome, and writes the audit row.
"""
from __future__ import annotations

import functools
from pathlib import Path

import click
from flask.cli import with_appcontext

from chatbot import audit
from chatbot.campaigns import control, drafting, results, template
from chatbot.campaigns.audience import AudienceError, decode, from_csv, recent_writers
from chatbot.cli.shared import Address, JsonObject, operator_errors, services
from chatbot.clock import shown
from chatbot.models import Campaign, CampaignResults, utcnow
from chatbot.users import CLI


def _number(address: str | None):
    """The number a campaign goes out from: the default one, or one the assistant answers on."""
    built = services()
    if address is None:
        return built.numbers.for_key("")
    assistant = built.numbers.for_recipient(address)
    if assistant is None:
        raise click.ClickException(f"{address} is not one of the assistant's numbers (see: flask numbers list)")
    return assistant


def _zone() -> str:
    return services().config.admin_timezone


def _problems(command):
    """Say a refused campaign operation in one line and exit 1."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (drafting.CampaignProblem, AudienceError) as problem:
            raise click.ClickException(str(problem)) from problem

    return run


@click.group("campaigns")
def campaigns_group():
    """Template campaigns: one approved WhatsApp template (ContentSid) to many customers, paced at
    CAMPAIGN_RATE a second, each recipient once."""


@campaigns_group.command("create")
@click.option("--name", required=True, help="What the campaign is called in lists.")
@click.option("--template", "content_sid", required=True, metavar="CONTENT_SID",
              help="The approved template's Content SID (HX followed by 32 hex characters).")
@click.option("--text", default="", help="The template's text as approved, with {{1}} … : the conversation a "
                                         "reply opens starts with it (recommended).")
@click.option("--variables", type=JsonObject(template.EXAMPLE),
              help="How each {{n}} is filled: a value, or {\"column\": NAME_OR_NUMBER} of the file. Default: the "
                   "file's other columns fill {{1}}, {{2}} … in order.")
@click.option("--number", "address", type=Address(), help="Send from this number (default: the main one).")
@click.option("--to-file", "csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A CSV whose first column is the number (+E.164, whatsapp: allowed; a header row allowed).")
@click.option("--recent-days", type=click.IntRange(1, 3650), metavar="N",
              help="Everyone who wrote to the number in the last N days.")
@with_appcontext
@operator_errors
@_problems
def campaigns_create(name, content_sid, text, variables, address, csv_file, recent_days):
    """Create a campaign as a draft: print its id first, then who it will send to and who it skipped and why."""
    if (csv_file is None) == (recent_days is None):
        raise click.UsageError("give the audience: --to-file CSV or --recent-days N (one of them)")
    built = services()
    assistant = _number(address)
    if csv_file is not None:
        audience = from_csv(decode(csv_file.read_bytes()), csv_file.name)
    else:
        audience = recent_writers(assistant.key, recent_days, utcnow())
    draft = drafting.create(name, content_sid, text, variables, assistant, audience, built.access,
                            built.config.campaign_max_recipients, CLI)
    campaign = draft.campaign
    audit.record("campaign_created", CLI, f"campaign {campaign.id}",
                 f"{campaign.name}: {draft.recipients} recipients, {len(draft.skips)} skipped", CLI)
    click.echo(campaign.id)
    click.echo(f"Campaign {campaign.id} {campaign.name!r}: template {campaign.content_sid} from {assistant.label} "
               f"({assistant.address}), a draft: nothing is sent yet.")
    click.echo(f"Will send to {draft.recipients} recipient{'s' if draft.recipients != 1 else ''} "
               f"({audience.source}); {template.describe(campaign.variables, audience.header)}.")
    if draft.skips:
        click.echo(f"Skipped {len(draft.skips)} ({drafting.summary(campaign.skipped_counts)}):")
        for skip in draft.skips:
            click.echo(f"  {skip.as_text()}")
    click.echo(f"Send it: flask campaigns send {campaign.id}  (or --at 2026-03-01T09:00, in {_zone()})")


@campaigns_group.command("send")
@click.argument("campaign_id", type=click.IntRange(1))
@click.option("--at", "at_text", metavar="ISO_TIME", help="Start then, e.g. 2026-03-01T09:00 (in ADMIN_TIMEZONE "
                                                          "unless it carries an offset); default: now.")
@with_appcontext
@operator_errors
@_problems
def campaigns_send(campaign_id, at_text):
    """Start sending a draft campaign now, or at a time."""
    at = control.when_from(at_text, _zone()) if at_text else None
    said = control.send(campaign_id, services().queue, at, _zone())
    audit.record("campaign_scheduled" if at else "campaign_sent", CLI, f"campaign {campaign_id}",
                 f"at {shown(at, _zone())}" if at else "now", CLI)
    click.echo(said)


@campaigns_group.command("pause")
@click.argument("campaign_id", type=click.IntRange(1))
@with_appcontext
@operator_errors
@_problems
def campaigns_pause(campaign_id):
    """Stop sending after the sends under way; resume goes on where it stopped."""
    said = control.pause(campaign_id)
    audit.record("campaign_paused", CLI, f"campaign {campaign_id}", "", CLI)
    click.echo(said)


@campaigns_group.command("resume")
@click.argument("campaign_id", type=click.IntRange(1))
@with_appcontext
@operator_errors
@_problems
def campaigns_resume(campaign_id):
    """Go on sending a paused campaign."""
    said = control.resume(campaign_id, services().queue, _zone())
    audit.record("campaign_resumed", CLI, f"campaign {campaign_id}", "", CLI)
    click.echo(said)


@campaigns_group.command("cancel")
@click.argument("campaign_id", type=click.IntRange(1))
@with_appcontext
@operator_errors
@_problems
def campaigns_cancel(campaign_id):
    """End a campaign: whoever was not sent to yet never is."""
    said = control.cancel(campaign_id)
    audit.record("campaign_cancelled", CLI, f"campaign {campaign_id}", "", CLI)
    click.echo(said)


@campaigns_group.command("status")
@click.argument("campaign_id", type=click.IntRange(1))
@with_appcontext
@operator_errors
@_problems
def campaigns_status(campaign_id):
    """A campaign's figures: queued, sent, delivered, read, failed, replies; and why some did not get it."""
    campaign = control.campaign_of(campaign_id)
    zone = _zone()
    assistant = services().numbers.for_key(campaign.number)
    figures = CampaignResults.of(campaign.id)
    click.echo(f"Campaign {campaign.id} {campaign.name!r}: {campaign.status}")
    click.echo(f"From {assistant.label} ({assistant.address}); template {campaign.content_sid}; "
               f"audience {campaign.audience}")
    click.echo(f"Created {shown(campaign.created_at, zone)}"
               + (f"; starts {shown(campaign.send_at, zone)}" if campaign.status == "scheduled" else "")
               + (f"; started {shown(campaign.started_at, zone)}" if campaign.started_at else "")
               + (f"; ended {shown(campaign.ended_at, zone)}" if campaign.ended_at else ""))
    if campaign.error:
        click.echo(f"Paused itself: {campaign.error}")
    for figure in results.FIGURES:
        click.echo(f"{figure:<10}{getattr(figures, figure):>7}")
    if figures.skipped or figures.cancelled:
        click.echo(f"(and {figures.skipped} skipped when their turn came, {figures.cancelled} cancelled)")
    if campaign.skipped_counts:
        click.echo(f"Left out when created: {drafting.summary(campaign.skipped_counts)}")
    for phone, why in results.failures(campaign.id):
        click.echo(f"  {phone}: {why}")
    month = results.month_count(campaign.number, zone)
    click.echo(f"Template messages from {assistant.label} in {month.month}: {month.count}")


@campaigns_group.command("list")
@with_appcontext
@operator_errors
def campaigns_list():
    """One line per campaign, newest first: id, status, name, recipients, sent, delivered, failed, replies."""
    campaigns = list(Campaign.select().order_by(Campaign.id.desc()))
    if not campaigns:
        click.echo("No campaigns yet: create one with flask campaigns create --name TEXT --template HX… "
                   "--to-file contacts.csv")
        return
    zone = _zone()
    figures = results.results_of([campaign.id for campaign in campaigns])
    rows = [("ID", "STATUS", "NAME", "CREATED", "RECIPIENTS", "SENT", "DELIVERED", "FAILED", "REPLIES")]
    rows += [(str(campaign.id), campaign.status, campaign.name, shown(campaign.created_at, zone),
              str(figures[campaign.id].total), str(figures[campaign.id].sent), str(figures[campaign.id].delivered),
              str(figures[campaign.id].failed), str(figures[campaign.id].replies)) for campaign in campaigns]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
