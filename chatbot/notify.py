"""Telling the team a customer waits for a person: a chat webhook and e-mail.

announce() composes one text and sends it on each configured channel: NOTIFY_WEBHOOK_URL gets
`{"text": ...}` (what Slack's and Teams' incoming webhooks both take), NOTIFY_EMAILS get it as a
plain-text e-mail through SMTP_URL. The channels are independent: one that fails does not stop the
other. A failure is recorded on the handoff, alerted to the operator, and raised so that RQ tries the
job again; a channel that worked is remembered in Redis for the occasion (the announcement, or the
reminder of one `reminded_at`), so a retry does not tell the team twice there. The record lives in
the same Redis as the retry it serves, for longer than the retries last.
"""
from __future__ import annotations

import html
import logging
import re
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import requests
from redis.exceptions import RedisError

from chatbot.models import Conversation, Handoff, Message, Role, WhatsAppNumber, utcnow
from chatbot.outbound import AddressRefused
from chatbot.redact import REDACTED, mask_phone, mask_phones_in
from chatbot.sanitizer import grapheme_cut

log = logging.getLogger(__name__)

WEBHOOK = "webhook"
EMAIL = "email"
SEND_TIMEOUT = 10
LAST_MESSAGE_CHARS = 300
ERROR_CHARS = 300
# A webhook URL's path or query piece this long may be its token (Slack's is 24 characters, Teams' a GUID).
SECRET_PIECE_CHARS = 8
# The job is retried 30 s to 30 min apart, about an hour in all (queueing.NOTIFY_RETRY); a channel
# that worked is remembered well past that.
SENT_RECORD_TTL = 3 * 3600
DEFAULT_FROM = "whatsapp-assistant@localhost"
SMTP_PORT = 587
SMTPS_PORT = 465


class NotifyError(Exception):
    """A channel could not tell the team; raised from announce() so that the job is tried again."""

    def __init__(self, channel: str, detail: str):
        super().__init__(f"{channel}: {detail}")
        self.channel = channel


@dataclass(frozen=True)
class Notice:
    subject: str
    text: str


class Notifier:
    """Announces handoffs on every configured channel; see announce()."""

    def __init__(self, config, session: requests.Session, errors, redis=None):
        self.config = config
        self.session = session
        self.errors = errors
        # Where the channels that worked are remembered; the ErrorHandler's Redis unless told otherwise.
        self.redis = redis if redis is not None else errors.redis
        self._said_no_channel = False

    def channels(self) -> list[str]:
        """Name the channels the settings configure, in the order they are tried."""
        configured = []
        if self.config.notify_webhook_url:
            configured.append(WEBHOOK)
        if self.config.smtp_url and self.config.notify_emails:
            configured.append(EMAIL)
        return configured

    def announce(self, handoff_id: int, reminder: bool = False, final_attempt: bool = True) -> dict:
        """Tell the team of a handoff (or remind them of one nobody claimed) on every channel not told yet.

        Args:
            handoff_id: the Handoff to announce.
            reminder: say it is still waiting, and say nothing if someone claimed it meanwhile.
            final_attempt: record a failure and return; otherwise a failure raises NotifyError.

        Returns:
            {"sent": channels told now, "failed": channels that failed} or {"sent": [], "skipped": why}.
        """
        handoff = (Handoff.select(Handoff, Conversation)
                   .join(Conversation)
                   .where(Handoff.id == handoff_id)
                   .first())
        if handoff is None or handoff.resolved_at is not None:
            return {"sent": [], "skipped": "resolved"}
        if reminder and handoff.claimed_at is not None:
            return {"sent": [], "skipped": "claimed"}
        channels = self.channels()
        if not channels:
            if not self._said_no_channel:
                log.info("handoff notifications off: neither NOTIFY_WEBHOOK_URL nor SMTP_URL with NOTIFY_EMAILS "
                         "is set (the admin's inbox still lists every handoff)")
                self._said_no_channel = True
            return {"sent": [], "skipped": "no channel"}

        occasion = f"remind:{(handoff.reminded_at or handoff.opened_at).isoformat()}" if reminder else "announce"
        told = self._told_already(handoff.id, occasion)
        notice = compose(handoff, reminder, self.config)
        sent, failures = [], []
        for channel in channels:
            if channel in told:
                continue
            try:
                self._send(channel, notice)
            except NotifyError as error:
                failures.append(error)
                continue
            sent.append(channel)
            self._remember_told(handoff.id, occasion, channel)
        self._record(handoff, sent, failures, final_attempt)
        if failures and not final_attempt:
            raise failures[0] if len(failures) == 1 else NotifyError(
                "+".join(error.channel for error in failures), "; ".join(str(error) for error in failures))
        return {"sent": sent, "failed": [error.channel for error in failures]}

    def _send(self, channel: str, notice: Notice) -> None:
        if channel == WEBHOOK:
            self._post_webhook(notice.text)
        else:
            self._send_email(notice)

    def _post_webhook(self, text: str) -> None:
        url = self.config.notify_webhook_url
        host = urlsplit(url).hostname or "?"
        try:
            response = self.session.post(url, json={"text": chat_escaped(text)}, timeout=SEND_TIMEOUT)
        except requests.Timeout as error:
            raise NotifyError(WEBHOOK, f"{host} did not answer within {SEND_TIMEOUT} s") from error
        except requests.RequestException as error:
            # Not str(error): requests names the whole URL, whose path is the webhook's secret.
            raise NotifyError(WEBHOOK, f"{host} could not be reached ({error.__class__.__name__})") from error
        except AddressRefused as error:
            raise NotifyError(WEBHOOK, str(error)) from error
        if not 200 <= response.status_code < 300:
            said = redacted(response.text[:200], *url_secrets(url))
            raise NotifyError(WEBHOOK, f"{host} answered HTTP {response.status_code}" + (f": {said}" if said else ""))

    def _send_email(self, notice: Notice) -> None:
        url = urlsplit(self.config.smtp_url)
        password = unquote(url.password or "")
        try:
            secure = url.scheme == "smtps"
            port = url.port or (SMTPS_PORT if secure else SMTP_PORT)
            context = ssl.create_default_context()
            if secure:
                client = smtplib.SMTP_SSL(url.hostname, port, timeout=SEND_TIMEOUT, context=context)
            else:
                client = smtplib.SMTP(url.hostname, port, timeout=SEND_TIMEOUT)
            with client:
                client.ehlo()
                if not secure and client.has_extn("starttls"):
                    client.starttls(context=context)
                    client.ehlo()
                if url.username:
                    client.login(unquote(url.username), password)
                refused = client.send_message(self._email(notice))
        except (OSError, ValueError) as error:  # smtplib's errors are OSErrors; ValueError: a bad port
            detail = redacted(smtp_failure(error), password, url.password)
            raise NotifyError(EMAIL, f"{url.hostname}: {detail}") from error
        if refused:
            log.warning("handoff e-mail refused for %s", ", ".join(sorted(refused)))

    def _email(self, notice: Notice) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = notice.subject
        message["From"] = self.sender()
        message["To"] = ", ".join(self.config.notify_emails)
        message.set_content(notice.text)
        return message

    def sender(self) -> str:
        """The e-mail's From: NOTIFY_FROM, else an address at PUBLIC_BASE_URL's host."""
        if self.config.notify_from:
            return self.config.notify_from
        host = urlsplit(self.config.public_base_url).hostname
        return f"assistant@{host}" if host else DEFAULT_FROM

    def _told_already(self, handoff_id: int, occasion: str) -> set[str]:
        try:
            return {channel.decode() for channel in self.redis.smembers(_told_key(handoff_id, occasion))}
        except RedisError as error:
            # Better told twice than not at all.
            log.warning("handoff=%s channels already told unknown: %s", handoff_id, error.__class__.__name__)
            return set()

    def _remember_told(self, handoff_id: int, occasion: str, channel: str) -> None:
        key = _told_key(handoff_id, occasion)
        try:
            self.redis.pipeline().sadd(key, channel).expire(key, SENT_RECORD_TTL).execute()
        except RedisError as error:
            log.warning("handoff=%s channel=%s told but not remembered: %s", handoff_id, channel,
                        error.__class__.__name__)

    def _record(self, handoff: Handoff, sent: list[str], failures: list[NotifyError], final_attempt: bool) -> None:
        changes = {Handoff.notify_error: "; ".join(str(error) for error in failures)}
        if sent and handoff.notified_at is None:
            changes[Handoff.notified_at] = utcnow()
        if failures:
            changes[Handoff.notify_attempts] = Handoff.notify_attempts + 1
        Handoff.update(changes).where(Handoff.id == handoff.id).execute()
        if sent:
            log.info("handoff=%s announced channels=%s", handoff.id, ",".join(sent))
        outcome = "given up" if final_attempt else "to be retried"
        for error in failures:
            log.warning("handoff=%s channel=%s failed (%s): %s", handoff.id, error.channel, outcome, error)
            self.errors.send_admin_alert(f"notify:{error.channel}",
                                         f"the team could not be told of handoff {handoff.id} ({outcome}): {error}")


def compose(handoff: Handoff, reminder: bool, config, now: datetime | None = None) -> Notice:
    """Write the notice of `handoff` (its conversation loaded): who waits, where, why, since when, and
    a link to the conversation; every phone number masked."""
    conversation = handoff.conversation
    phone = mask_phone(conversation.user_phone)
    name = " ".join(mask_phones_in(conversation.profile_name).split())
    who = f"{name} ({phone})" if name else phone
    waited = _minutes(((now or utcnow()) - handoff.opened_at).total_seconds() // 60)
    if reminder:
        lines = [f"Reminder: {who} is still waiting for a person after {waited}, nobody has claimed it."]
    else:
        opened = handoff.opened_at.replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(config.admin_timezone))
        lines = [f"{who} is waiting for a person, since {opened:%H:%M} {config.admin_timezone} ({waited} ago)."]
    if conversation.number:
        lines.append(f"Wrote to: {_our_number(conversation.number)}")
    lines.append(f"Why: {handoff.reason_words}")
    if handoff.summary.strip():
        lines.append(f"Summary: {mask_phones_in(handoff.summary.strip())}")
    last = last_customer_message(conversation.id)
    if last:
        lines.append(f"Last message: {last}")
    if handoff.claimed_by:
        lines.append(f"Claimed by {handoff.claimed_by}.")
    if config.public_base_url:
        lines.append(f"Open: {config.public_base_url}/admin/conversation/details/?id={conversation.id}")
    title = "Still waiting for a person" if reminder else "Customer waiting for a person"
    return Notice(subject=f"{title}: {phone} ({handoff.reason_words})", text="\n".join(lines))


def last_customer_message(conversation_id) -> str:
    """The customer's newest message on one line, numbers masked, cut to about LAST_MESSAGE_CHARS."""
    content = (Message.select(Message.content)
               .where(Message.conversation == conversation_id, Message.role == Role.USER.value)
               .order_by(Message.id.desc())
               .scalar())
    line = " ".join(mask_phones_in(content or "").split())
    if len(line) <= LAST_MESSAGE_CHARS:
        return line
    return line[:grapheme_cut(line, LAST_MESSAGE_CHARS - 1)] + "…"


def chat_escaped(text: str) -> str:
    """`text` with &, < and > escaped, as Slack asks: a customer's `<!channel>` must not ping everyone."""
    return html.escape(text, quote=False)


def redacted(text: str, *secrets: str | None) -> str:
    """`text` on one line, short, with `secrets` and phone numbers masked."""
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    line = " ".join(mask_phones_in(text).split())
    return line[:ERROR_CHARS]


def url_secrets(url: str) -> list[str]:
    """The parts of a webhook URL that may be its secret: the path and query, and each longer piece of
    them, so that an answer quoting a piece of the URL is redacted too."""
    parts = urlsplit(url)
    pieces = [parts.path, parts.query, *re.split(r"[/?&=]", f"{parts.path}?{parts.query}")]
    return [piece for piece in pieces if len(piece) >= SECRET_PIECE_CHARS]


def smtp_failure(error: Exception) -> str:
    """Say what went wrong in an SMTP exchange: the server's code and words when it answered."""
    if isinstance(error, smtplib.SMTPResponseException):
        words = error.smtp_error.decode(errors="replace") if isinstance(error.smtp_error, bytes) else error.smtp_error
        return f"{error.smtp_code} {words}"
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return f"every recipient refused ({', '.join(sorted(error.recipients))})"
    return f"{error.__class__.__name__}: {error}"


def _our_number(address: str) -> str:
    number = WhatsAppNumber.get_or_none(WhatsAppNumber.address == address)
    return f"{number.label} ({mask_phone(address)})" if number else mask_phone(address)


def _minutes(count: float) -> str:
    return "less than a minute" if count < 1 else "1 minute" if count == 1 else f"{int(count)} minutes"


def _told_key(handoff_id: int, occasion: str) -> str:
    return f"chatbot:handoff-notice:{handoff_id}:{occasion}"
