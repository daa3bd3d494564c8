"""Campaigns piece by piece: reading the audience, who is left out and why, the variables, the limits,
the pace, the look-up that keeps a send from going twice, and `flask campaigns` as an operator uses it."""
from __future__ import annotations

import json
import re
import time
from datetime import datetime

import pytest
from cryptography.fernet import Fernet

from chatbot.campaigns import audience as audiences
from chatbot.campaigns import template
from chatbot.campaigns.audience import AudienceError, SkipKind, decode, from_csv
from chatbot.campaigns.control import when_from
from chatbot.campaigns.drafting import CampaignProblem
from chatbot.campaigns.pacing import HEADROOM, Pacer
from chatbot.models import (
    AccessEntry,
    AuditEvent,
    Campaign,
    CampaignRecipient,
    Message,
    OptOut,
    Origin,
    Role,
    Setting,
    Status,
    utcnow,
)
from chatbot.stages.access import MODE_KEY
from config import Config, ConfigError
from tests.support import conversation_for

SID = "HX" + "0123456789abcdef" * 2
ANN, BOB, CY = "whatsapp:+15550100001", "whatsapp:+15550100002", "whatsapp:+15550100003"
SALES = "whatsapp:+15550109000"


def write(tmp_path, text: str, name: str = "contacts.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def recipients() -> list[tuple[str, dict]]:
    return [(r.phone, r.variables) for r in CampaignRecipient.select().order_by(CampaignRecipient.id)]


# --- the audience file -----------------------------------------------------------------------------

def test_a_csv_is_read_with_or_without_header_prefix_and_semicolons_each_number_once():
    exported = "Phone;Name\n+1 555-010-0001;Ann\n\nwhatsapp:+15550100002;Bob\n15550100003;Cy\n+15550100001;Ann again\n"
    read = from_csv(decode(exported.encode("utf-8-sig")), "people.csv")  # as a spreadsheet saves it
    assert read.header == ("Phone", "Name") and read.columns == 2
    assert [(c.phone, c.line, c.cells) for c in read.candidates] == [(ANN, 2, ("Ann",)), (BOB, 4, ("Bob",))]
    assert [skip.as_text() for skip in read.skips] == [
        "line 5: not a phone number in E.164 form (+ and country code): '155••••••03'",
        "line 6: +1555•••0001 again (first on line 2)"]


def test_a_file_without_a_header_starts_with_its_first_number():
    read = from_csv("+15550100001\n+15550100002\n", "plain.csv")
    assert read.header == () and [c.line for c in read.candidates] == [1, 2]


def test_a_file_that_is_not_utf8_is_refused_with_the_fix():
    with pytest.raises(AudienceError, match="not UTF-8 text .* save it as CSV UTF-8"):
        decode("+15550100001,Zoë\n".encode("latin-1"))


# --- who is left out -------------------------------------------------------------------------------

def test_stop_on_this_number_or_on_every_number_excludes_stop_on_another_does_not(services):
    OptOut.stop(ANN, "")
    OptOut.create(user_phone=BOB, number=None)  # an opt-out of every number, from before numbers had their own
    OptOut.stop(CY, SALES)
    reasons = audiences.exclusion_reasons([ANN, BOB, CY], "", services.access)
    assert {phone: kind for phone, (kind, _) in reasons.items()} == {ANN: SkipKind.OPTED_OUT, BOB: SkipKind.OPTED_OUT}


def test_blocklist_and_allowlist_modes_keep_out_whom_the_access_gate_would(services):
    AccessEntry.create(user_phone="+15550100001", kind="block")
    Setting.put(MODE_KEY, "blocklist")
    assert audiences.exclusion_reasons([ANN, BOB], "", services.access) == {
        ANN: (SkipKind.KEPT_OUT, "+1555•••0001 is on the blocklist")}
    AccessEntry.create(user_phone="+15550100002", kind="allow")
    Setting.put(MODE_KEY, "allowlist")
    assert audiences.exclusion_reasons([ANN, BOB], "", services.access) == {
        ANN: (SkipKind.KEPT_OUT, "+1555•••0001 is not on the allowlist")}


# --- variables -------------------------------------------------------------------------------------

def test_the_files_other_columns_fill_the_variables_in_order_unless_told():
    assert template.mapping(None, ("phone", "name", "code"), 3) == {"1": {"column": 2}, "2": {"column": 3}}
    told = template.mapping({"2": "20%", "1": {"column": "name"}}, ("phone", "name"), 2, "Hi {{1}}: {{ 2 }} off")
    assert told == {"1": {"column": 2}, "2": "20%"}
    assert template.values_for(told, ("Ann",)) == {"1": "Ann", "2": "20%"}
    assert template.render("Hi {{1}}: {{ 2 }} off", {"1": "Ann", "2": "20%"}, SID) == "Hi Ann: 20% off"


@pytest.mark.parametrize("spec, header, columns, text, problem", [
    ({"1": {"column": "email"}}, ("phone", "name"), 2, "", "the file has no column 'email' (its columns: 'name')"),
    ({"1": {"column": 1}}, ("phone", "name"), 2, "", "column 1 is not one of the file's columns 2 to 2"),
    ({"1": {"column": 2}}, (), 1, "", "the audience has no columns besides the number; give a fixed value"),
    ({"1": " "}, (), 1, "", "variable {{1}} is empty"),
    ({"one": "x"}, (), 1, "", "variable 'one' is not a number from 1 to 99"),
    ({"1": "x"}, (), 1, "Hi {{1}} and {{2}}", "the text has {{2}} but no variable fills it"),
    ({"1": "x", "2": "y"}, (), 1, "Hi {{1}}", "the text has no {{2}}"),
])
def test_variables_that_cannot_be_filled_are_refused_saying_how_to_fix_them(spec, header, columns, text, problem):
    with pytest.raises(template.TemplateProblem, match=re.escape(problem)):
        template.mapping(spec, header, columns, text)


# --- settings, pace, the look-up ------------------------------------------------------------------

@pytest.mark.parametrize("name, raw, problem", [
    ("CAMPAIGN_RATE", "0", "CAMPAIGN_RATE must be between 0.1 and 100, got 0"),
    ("CAMPAIGN_RATE", "fast", "CAMPAIGN_RATE must be a number, got 'fast'"),
    ("CAMPAIGN_MAX_RECIPIENTS", "0", "CAMPAIGN_MAX_RECIPIENTS must be at least 1, got 0"),
    ("CAMPAIGN_MAX_RECIPIENTS", "lots", "CAMPAIGN_MAX_RECIPIENTS must be a whole number, got 'lots'"),
])
def test_campaign_settings_out_of_range_are_named(name, raw, problem):
    minimal = {"SECRET_KEY": "s", "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    assert (Config.from_mapping(minimal).campaign_rate, Config.from_mapping(minimal).campaign_max_recipients) == \
        (10.0, 10_000)
    with pytest.raises(ConfigError) as error:
        Config.from_mapping({**minimal, name: raw})
    assert error.value.problems == [problem]


def test_one_numbers_turns_are_spaced_and_capped_per_second_across_pacers_another_number_goes_at_once(redis):
    first, second = Pacer(redis, 2), Pacer(redis, 2)
    turns = []
    for pacer in (first, second, first):
        pacer.wait_turn("")
        turns.append(time.monotonic())
    assert second.wait_turn(SALES) == 0
    # Half a second apart at 2 a second, and the third waits for the first to be a window (1.05 s) old.
    assert turns[1] - turns[0] >= 0.5 - 0.01
    assert turns[2] - turns[0] >= 1 + HEADROOM - 0.01


def test_a_send_a_dead_run_handed_to_twilio_is_found_and_never_sent_again(cli, services, run_jobs, tmp_path,
                                                                          fake_twilio):
    created = cli("campaigns", "create", "--name", "Once", "--template", SID, "--to-file",
                  write(tmp_path, "phone,name\n+15550100001,Ann\n+15550100002,Bob\n"))
    campaign_id = int(created.output.splitlines()[0])
    # The run that died: Twilio took Ann's message, the run never learned it.
    before = utcnow()
    taken = services.whatsapp.send_content(ANN, SID, {"1": "Ann"})
    CampaignRecipient.update(sending_since=before).where(CampaignRecipient.phone == ANN).execute()

    cli("campaigns", "send", str(campaign_id))
    run_jobs()

    assert sorted(send.body["To"] for send in fake_twilio.content_sends) == [ANN, BOB]  # Ann's once: the dead run's
    assert len(fake_twilio.lookups) == 1
    assert CampaignRecipient.get(CampaignRecipient.phone == ANN).twilio_sid == taken


# --- sending: what changes after creation -----------------------------------------------------------

def test_stop_after_creation_skips_the_recipient_and_a_refused_one_fails_the_campaign_goes_on(
        cli, services, run_jobs, tmp_path, fake_twilio):
    fake_twilio.refused_recipients[CY] = 21610
    created = cli("campaigns", "create", "--name", "Later", "--template", SID, "--to-file",
                  write(tmp_path, "+15550100001\n+15550100002\n+15550100003\n"))
    campaign_id = int(created.output.splitlines()[0])
    OptOut.stop(ANN, "")

    cli("campaigns", "send", str(campaign_id))
    run_jobs()

    assert sorted(send.body["To"] for send in fake_twilio.content_sends) == [BOB, CY]
    status = cli("campaigns", "status", str(campaign_id)).output
    assert "(and 1 skipped when their turn came, 0 cancelled)" in status
    assert "+1555•••0001: +1555•••0001 wrote STOP to this number" in status
    assert "+1555•••0003: Twilio error 21610: The user unsubscribed from this number (replied STOP)." in status
    assert Campaign.get_by_id(campaign_id).status == "finished"


def test_a_template_twilio_refuses_for_everyone_pauses_the_campaign_with_the_reason(cli, services, run_jobs,
                                                                                     tmp_path, fake_twilio):
    fake_twilio.then(fake_twilio.error(401, 20003, "Authenticate"))
    created = cli("campaigns", "create", "--name", "Keys", "--template", SID, "--to-file",
                  write(tmp_path, "+15550100001\n+15550100002\n"))
    campaign_id = int(created.output.splitlines()[0])
    cli("campaigns", "send", str(campaign_id))
    run_jobs()

    campaign = Campaign.get_by_id(campaign_id)
    assert campaign.status == "paused" and "Twilio refused the credentials" in campaign.error
    assert "Paused itself: twilio: Unable to create record: Authenticate (status=401, code=20003, permanent)" in \
        cli("campaigns", "status", str(campaign_id)).output
    assert cli("campaigns", "resume", str(campaign_id)).output == f"Campaign {campaign_id} is sending again.\n"
    run_jobs()
    assert Campaign.get_by_id(campaign_id).status == "finished"
    assert sorted(send.body["To"] for send in fake_twilio.content_sends[1:]) == [ANN, BOB]


def test_a_paused_campaign_sends_nothing_until_resumed_and_a_cancelled_one_never(cli, services, run_jobs, tmp_path,
                                                                                 fake_twilio):
    created = cli("campaigns", "create", "--name", "Hold", "--template", SID, "--to-file",
                  write(tmp_path, "+15550100001\n+15550100002\n"))
    campaign_id = int(created.output.splitlines()[0])
    cli("campaigns", "send", str(campaign_id))
    assert cli("campaigns", "pause", str(campaign_id)).exit_code == 0
    run_jobs()
    assert fake_twilio.requests == []
    assert cli("campaigns", "cancel", str(campaign_id)).output == \
        f"Campaign {campaign_id} is cancelled; 2 recipients will not get it.\n"
    refused = cli("campaigns", "resume", str(campaign_id))
    assert refused.exit_code == 1 and f"campaign {campaign_id} is cancelled: it cannot be resumed now" in refused.output
    run_jobs()
    assert fake_twilio.requests == []
    assert [row.action for row in AuditEvent.select().order_by(AuditEvent.id)] == [
        "campaign_created", "campaign_sent", "campaign_paused", "campaign_cancelled"]


def test_forgetting_a_customer_erases_their_campaign_rows(services, post_webhook, run_jobs):
    campaign = Campaign.create(name="Old", content_sid=SID, status="finished")
    CampaignRecipient.create(campaign=campaign, phone=ANN)
    CampaignRecipient.create(campaign=campaign, phone=BOB)
    post_webhook.message("/forget", sender=ANN)
    run_jobs()
    post_webhook.message("YES", sender=ANN)
    run_jobs()
    assert [recipient.phone for recipient in CampaignRecipient.select()] == [BOB]


# --- flask campaigns ------------------------------------------------------------------------------

def test_create_prints_the_id_first_then_what_it_will_send_and_what_it_skipped(cli, services, tmp_path):
    OptOut.stop(BOB, "")
    result = cli("campaigns", "create", "--name", "Welcome", "--template", SID, "--text", "Hi {{1}}!",
                 "--to-file", write(tmp_path, "phone,first_name\n+15550100001,Ann\n+15550100002,Bob\n+15550100003,\n"))
    assert result.exit_code == 0, result.output
    campaign = Campaign.get()
    assert result.output.splitlines() == [
        str(campaign.id),
        f"Campaign {campaign.id} 'Welcome': template {SID} from Default number (whatsapp:+14155238886), a draft: "
        "nothing is sent yet.",
        "Will send to 1 recipient (contacts.csv); {{1}} = column first_name.",
        "Skipped 2 (1 invalid, 1 sent STOP):",
        "  line 3: +1555•••0002 wrote STOP to this number",
        "  line 4: no value for {{1}} (column 2)",
        f"Send it: flask campaigns send {campaign.id}  (or --at 2026-03-01T09:00, in UTC)",
    ]
    assert recipients() == [(ANN, {"1": "Ann"})]
    assert AuditEvent.get().action == "campaign_created" and AuditEvent.get().actor == "cli"


def test_more_recipients_than_campaign_max_recipients_is_refused_and_nothing_stored(app_with, services, tmp_path):
    app = app_with(campaign_max_recipients=2)
    result = app.test_cli_runner().invoke(args=[
        "campaigns", "create", "--name", "Big", "--template", SID,
        "--to-file", write(tmp_path, "+15550100001\n+15550100002\n+15550100003\n")])
    assert result.exit_code == 1
    assert "Error: 3 recipients is more than CAMPAIGN_MAX_RECIPIENTS (2): split the audience into several " \
           "campaigns, or raise CAMPAIGN_MAX_RECIPIENTS" in result.output
    assert Campaign.select().count() == 0 and CampaignRecipient.select().count() == 0


@pytest.mark.parametrize("arguments, problem", [
    ([], "give the audience: --to-file CSV or --recent-days N (one of them)"),
    (["--recent-days", "7", "--to-file", "{file}"], "give the audience: --to-file CSV or --recent-days N"),
    (["--recent-days", "7", "--number", "+15550109999"], "whatsapp:+15550109999 is not one of the assistant's numbers"),
    (["--recent-days", "7"], "nobody to send to in wrote to the number in the last 7 days: the audience is empty"),
    (["--to-file", "{file}", "--template", "HX12"], "'HX12' is not a Twilio Content SID"),
    (["--to-file", "{file}", "--variables", "[1]"], "must be a JSON object"),
])
def test_create_refuses_what_it_cannot_use_and_says_why(cli, services, tmp_path, arguments, problem):
    path = write(tmp_path, "+15550100001\n")
    result = cli("campaigns", "create", "--name", "Bad", "--template", SID,
                 *[argument.format(file=path) for argument in arguments])
    assert result.exit_code in (1, 2) and problem in result.output, result.output
    assert Campaign.select().count() == 0


def test_recent_days_is_everyone_who_wrote_to_that_number_lately(cli, services):
    for phone in (ANN, BOB):
        Message.create(conversation=conversation_for(phone), role=Role.USER.value, content="hi",
                       status=Status.ANSWERED.value)
    Message.create(conversation=conversation_for(CY), role=Role.USER.value, content="hi", status=Status.ANSWERED.value,
                   origin=Origin.PLAYGROUND.value)
    result = cli("campaigns", "create", "--name", "Recent", "--template", SID, "--variables", '{"1": "friend"}',
                 "--recent-days", "30")
    assert result.exit_code == 0, result.output
    assert recipients() == [(ANN, {"1": "friend"}), (BOB, {"1": "friend"})]


def test_send_at_a_time_reads_it_in_admin_timezone_and_refuses_one_past(cli, services, tmp_path):
    now = datetime(2026, 3, 1, 12, 0)
    assert when_from("2026-03-01T14:30", "Europe/Berlin", now) == datetime(2026, 3, 1, 13, 30)
    assert when_from("2026-03-01T14:30+00:00", "Europe/Berlin", now) == datetime(2026, 3, 1, 14, 30)
    with pytest.raises(CampaignProblem, match="2026-03-01 12:30 CET has passed"):
        when_from("2026-03-01T12:30", "Europe/Berlin", now)
    created = cli("campaigns", "create", "--name", "Timed", "--template", SID, "--to-file",
                  write(tmp_path, "+15550100001\n"))
    refused = cli("campaigns", "send", created.output.splitlines()[0], "--at", "2020-01-01T09:00")
    assert refused.exit_code == 1 and "2020-01-01 09:00 UTC has passed" in refused.output


def test_list_and_status_of_an_unknown_campaign(cli, services, tmp_path):
    assert "No campaigns yet" in cli("campaigns", "list").output
    cli("campaigns", "create", "--name", "Listed", "--template", SID, "--variables", json.dumps({"1": "x"}),
        "--to-file", write(tmp_path, "+15550100001\n"))
    listed = cli("campaigns", "list").output.splitlines()
    assert listed[0].split() == ["ID", "STATUS", "NAME", "CREATED", "RECIPIENTS", "SENT", "DELIVERED", "FAILED",
                                 "REPLIES"]
    assert re.match(r"^1 +draft +Listed +\d{4}-\d\d-\d\d \d\d:\d\d UTC +1 +0 +0 +0 +0$", listed[1])
    missing = cli("campaigns", "status", "99")
    assert missing.exit_code == 1 and "there is no campaign 99 (see: flask campaigns list)" in missing.output
