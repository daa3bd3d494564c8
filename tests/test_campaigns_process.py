"""Campaigns end to end: a CSV becomes exactly one template message per recipient at the fake Twilio,
paced; a worker SIGKILLed mid-campaign sends nobody twice; receipts and replies move the figures."""
from __future__ import annotations

import json
import re
from collections import Counter
from datetime import timedelta

import pytest
from rq import Retry

from chatbot.jobs import queueing, tasks
from chatbot.models import (
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    Conversation,
    Message,
    OptOut,
    Origin,
    RecipientStatus,
    utcnow,
)
from tests.conftest import jobs_done, wait_for
from tests.test_delivery_receipts import post_status

SID = "HX" + "c0ffee" * 5 + "00"
TEXT = "Hi {{1}}, our spring sale starts today: {{2}} off everything."
CUSTOMERS = [f"whatsapp:+1555010{number:04d}" for number in range(30)]


def contacts_file(tmp_path):
    """The file an operator exports: a header, 30 customers, an invalid line and a duplicate."""
    lines = ["phone,first_name"] + [f"{phone.removeprefix('whatsapp:')},Name{index}"
                                    for index, phone in enumerate(CUSTOMERS)]
    lines.insert(5, "call me maybe,Bob")  # line 6
    lines.append(f"{CUSTOMERS[3]},Again")  # line 33, a duplicate of line 5
    path = tmp_path / "contacts.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def create(cli, path, *options):
    result = cli("campaigns", "create", "--name", "Spring sale", "--template", SID, "--text", TEXT,
                 "--variables", json.dumps({"1": {"column": "first_name"}, "2": "20%"}), "--to-file", str(path),
                 *options)
    assert result.exit_code == 0, result.output
    return int(result.output.splitlines()[0]), result.output


def figure(output: str, name: str) -> int:
    return int(re.search(rf"^{name}\s+(\d+)$", output, re.M).group(1))


# The pacer takes at most CAMPAIGN_RATE turns in any 1.05 s (tests/test_campaigns.py pins that on its own);
# on a loaded test machine a request can reach the fake tens of milliseconds after its turn, so arrivals
# are counted in windows of 0.9 s. An unpaced campaign puts all 28 in well under that.
ARRIVAL_JITTER = 0.1


def most_in_one_second(moments: list[float]) -> int:
    """The most requests that arrived within any one second, less the arrival jitter allowed."""
    moments = sorted(moments)
    return max(sum(1 for later in moments[index:] if later - start < 1.0 - ARRIVAL_JITTER)
               for index, start in enumerate(moments))


@pytest.mark.postgres
def test_a_csv_campaign_reaches_each_customer_once_paced_and_receipts_and_replies_count(
        cli, client, services, run_jobs, tmp_path, fake_twilio, fake_openrouter, post_webhook):
    fake_twilio.templates[SID] = TEXT
    for stopped in CUSTOMERS[:2]:
        OptOut.stop(stopped, "")

    campaign_id, created = create(cli, contacts_file(tmp_path))

    assert f"Campaign {campaign_id} 'Spring sale'" in created and "a draft: nothing is sent yet" in created
    assert "Will send to 28 recipients (contacts.csv)" in created
    assert "Skipped 4 (1 invalid, 1 duplicate, 2 sent STOP):" in created
    assert "line 2: +1555•••0000 wrote STOP to this number" in created
    assert "line 6: not a phone number in E.164 form (+ and country code): 'call me maybe'" in created
    assert "line 33: +1555•••0003 again (first on line 5)" in created
    assert fake_twilio.requests == []

    sent = cli("campaigns", "send", str(campaign_id))
    assert sent.exit_code == 0 and f"Campaign {campaign_id} is sending." in sent.output
    run_jobs()

    sends = fake_twilio.content_sends
    assert Counter(send.body["To"] for send in sends) == Counter(CUSTOMERS[2:])
    assert {send.body["ContentSid"] for send in sends} == {SID}
    assert json.loads(next(s.body for s in sends if s.body["To"] == CUSTOMERS[7])["ContentVariables"]) == \
        {"1": "Name7", "2": "20%"}
    assert most_in_one_second([send.at for send in sends]) <= 10
    status = cli("campaigns", "status", str(campaign_id)).output
    assert "finished" in status.splitlines()[0]
    assert (figure(status, "queued"), figure(status, "sent"), figure(status, "failed")) == (0, 28, 0)
    assert "Left out when created: 1 invalid, 1 duplicate, 2 sent STOP" in status
    assert re.search(r"Template messages from Default number in \w+ \d{4}: 28", status)

    # Receipts move the figures.
    sids = {recipient.phone: recipient.twilio_sid for recipient in CampaignRecipient.select()}
    for phone, receipt, code in [(CUSTOMERS[2], "delivered", None), (CUSTOMERS[3], "delivered", None),
                                 (CUSTOMERS[3], "read", None), (CUSTOMERS[4], "undelivered", 63032)]:
        assert post_status(client, sids[phone], receipt, code).status_code == 200
    status = cli("campaigns", "status", str(campaign_id)).output
    assert [figure(status, name) for name in ("sent", "delivered", "read", "failed", "replies")] == [28, 2, 1, 1, 0]
    assert "+1555•••0004: Twilio error 63032" in status

    # A reply is read after the campaign's message and counts as the campaign's.
    post_webhook.message("Does it include shoes?", sender=CUSTOMERS[7])
    run_jobs()
    prompt = [(turn["role"], turn["content"]) for turn in fake_openrouter.completions[-1].body["messages"][1:]]
    assert prompt == [("assistant", "Hi Name7, our spring sale starts today: 20% off everything."),
                      ("user", "Does it include shoes?")]
    assert figure(cli("campaigns", "status", str(campaign_id)).output, "replies") == 1


def test_a_worker_killed_mid_campaign_sends_nobody_twice_and_skips_nobody(
        cli, services, workers, quick_recovery, tmp_path, fake_twilio, monkeypatch):
    monkeypatch.setattr(queueing, "CAMPAIGN_RETRY", Retry(max=3, interval=[1]))
    fake_twilio.templates[SID] = TEXT
    # Twilio takes each message and answers a while later: the kill finds sends taken but unanswered.
    fake_twilio.hold_answers = 0.4
    campaign_id, _ = create(cli, contacts_file(tmp_path))
    doomed = workers.start(**quick_recovery)
    assert cli("campaigns", "send", str(campaign_id)).exit_code == 0
    assert wait_for(lambda: len(fake_twilio.content_sends) >= 10, timeout=30)
    workers.kill(doomed)
    in_flight = CampaignRecipient.select().where(CampaignRecipient.sending_since.is_null(False)).count()

    workers.start(**quick_recovery)
    assert wait_for(lambda: Campaign.get_by_id(campaign_id).status == CampaignStatus.FINISHED.value, timeout=60)
    assert wait_for(lambda: jobs_done(services.redis))

    assert Counter(send.body["To"] for send in fake_twilio.content_sends) == Counter(CUSTOMERS)
    assert in_flight and fake_twilio.lookups, "the kill found no send under way: nothing was looked up"
    assert CampaignRecipient.select().where(CampaignRecipient.status == RecipientStatus.SENT.value).count() == 30
    assert Message.select().where(Message.origin == Origin.CAMPAIGN.value).count() == 30


def test_a_scheduled_campaign_starts_with_the_sweep_once_its_time_has_come(cli, services, run_jobs, tmp_path,
                                                                          fake_twilio):
    few = tmp_path / "few.csv"
    few.write_text("phone,first_name\n" + "".join(f"{phone.removeprefix('whatsapp:')},Name{index}\n"
                                                  for index, phone in enumerate(CUSTOMERS[:3])))
    campaign_id, _ = create(cli, few)
    at = (utcnow() + timedelta(days=2)).replace(tzinfo=None)
    scheduled = cli("campaigns", "send", str(campaign_id), "--at", at.strftime("%Y-%m-%dT%H:%M"))
    assert scheduled.exit_code == 0 and "will start sending at" in scheduled.output

    tasks.sweep_pending_messages()
    run_jobs()
    assert fake_twilio.requests == [] and Campaign.get_by_id(campaign_id).status == "scheduled"

    Campaign.update(send_at=utcnow() - timedelta(seconds=1)).where(Campaign.id == campaign_id).execute()
    tasks.sweep_pending_messages()
    run_jobs()
    assert sorted(send.body["To"] for send in fake_twilio.content_sends) == CUSTOMERS[:3]
    assert Campaign.get_by_id(campaign_id).status == "finished"
    assert Conversation.select().where(Conversation.user_phone.in_(CUSTOMERS[:3])).count() == 3
