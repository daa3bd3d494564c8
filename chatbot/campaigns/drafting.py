"""Creating a campaign: its template, variables and audience checked, the excluded left out and
named, and the campaign stored as a draft with one row per recipient (nothing is sent yet)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from chatbot.campaigns import template
from chatbot.campaigns.audience import Audience, Skip, SkipKind, exclude
from chatbot.models import MAX_SKIPS_KEPT, Campaign, CampaignRecipient
from chatbot.models.db import database
from chatbot.numbers import Assistant

MAX_NAME_CHARS = 100
# Recipients inserted per statement.
INSERT_BATCH = 500


class CampaignProblem(Exception):
    """A campaign operation refused; the message says why in words the operator can act on."""


@dataclass(frozen=True)
class Draft:
    """What creating a campaign did: the stored campaign, how many it will send to, what it left out."""

    campaign: Campaign
    recipients: int
    skips: list[Skip]


def create(name: str, content_sid: str, text: str, variables: dict | None, assistant: Assistant,
           audience: Audience, access, max_recipients: int, created_by: str) -> Draft:
    """Store a draft campaign of `audience` from `assistant`'s number; raise CampaignProblem (nothing
    stored) when the template or variables are unusable, nobody is left to send to, or more than
    `max_recipients` (CAMPAIGN_MAX_RECIPIENTS) would be."""
    name = (name or "").strip()
    text = (text or "").strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise CampaignProblem(f"a campaign needs a name of 1 to {MAX_NAME_CHARS} characters")
    if len(text) > template.MAX_TEXT_CHARS:
        raise CampaignProblem(f"the text is {len(text)} characters; an approved template has at most "
                              f"{template.MAX_TEXT_CHARS}")
    if not assistant.answers:
        raise CampaignProblem(f"{assistant.label} is switched off: replies to it would not be kept. Switch it on "
                              "first, or choose another number")
    try:
        content_sid = template.check_content_sid(content_sid)
        filling = template.mapping(variables, audience.header, audience.columns, text)
    except template.TemplateProblem as problem:
        raise CampaignProblem(str(problem)) from problem
    exclude(audience, assistant.key, access)
    rows = []
    for candidate in audience.candidates:
        values = template.values_for(filling, candidate.cells)
        empty = [name for name, value in values.items() if not value]
        if empty:
            audience.skips.append(Skip(candidate.line, SkipKind.INVALID,
                                       f"no value for {{{{{empty[0]}}}}} (column {filling[empty[0]]['column']})"))
            continue
        rows.append({"phone": candidate.phone, "line": candidate.line, "variables": values})
    skips = sorted(audience.skips, key=lambda skip: (skip.line is None, skip.line or 0))
    counts = dict(Counter(skip.kind.value for skip in skips))
    if not rows:
        raise CampaignProblem(f"nobody to send to in {audience.source}: {summary(counts) or 'the audience is empty'}")
    if len(rows) > max_recipients:
        raise CampaignProblem(f"{len(rows):,} recipients is more than CAMPAIGN_MAX_RECIPIENTS ({max_recipients:,}): "
                              "split the audience into several campaigns, or raise CAMPAIGN_MAX_RECIPIENTS")
    with database.atomic():
        campaign = Campaign.create(
            name=name, number=assistant.key, content_sid=content_sid, text=text, variables=filling,
            audience=audience.source[:255], skipped_counts=counts,
            skipped=[{"line": skip.line, "kind": skip.kind.value, "reason": skip.reason}
                     for skip in skips[:MAX_SKIPS_KEPT]],
            created_by=created_by)
        for start in range(0, len(rows), INSERT_BATCH):
            CampaignRecipient.insert_many([{**row, "campaign": campaign.id}
                                           for row in rows[start:start + INSERT_BATCH]]).execute()
    return Draft(campaign, len(rows), skips)


SKIP_WORDS = {SkipKind.INVALID: "invalid", SkipKind.DUPLICATE: "duplicate", SkipKind.OPTED_OUT: "sent STOP",
              SkipKind.KEPT_OUT: "kept out by the access list"}


def summary(counts: dict[str, int]) -> str:
    """Say how many were left out, by reason: `2 invalid, 1 duplicate, 2 sent STOP`."""
    return ", ".join(f"{counts[kind]} {words}" for kind, words in SKIP_WORDS.items() if counts.get(kind))
