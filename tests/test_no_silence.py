"""Every failure answers the user once; no message loops forever; no reply part goes out twice."""
from __future__ import annotations

import logging
from datetime import UTC, timedelta
from email.utils import format_datetime

import pytest
from peewee import OperationalError
from rq import Retry

from chatbot import processor as processor_module
from chatbot.errors import USER_MESSAGES, Category
from chatbot.jobs import queueing, tasks
from chatbot.models import Message, Role, Status, utcnow
from chatbot.whatsapp import WhatsAppClient
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, jobs_done, log_in, wait_for

ADA = "whatsapp:+15550001111"
SORRY = USER_MESSAGES[Category.SYSTEM]


def question() -> Message:
    return Message.get(Message.role == Role.USER.value)


@pytest.mark.postgres
def test_a_database_error_on_the_final_attempt_gets_the_system_message_once_and_one_alert(
        post_webhook, services, run_jobs, fake_twilio, monkeypatch, caplog):
    monkeypatch.setattr(queueing, "JOB_RETRY", None)  # the first failure is the last

    def disk_full(*args, **kwargs):
        raise OperationalError("database or disk is full")

    monkeypatch.setattr(services.processor, "_answer", disk_full)
    post_webhook.message("Hello", sender=ADA)
    with caplog.at_level(logging.ERROR):
        run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == [SORRY]
    assert question().status == Status.FAILED.value and "OperationalError" in question().error
    assert caplog.text.count("ALERT system:GaveUp") == 1
    # The sweeper finds nothing left to do: the apology is stored and sent like any reply.
    monkeypatch.setattr(tasks, "PENDING_GRACE", timedelta(0))
    assert tasks.sweep_pending_messages() == 0
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == [SORRY]
    apology = question().current_answer()
    assert apology.content == SORRY and apology.status == Status.SENT.value


@pytest.mark.postgres
def test_a_poison_message_stops_after_the_attempt_cap_with_one_apology(
        post_webhook, services, run_jobs, fake_openrouter, fake_twilio, monkeypatch, caplog, client, admin_user):
    # Every run asks the model, then chokes on the answer; RQ would retry it ten times at once.
    monkeypatch.setattr(queueing, "JOB_RETRY", Retry(max=10))
    services.config = services.config.replace(max_processing_attempts=3)

    def choke(text, *args, **kwargs):
        raise ValueError("cannot clean this answer")

    monkeypatch.setattr(processor_module, "clean_text", choke)
    post_webhook.message("Hello", sender=ADA)
    with caplog.at_level(logging.ERROR):
        run_jobs()
    assert len(fake_openrouter.completions) == 3  # not 11
    assert [sent["Body"] for sent in fake_twilio.sent] == [SORRY]
    assert question().status == Status.FAILED.value
    assert question().error == "gave up after 3 attempts" and question().attempts == 4
    assert caplog.text.count("ALERT system:GaveUp") == 1
    operator = client
    assert log_in(operator).status_code == 302
    failed = operator.get("/admin/message/?flt0_status_equals=failed").get_data(as_text=True)
    assert "Hello" in failed
    details = operator.get(f"/admin/message/details/?id={question().id}").get_data(as_text=True)
    assert "gave up after 3 attempts" in details
    # The operator fixes the cause and revives it: a fresh count, a real answer.
    monkeypatch.undo()
    revived = Message.failed_since(utcnow() - timedelta(hours=1))
    assert [m.id for m in revived] == [question().id]
    queueing.answer_again(services.queue, revived)
    assert question().attempts == 0
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == [SORRY, "Answer to: Hello"]


def test_a_worker_killed_after_twilio_took_the_part_does_not_send_it_again(post_webhook, services, workers,
                                                                          quick_recovery, fake_openrouter, fake_twilio):
    fake_twilio.hold_answers = 30.0  # Twilio takes the message, then the worker waits for its answer
    doomed = workers.start(**quick_recovery)
    post_webhook.message("Hello", sender=ADA)
    assert wait_for(lambda: fake_twilio.accepted, timeout=20)
    answer = Message.get(Message.role == Role.ASSISTANT.value)
    assert answer.sending_part == 1 and answer.parts_sent == 0  # the intent, no result yet
    workers.kill(doomed)
    fake_twilio.hold_answers = 0.0
    workers.start(**quick_recovery)
    assert wait_for(lambda: Message.get(Message.role == Role.ASSISTANT.value).status == Status.SENT.value,
                    timeout=60)
    assert wait_for(lambda: jobs_done(services.redis))
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Answer to: Hello"]  # one message, not two
    assert fake_twilio.lookups and fake_twilio.lookups[0]["To"] == [ADA]
    answer = Message.get(Message.role == Role.ASSISTANT.value)
    assert answer.parts_sent == 1 and answer.sending_part is None
    assert len(fake_openrouter.completions) == 1


def test_a_send_that_timed_out_is_looked_up_before_it_is_retried(fake_twilio):
    client = WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=fake_twilio.url, timeout=0.5,
                            backoff=0.01)
    fake_twilio.hold_answers = 2.0  # taken, but the answer comes after the client gave up waiting
    sid = client.send_part(ADA, "Only once, please")
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Only once, please"]
    assert sid == fake_twilio.accepted[0]["sid"]
    assert len(fake_twilio.lookups) == 1


def test_a_refused_send_is_retried_without_a_lookup(fake_twilio):
    from tests.fakes import FakeTwilio

    client = WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=fake_twilio.url, backoff=0.01)
    fake_twilio.then(FakeTwilio.error(503, 20500, "Service unavailable"))
    client.send_part(ADA, "Hi")
    assert len(fake_twilio.sent) == 2 and fake_twilio.lookups == []


def test_an_earlier_message_with_the_same_text_is_not_taken_for_this_one(fake_twilio):
    client = WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=fake_twilio.url, backoff=0.01)
    client.send_part(ADA, "Yes")
    hours_ago = utcnow().replace(tzinfo=UTC) - timedelta(hours=5)
    fake_twilio.accepted[0]["date_created"] = format_datetime(hours_ago, usegmt=True)
    assert client.find_sent(ADA, "Yes", since=utcnow()) is None
    assert client.find_sent(ADA, "Yes", since=utcnow() - timedelta(days=2)) == fake_twilio.accepted[0]["sid"]


def test_a_lookup_that_twilio_fails_is_retried_not_taken_as_final(fake_twilio):
    from tests.fakes import FakeTwilio

    client = WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=fake_twilio.url, backoff=0.01)
    fake_twilio.lookup_answers.append(FakeTwilio.error(503, 20500, "Service unavailable"))
    sid = client.send_part(ADA, "Hi", unconfirmed_since=utcnow())
    assert len(fake_twilio.lookups) == 2  # the failed lookup, then one that found nothing
    assert [sent["Body"] for sent in fake_twilio.sent] == ["Hi"] and sid == fake_twilio.accepted[0]["sid"]
