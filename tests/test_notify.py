"""Handoff notifications: one text to a chat webhook and by e-mail, over real loopback servers."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from rq.job import Job

from chatbot.handoff import claim, open_handoff, resolve
from chatbot.models import Conversation, Handoff, HandoffReason, Message, WhatsAppNumber, utcnow
from chatbot.notify import Notifier, NotifyError
from chatbot.outbound import OutboundGuard, guarded_session
from chatbot.services import build_services
from tests.fakes import FakeServer, Recorded, Scripted
from tests.smtp_server import SmtpServer, self_signed_certificate, server_tls
from tests.support import BurstWorker, free_port
from worker import build_worker

CUSTOMER = "whatsapp:+15550001234"
MASKED = "whatsapp:+1555•••1234"
SECRET_PATH = "/services/T000/B000/s3cretToken"
TEAM = ("ops@example.com", "boss@example.com")


class ChatWebhook(FakeServer):
    """An incoming webhook as Slack's: 200 "ok" unless scripted otherwise."""

    def default_answer(self, request: Recorded) -> Scripted:
        return Scripted(200, "ok")

    @property
    def texts(self) -> list[str]:
        return [request.body["text"] for request in self.requests]


@pytest.fixture
def chat():
    server = ChatWebhook().start()
    yield server
    server.stop()


@pytest.fixture
def mailbox():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def notifier(config, services):
    """Build a Notifier with some settings changed: notifier(notify_webhook_url=..., ...)."""
    session = guarded_session(OutboundGuard(allow_private=True))
    return lambda **settings: Notifier(config.replace(**settings), session, services.errors)


def waiting(text: str = "Please, I want to talk to a human", name: str = "Ada", number: str = "",
            summary: str = "Asked about a refund for order 42") -> Handoff:
    """A customer's message and the handoff it opened (no job queued)."""
    conversation = Conversation.get_by_id(Conversation.resume_or_start_id(CUSTOMER, name, number=number))
    question = Message.create(conversation=conversation, role="user", status="answered", content=text)
    return open_handoff(None, conversation, question, HandoffReason.CUSTOMER_REQUEST, "phrase", summary)


def reread(handoff: Handoff) -> Handoff:
    return Handoff.get_by_id(handoff.id)


# --- the chat webhook ----------------------------------------------------------------------------

def test_webhook_gets_one_text_with_masked_number_reason_last_message_and_link(notifier, chat):
    handoff = waiting()

    outcome = notifier(notify_webhook_url=chat.url + SECRET_PATH).announce(handoff.id)

    assert outcome == {"sent": ["webhook"], "failed": []}
    [request] = chat.requests
    assert request.method == "POST" and request.path == SECRET_PATH
    assert set(request.body) == {"text"}
    text = request.body["text"]
    assert f"Ada ({MASKED}) is waiting for a person" in text
    assert "15550001234" not in text and CUSTOMER not in text
    assert "Why: the customer asked for a person" in text
    assert "Summary: Asked about a refund for order 42" in text
    assert "Last message: Please, I want to talk to a human" in text
    conversation_id = handoff.conversation_id
    assert f"Open: https://bot.example.com/admin/conversation/details/?id={conversation_id}" in text
    stored = reread(handoff)
    assert stored.notified_at is not None and stored.notify_error == "" and stored.notify_attempts == 0


def test_the_link_leads_to_the_conversation_in_the_admin(notifier, chat, operator):
    handoff = waiting()
    notifier(notify_webhook_url=chat.url).announce(handoff.id)

    link = chat.texts[0].split("Open: https://bot.example.com", 1)[1].split()[0]
    page = operator.get(link)

    assert page.status_code == 200 and MASKED in page.get_data(as_text=True)


def test_last_message_is_shortened_and_the_numbers_in_it_masked(notifier, chat):
    long_text = "Call me on +447700900123 " + "please " * 100
    handoff = waiting(text=long_text)

    notifier(notify_webhook_url=chat.url).announce(handoff.id)

    last = chat.texts[0].split("Last message: ", 1)[1].split("\n")[0]
    assert last.startswith("Call me on +4477•••0123 please")
    assert "447700900123" not in chat.texts[0]
    assert last.endswith("…") and 280 <= len(last) <= 300


def test_only_the_newest_customer_message_is_quoted(notifier, chat):
    handoff = waiting(text="first question")
    Message.create(conversation=handoff.conversation_id, role="user", status="waiting", content="newest words")
    Message.create(conversation=handoff.conversation_id, role="assistant", status="sent", content="a bot answer")

    notifier(notify_webhook_url=chat.url).announce(handoff.id)

    assert "Last message: newest words" in chat.texts[0]
    assert "first question" not in chat.texts[0] and "a bot answer" not in chat.texts[0]


def test_a_customer_cannot_ping_the_whole_channel_through_their_name(notifier, chat):
    handoff = waiting(name="<!channel> Eve", text="hi <@U123> & co")

    notifier(notify_webhook_url=chat.url).announce(handoff.id)

    text = chat.texts[0]
    assert "<!channel>" not in text and "&lt;!channel&gt; Eve" in text
    assert "hi &lt;@U123&gt; &amp; co" in text


def test_no_link_without_a_public_base_url(notifier, chat):
    handoff = waiting()

    notifier(notify_webhook_url=chat.url, public_base_url="").announce(handoff.id)

    assert "Open:" not in chat.texts[0] and "/admin/" not in chat.texts[0]


def test_a_conversation_on_another_of_our_numbers_says_which(notifier, chat):
    WhatsAppNumber.create(address="whatsapp:+442071838750", label="Sales line")
    handoff = waiting(number="whatsapp:+442071838750")

    notifier(notify_webhook_url=chat.url).announce(handoff.id)

    assert "Wrote to: Sales line (whatsapp:+4420•••8750)" in chat.texts[0]


def test_the_default_number_is_not_named(notifier, chat):
    handoff = waiting()

    notifier(notify_webhook_url=chat.url).announce(handoff.id)

    assert "Wrote to" not in chat.texts[0]


# --- e-mail ----------------------------------------------------------------------------------------

def test_email_reaches_every_address_through_smtp_after_logging_in(notifier, mailbox):
    handoff = waiting()

    outcome = notifier(smtp_url=mailbox.url(), notify_emails=TEAM).announce(handoff.id)

    assert outcome == {"sent": ["email"], "failed": []}
    [mail] = mailbox.received
    assert mail.user == "notify"  # the URL's `p%40ss%20word` decoded to the server's `p@ss word`
    assert sorted(mail.recipients) == sorted(TEAM)
    assert mail.sender == "assistant@bot.example.com"
    assert mail.message["To"] == "ops@example.com, boss@example.com"
    assert mail.message["Subject"] == (f"Customer waiting for a person: {MASKED} "
                                       "(the customer asked for a person)")
    body = mail.body
    assert MASKED in body and "15550001234" not in mail.raw.decode(errors="replace")
    assert f"/admin/conversation/details/?id={handoff.conversation_id}" in body
    assert "Last message: Please, I want to talk to a human" in body
    assert reread(handoff).notified_at is not None


def test_email_without_credentials_does_not_log_in(notifier, mailbox):
    handoff = waiting()

    notifier(smtp_url=mailbox.url(credentials=None), notify_emails=TEAM[:1],
             notify_from="Help desk <desk@example.org>").announce(handoff.id)

    [mail] = mailbox.received
    assert mail.user is None and "AUTH" not in mailbox.commands
    assert mail.sender == "desk@example.org" and mail.recipients == ["ops@example.com"]


def test_email_is_plain_text_and_keeps_a_customers_markup_as_written(notifier, mailbox):
    handoff = waiting(text="a < b & c")

    notifier(smtp_url=mailbox.url(), notify_emails=TEAM).announce(handoff.id)

    [mail] = mailbox.received
    assert mail.message.get_content_type() == "text/plain"
    assert "Last message: a < b & c" in mail.body


@pytest.fixture
def trusted_certificate(tmp_path, monkeypatch):
    """A server-side TLS context whose self-signed certificate the client's default context trusts."""
    cert_path, key_path = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    return server_tls(cert_path, key_path)


def test_email_switches_to_tls_when_the_server_offers_starttls(notifier, trusted_certificate):
    server = SmtpServer(tls=trusted_certificate).start()
    try:
        waiting_one = waiting()
        notifier(smtp_url=server.url(), notify_emails=TEAM).announce(waiting_one.id)
    finally:
        server.stop()

    [mail] = server.received
    assert mail.encrypted and mail.user == "notify"
    assert server.commands.index("STARTTLS") < server.commands.index("AUTH")


def test_smtps_speaks_tls_from_the_first_byte(notifier, trusted_certificate):
    server = SmtpServer(tls=trusted_certificate, implicit_tls=True).start()
    try:
        handoff = waiting()
        notifier(smtp_url=server.url("smtps"), notify_emails=TEAM).announce(handoff.id)
    finally:
        server.stop()

    [mail] = server.received
    assert mail.encrypted and mail.user == "notify" and "STARTTLS" not in server.commands


def test_a_refused_login_is_recorded_without_the_password(notifier, caplog):
    server = SmtpServer(password="another", echo_credentials=True).start()
    try:
        handoff = waiting()
        with caplog.at_level(logging.INFO):
            outcome = notifier(smtp_url=server.url(), notify_emails=TEAM).announce(handoff.id)
    finally:
        server.stop()

    assert outcome == {"sent": [], "failed": ["email"]} and server.received == []
    error = reread(handoff).notify_error
    assert error.startswith("email: 127.0.0.1: 535 5.7.8 authentication failed for notify/[redacted]")
    assert "p@ss word" not in error and "p@ss word" not in caplog.text
    assert "ALERT notify:email" in caplog.text


# --- failures and retries ------------------------------------------------------------------------------

def test_a_failing_webhook_is_retried_while_the_email_is_sent_once(notifier, chat, mailbox, caplog):
    handoff = waiting()
    both = notifier(notify_webhook_url=chat.url + SECRET_PATH, smtp_url=mailbox.url(), notify_emails=TEAM)
    chat.then(Scripted(500, "internal error"))

    with caplog.at_level(logging.INFO), pytest.raises(NotifyError) as raised:
        both.announce(handoff.id, final_attempt=False)

    assert raised.value.channel == "webhook"
    stored = reread(handoff)
    assert stored.notify_error == "webhook: 127.0.0.1 answered HTTP 500: internal error"
    assert stored.notify_attempts == 1
    assert stored.notified_at is not None  # the e-mail told the team
    assert "ALERT notify:webhook" in caplog.text
    assert "s3cretToken" not in caplog.text and "s3cretToken" not in stored.notify_error
    assert len(mailbox.received) == 1 and len(chat.requests) == 1

    outcome = both.announce(handoff.id, final_attempt=False)  # RQ's retry

    assert outcome == {"sent": ["webhook"], "failed": []}
    assert len(mailbox.received) == 1 and len(chat.requests) == 2
    stored = reread(handoff)
    assert stored.notify_error == "" and stored.notify_attempts == 1


def test_on_the_final_attempt_a_failure_is_recorded_and_not_raised(notifier, chat, caplog):
    handoff = waiting()
    chat.then(Scripted(404, "no_service"))

    with caplog.at_level(logging.INFO):
        outcome = notifier(notify_webhook_url=chat.url + SECRET_PATH).announce(handoff.id, final_attempt=True)

    assert outcome == {"sent": [], "failed": ["webhook"]}
    stored = reread(handoff)
    assert stored.notify_error == "webhook: 127.0.0.1 answered HTTP 404: no_service"
    assert stored.notify_attempts == 1 and stored.notified_at is None
    assert "ALERT notify:webhook" in caplog.text and "given up" in caplog.text


def test_an_unreachable_webhook_is_a_failure_that_never_names_its_secret_path(notifier, caplog):
    handoff = waiting()
    unreachable = f"http://127.0.0.1:{free_port()}{SECRET_PATH}"

    with caplog.at_level(logging.INFO), pytest.raises(NotifyError):
        notifier(notify_webhook_url=unreachable).announce(handoff.id, final_attempt=False)

    error = reread(handoff).notify_error
    assert error == "webhook: 127.0.0.1 could not be reached (ConnectionError)"
    assert "s3cretToken" not in caplog.text


def test_a_webhook_echoing_its_own_url_has_the_secret_path_redacted(notifier, chat):
    handoff = waiting()
    chat.then(Scripted(400, f"bad request to {SECRET_PATH} from {CUSTOMER}"))

    notifier(notify_webhook_url=chat.url + SECRET_PATH).announce(handoff.id)

    error = reread(handoff).notify_error
    assert "s3cretToken" not in error and "15550001234" not in error
    assert error.startswith("webhook: 127.0.0.1 answered HTTP 400: bad request to")


def test_both_channels_failing_are_named_in_one_line(notifier, chat, caplog):
    handoff = waiting()
    chat.then(Scripted(503, "down"))
    smtp_down = f"smtp://127.0.0.1:{free_port()}"

    with caplog.at_level(logging.INFO), pytest.raises(NotifyError):
        notifier(notify_webhook_url=chat.url, smtp_url=smtp_down, notify_emails=TEAM).announce(
            handoff.id, final_attempt=False)

    stored = reread(handoff)
    assert stored.notify_error.startswith("webhook: 127.0.0.1 answered HTTP 503: down; email: 127.0.0.1: ")
    assert "\n" not in stored.notify_error and stored.notified_at is None
    assert "ALERT notify:webhook" in caplog.text and "ALERT notify:email" in caplog.text


# --- when nothing is sent --------------------------------------------------------------------------

def test_a_resolved_handoff_is_not_announced(notifier, chat):
    handoff = waiting()
    resolve(handoff.conversation_id, "ops")

    outcome = notifier(notify_webhook_url=chat.url).announce(handoff.id)

    assert outcome == {"sent": [], "skipped": "resolved"} and chat.requests == []


def test_a_handoff_gone_with_its_conversation_is_not_announced(notifier, chat):
    handoff = waiting()
    Conversation.delete().where(Conversation.id == handoff.conversation_id).execute()

    outcome = notifier(notify_webhook_url=chat.url).announce(handoff.id)

    assert outcome == {"sent": [], "skipped": "resolved"} and chat.requests == []


def test_a_reminder_says_how_long_nobody_has_claimed_it(notifier, chat):
    handoff = waiting()
    Handoff.update(opened_at=utcnow() - timedelta(minutes=35), reminded_at=utcnow()).where(
        Handoff.id == handoff.id).execute()

    notifier(notify_webhook_url=chat.url).announce(handoff.id, reminder=True)

    assert f"Reminder: Ada ({MASKED}) is still waiting for a person after 35 minutes, nobody has claimed it." \
        in chat.texts[0]


def test_a_reminder_is_sent_again_on_a_channel_told_of_the_announcement(notifier, chat):
    handoff = waiting()
    announcing = notifier(notify_webhook_url=chat.url)
    announcing.announce(handoff.id)
    Handoff.update(reminded_at=utcnow()).where(Handoff.id == handoff.id).execute()

    outcome = announcing.announce(handoff.id, reminder=True)

    assert outcome["sent"] == ["webhook"] and len(chat.requests) == 2


def test_a_reminder_for_a_handoff_claimed_meanwhile_is_not_sent(notifier, chat):
    handoff = waiting()
    assert claim(handoff.id, "ops")

    outcome = notifier(notify_webhook_url=chat.url).announce(handoff.id, reminder=True)

    assert outcome == {"sent": [], "skipped": "claimed"} and chat.requests == []


def test_without_a_channel_nothing_is_sent_and_it_is_said_once(notifier, caplog):
    first, second = waiting(), None
    unconfigured = notifier(notify_webhook_url="", smtp_url="", notify_emails=())

    with caplog.at_level(logging.INFO, logger="chatbot.notify"):
        assert unconfigured.announce(first.id) == {"sent": [], "skipped": "no channel"}
        resolve(first.conversation_id, "ops")
        second = waiting()
        assert unconfigured.announce(second.id) == {"sent": [], "skipped": "no channel"}

    assert caplog.text.count("handoff notifications off") == 1
    assert reread(second).notified_at is None and reread(second).notify_error == ""


def test_emails_without_an_smtp_url_are_no_channel(notifier, chat):
    handoff = waiting()

    outcome = notifier(smtp_url="", notify_emails=TEAM).announce(handoff.id)

    assert outcome == {"sent": [], "skipped": "no channel"}


# --- through the job -------------------------------------------------------------------------------

def test_the_job_announces_a_handoff_and_a_failure_waits_for_rq_to_retry(config, services, chat, mailbox):
    told = build_services(config.replace(notify_webhook_url=chat.url, smtp_url=mailbox.url(), notify_emails=TEAM))
    chat.then(Scripted(500, "internal error"))
    conversation = Conversation.get_by_id(Conversation.resume_or_start_id(CUSTOMER, "Ada"))
    question = Message.create(conversation=conversation, role="user", status="answered", content="a person please")
    handoff = open_handoff(told.queue, conversation, question, HandoffReason.CUSTOMER_REQUEST, "phrase")
    [job_id] = told.queue.job_ids

    build_worker(told, worker_class=BurstWorker).work(burst=True, with_scheduler=False)

    job = Job.fetch(job_id, connection=told.redis)
    assert job.retries_left == 4  # raised on a first attempt: RQ will try again
    stored = reread(handoff)
    assert stored.notify_error.startswith("webhook: ") and stored.notified_at is not None
    assert len(mailbox.received) == 1 and len(chat.requests) == 1
