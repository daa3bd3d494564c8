"""WhatsAppClient: split long replies and send them in order through the twilio SDK."""
from __future__ import annotations

import re
import time
from typing import Callable

import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from chatbot.errors import WhatsAppError
from chatbot.retries import with_retries
from chatbot.sanitizer import keeps_graphemes_whole

WHATSAPP_LIMIT = 1600
# Twilio error codes that no retry can fix: bad credentials, bad or non-WhatsApp recipient,
# the 24-hour session window closed, body too long, blocked or unsubscribed recipient.
PERMANENT_CODES = {20003, 20404, 21211, 21408, 21610, 21614, 21617, 63003, 63016, 63024, 63032}


def utf16_length(text: str) -> int:
    """Count UTF-16 code units, the way Twilio measures a body."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


_SENTENCE_END = re.compile(r"[.!?…。！？](?:[\"')\]»”’]*)\s+")


def _fitting_prefix(text: str, limit: int) -> int:
    """Return how many characters of `text` fit within `limit` UTF-16 units."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def _cut_point(text: str, limit: int) -> int:
    """Choose where the first part ends: paragraph, then line, sentence, word, then grapheme."""
    window_end = _fitting_prefix(text, limit)
    window = text[:window_end]
    floor = window_end // 3  # a cut too early wastes a message; prefer a later, weaker boundary
    for separator in ("\n\n", "\n"):
        position = window.rfind(separator)
        if position > floor:
            return position + len(separator)
    # Look one character past the window: a sentence may end exactly at its edge.
    sentence_ends = [min(m.end(), window_end) for m in _SENTENCE_END.finditer(text, 0, window_end + 1)]
    if sentence_ends and sentence_ends[-1] > floor:
        return sentence_ends[-1]
    if window_end < len(text) and text[window_end].isspace():
        return window_end
    spaces = [m.end() for m in re.finditer(r"\s+", window)]
    if spaces and spaces[-1] > 0:
        return spaces[-1]
    cut = window_end
    while cut > 1 and not keeps_graphemes_whole(text, cut):
        cut -= 1
    return max(cut, 1)  # always make progress, even when one character exceeds the limit


def split_message(text: str, limit: int = WHATSAPP_LIMIT) -> list[str]:
    """Split `text` into parts of at most `limit` UTF-16 units, at natural boundaries."""
    parts: list[str] = []
    remaining = text.strip()
    while utf16_length(remaining) > limit:
        cut = _cut_point(remaining, limit)
        part = remaining[:cut].strip()
        if part:
            parts.append(part)
        remaining = remaining[cut:].strip()
    if remaining:
        parts.append(remaining)
    return parts


class WhatsAppClient:
    """Sends WhatsApp messages through Twilio, retrying what is transient."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        api_base_url: str = "",
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        pool_size: int = 10,
    ):
        self.from_number = from_number
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep
        self._client = None
        if account_sid and auth_token:
            http_client = TwilioHttpClient(timeout=timeout)
            # One kept-alive connection per concurrent job, instead of reconnecting past the default ten.
            adapter = HTTPAdapter(pool_maxsize=pool_size)
            http_client.session.mount("https://", adapter)
            http_client.session.mount("http://", adapter)
            self._client = Client(account_sid, auth_token, http_client=http_client)
            if api_base_url:
                self._client.api.base_url = api_base_url

    def send(
        self,
        to: str,
        body: str,
        already_sent: int = 0,
        on_part_sent: Callable[[int, str], None] | None = None,
    ) -> list[str]:
        """Send `body` (split when long) in order, skipping the first `already_sent` parts."""
        sids = []
        for number, part in enumerate(split_message(body), start=1):
            if number <= already_sent:
                continue
            sid = self.send_part(to, part)
            sids.append(sid)
            if on_part_sent:
                on_part_sent(number, sid)
        return sids

    def send_part(self, to: str, body: str) -> str:
        """Send one message of at most 1600 characters; return Twilio's MessageSid."""
        if self._client is None or not self.from_number:
            raise WhatsAppError(
                "Twilio is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_WHATSAPP_NUMBER)",
                retryable=False,
            )

        def attempt() -> str:
            try:
                return self._client.messages.create(to=to, from_=self.from_number, body=body).sid
            except (TwilioException, requests.RequestException) as exc:
                raise _as_whatsapp_error(exc) from exc

        return with_retries(attempt, attempts=self.attempts, backoff=self.backoff, sleep=self.sleep,
                            label="twilio send")


    def account_status(self) -> str:
        """Fetch the Twilio account (checks the credentials, sends nothing); return its status."""
        if self._client is None:
            raise WhatsAppError("Twilio is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)",
                                retryable=False)
        try:
            return self._client.api.v2010.accounts(self._client.account_sid).fetch().status
        except (TwilioException, requests.RequestException) as exc:
            raise _as_whatsapp_error(exc) from exc


def _as_whatsapp_error(exc: Exception) -> WhatsAppError:
    if isinstance(exc, TwilioRestException):
        return WhatsAppError(str(exc.msg)[:300], retryable=_retryable(exc), status=exc.status, code=exc.code)
    if isinstance(exc, requests.RequestException):
        return WhatsAppError(f"could not reach Twilio: {exc.__class__.__name__}", retryable=True)
    return WhatsAppError(str(exc)[:300], retryable=False)


def _retryable(exc: TwilioRestException) -> bool:
    if exc.code in PERMANENT_CODES:
        return False
    return exc.status == 429 or exc.code == 20429 or (exc.status or 0) >= 500
