"""WhatsAppClient: split long replies and send them in order through the twilio SDK."""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import requests
from requests.adapters import HTTPAdapter
from twilio.base import values
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from chatbot.errors import WhatsAppError
from chatbot.retries import with_retries
from chatbot.sanitizer import grapheme_cut

log = logging.getLogger(__name__)

WHATSAPP_LIMIT = 1600
# Twilio's clock and ours may differ: a message it took up to this long before our "since" counts.
CLOCK_SKEW = timedelta(seconds=60)
# How many of the newest messages to a user are searched for one that may have been sent already.
RECENT_MESSAGES = 20
# Twilio error codes that no retry can fix: bad credentials, bad or non-WhatsApp recipient,
# the 24-hour session window closed, body too long, blocked or unsubscribed recipient.
PERMANENT_CODES = {20003, 20404, 21211, 21408, 21610, 21614, 21617, 63003, 63016, 63024, 63032}
# Twilio's refusal of a free-form message once the user's last one is more than 24 hours old.
WINDOW_CLOSED_CODE = 63016
# WhatsApp caps a template's body at 1,024 characters, its own words included, and Twilio caps a
# variable at its field's maximum: this leaves the template 124 characters of its own.
TEMPLATE_VARIABLE_LIMIT = 900
TEMPLATE_CUT_NOTE = "…"
# What WhatsApp refuses in a template variable (Twilio error 21656): a newline, a tab, or more than
# four spaces in a row. Each such run of whitespace becomes one space.
_VARIABLE_BREAKS = re.compile(r"\s*[^\S ]\s*| {5,}")
# Where on this service Twilio reports how far each sent part got (its StatusCallback).
STATUS_CALLBACK_PATH = "/whatsapp/status"
# The typing indicator is a courtesy: it waits this long at most, and the answer never waits for it.
TYPING_TIMEOUT = 2.0


def utf16_length(text: str) -> int:
    """Count UTF-16 code units, the way Twilio measures a body."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


_SENTENCE_END = re.compile(r"[.!?…。！？](?:[\"')\]»”’]*)\s+")
_SPACES = re.compile(r"\s*")
_SPACE = re.compile(r"\s")
_NEWLINES = re.compile(r"\n*")
SHORTENED_NOTE = "… (answer shortened)"
# A code block cut in two is closed at the end of one part and reopened at the start of the next,
# so each part shows its half in monospace.
_FENCE_LINE = re.compile(r"^[ \t]*```[^`\n]*$", re.MULTILINE)
FENCE_CLOSE = "\n```"
FENCE_REOPEN = "```\n"


def _fitting_prefix(text: str, limit: int) -> int:
    """Return how many characters of `text` fit within `limit` UTF-16 units."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def _word_fits(text: str, start: int, limit: int) -> bool:
    """True when the word beginning at `start` fits in one part."""
    space = _SPACE.search(text, start)
    return utf16_length(text[start:space.start() if space else len(text)]) <= limit


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
    # A word too long for any part is cut wherever it starts: stopping before it only adds a stub part.
    if spaces and spaces[-1] > 0 and _word_fits(text, spaces[-1], limit):
        return spaces[-1]
    # A grapheme longer than the limit is cut too: always make progress.
    return grapheme_cut(text, window_end) or max(window_end, 1)


def _ends_in_code(part: str, starts_in_code: bool) -> bool:
    """True when `part` ends inside a fenced code block."""
    return starts_in_code != (len(_FENCE_LINE.findall(part)) % 2 == 1)


def _code_aware_cut(text: str, limit: int, in_code: bool) -> tuple[int, bool]:
    """Choose where the first part ends, rather before a code block than inside it; return the cut
    and whether the part ends inside code (and so needs FENCE_CLOSE, which `limit` leaves room for)."""
    cut = _cut_point(text, limit)
    if not _ends_in_code(text[:cut], in_code):
        return cut, False
    fences = [match.start() for match in _FENCE_LINE.finditer(text, 0, cut)]
    # The part ends inside code, so its last fence (if any) opens a block: cut before it, unless
    # that leaves the part too short (the floor _cut_point uses too).
    if fences and fences[-1] > cut // 3:
        return fences[-1], False
    cut = _cut_point(text, limit - utf16_length(FENCE_CLOSE))
    return cut, _ends_in_code(text[:cut], in_code)


def template_variable(text: str, limit: int = TEMPLATE_VARIABLE_LIMIT) -> str:
    """Make `text` acceptable as a WhatsApp template variable: one line, no run of more than four
    spaces, at most `limit` UTF-16 units (cut where a part would be cut, marked with "…")."""
    flat = _VARIABLE_BREAKS.sub(" ", text).strip()
    if utf16_length(flat) <= limit:
        return flat
    return flat[:_cut_point(flat, limit - utf16_length(TEMPLATE_CUT_NOTE))].rstrip() + TEMPLATE_CUT_NOTE


def content_lookup(variables: dict[str, str], text: str = "") -> tuple[str, ...]:
    """What Twilio's copy of a template message sent with `variables` must hold to be found by
    find_sent: each variable's value (as sent), or with none the template's `text`; () matches any."""
    return tuple(template_variable(value) for value in variables.values()) or ((text,) if text else ())


def split_message(text: str, limit: int = WHATSAPP_LIMIT, max_parts: int | None = None) -> list[str]:
    """Split `text` into parts of at most `limit` UTF-16 units, at natural boundaries and never
    leaving a code fence open; beyond `max_parts` parts the text is shortened and the last part
    ends with SHORTENED_NOTE."""
    note_room = limit - utf16_length(" " + SHORTENED_NOTE)
    if max_parts is not None and (max_parts < 1 or note_room - utf16_length(FENCE_REOPEN + FENCE_CLOSE) < 1):
        raise ValueError(f"cannot shorten to {max_parts} parts of {limit} units with a note")
    text = text.strip()
    parts: list[str] = []
    start = 0
    in_code = False
    while start < len(text):
        reopen = FENCE_REOPEN if in_code else ""
        room = limit - utf16_length(reopen)
        # Each cut is chosen within two parts' worth of text, so a part costs the same however long the text.
        ahead = text[start:start + 2 * limit + 2]
        if _fitting_prefix(ahead, room) == len(text) - start:
            parts.append(reopen + ahead)
            break
        if len(parts) + 1 == max_parts:
            cut, open_code = _code_aware_cut(ahead, note_room - utf16_length(reopen), in_code)
            close = FENCE_CLOSE + "\n" if open_code else " "
            parts.append(f"{reopen}{ahead[:cut].rstrip()}{close}{SHORTENED_NOTE}")
            break
        cut, open_code = _code_aware_cut(ahead, room, in_code)
        parts.append(reopen + ahead[:cut].rstrip() + (FENCE_CLOSE if open_code else ""))
        in_code = open_code
        # Inside code, the next line's indentation is part of the code.
        start = (_NEWLINES if in_code else _SPACES).match(text, start + cut).end()
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
        max_parts: int | None = None,
        status_callback: str = "",
        typing_timeout: float = TYPING_TIMEOUT,
    ):
        self.from_number = from_number
        # Where Twilio reports each part's delivery; empty (no public URL, e.g. `flask chat`): no reports.
        self.status_callback = status_callback
        self.max_parts = max_parts  # None: every part of a reply is sent
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep
        self._client = None
        self._typing_client = None
        if account_sid and auth_token:
            http_client = TwilioHttpClient(timeout=timeout)
            # One kept-alive connection per concurrent job, instead of reconnecting past the default ten.
            adapter = HTTPAdapter(pool_maxsize=pool_size)
            http_client.session.mount("https://", adapter)
            http_client.session.mount("http://", adapter)
            self._client = Client(account_sid, auth_token, http_client=http_client)
            # The typing indicator's own client: the same connections, a much shorter timeout.
            typing_http_client = TwilioHttpClient(timeout=typing_timeout)
            typing_http_client.session = http_client.session
            self._typing_client = Client(account_sid, auth_token, http_client=typing_http_client)
            if api_base_url:
                self._client.api.base_url = api_base_url
                self._typing_client.messaging.base_url = api_base_url

    def send(
        self,
        to: str,
        body: str,
        already_sent: int = 0,
        on_part_sent: Callable[[int, str], None] | None = None,
        before_part: Callable[[int], None] | None = None,
        unconfirmed_since: datetime | None = None,
        from_number: str = "",
    ) -> list[str]:
        """Send `body` (split when long) in order, skipping the first `already_sent` parts, from
        `from_number` (the number the user wrote to; empty: the default number).

        `before_part(n)` runs before part n goes to Twilio, `on_part_sent(n, sid)` once Twilio took
        it. `unconfirmed_since`: an earlier run handed the next part to Twilio at that time and never
        learned the result; Twilio is asked whether it took it before it is sent again.
        """
        sids = []
        for number, part in enumerate(split_message(body, max_parts=self.max_parts), start=1):
            if number <= already_sent:
                continue
            if before_part:
                before_part(number)
            sid = self.send_part(to, part, unconfirmed_since if number == already_sent + 1 else None, from_number)
            sids.append(sid)
            if on_part_sent:
                on_part_sent(number, sid)
        return sids

    def send_part(self, to: str, body: str, unconfirmed_since: datetime | None = None, from_number: str = "") -> str:
        """Send one message of at most 1600 characters exactly once; return Twilio's MessageSid.

        When an attempt ends without Twilio's answer (a timeout, a dropped connection), Twilio may
        have taken the message: the next attempt first looks for it among the messages sent to `to`.
        """
        return self._create_once(to, body, unconfirmed_since, from_number, body=body)

    def send_template(self, to: str, template_sid: str, text: str, unconfirmed_since: datetime | None = None,
                      from_number: str = "", fills_variable: bool = True) -> str:
        """Send `text` as the one variable ({{1}}) of the approved template `template_sid`, the only kind
        of message WhatsApp takes past the 24-hour window, exactly once as send_part does; return
        Twilio's MessageSid. The text is made fit for a variable first (see template_variable).
        Without `fills_variable` the template is sent as approved (quick-reply buttons), `text` only
        naming it in the look-up that keeps it from going twice."""
        variable = template_variable(text)
        variables = {"content_variables": json.dumps({"1": variable}, ensure_ascii=False)} if fills_variable else {}
        return self._create_once(to, variable, unconfirmed_since, from_number, in_template=True,
                                 content_sid=template_sid, **variables)

    def send_content(self, to: str, content_sid: str, variables: dict[str, str], text: str = "",
                     unconfirmed_since: datetime | None = None, from_number: str = "") -> str:
        """Send the approved template `content_sid` with its variables ({"1": "Ada", ...}, each made fit
        for a variable first) exactly once, as send_part does; return Twilio's MessageSid.

        After an attempt without an answer the look-up finds Twilio's copy by what it must hold: every
        variable's value, or with no variables `text` (the template's text as approved); with neither,
        any message to `to` since the first attempt counts as this one.
        """
        filled = {name: template_variable(value) for name, value in variables.items()}
        content = {"content_sid": content_sid}
        if filled:
            content["content_variables"] = json.dumps(filled, ensure_ascii=False)
        return self._create_once(to, content_lookup(variables, text), unconfirmed_since, from_number,
                                 in_template=True, **content)

    def unsent_text(self, body: str, already_sent: int) -> str:
        """Return what of `body` is left once its first `already_sent` parts have gone out."""
        if not already_sent:
            return body
        return "\n\n".join(split_message(body, max_parts=self.max_parts)[already_sent:])

    def _create_once(self, to: str, text: str | tuple[str, ...], unconfirmed_since: datetime | None,
                     from_number: str, in_template: bool = False, **content) -> str:
        """Have Twilio take one message of `content` (body, or a template and its variables) for `to`,
        retrying what is transient and asking Twilio, after an attempt without an answer, whether it
        took the message (found by `text`, see find_sent) before trying again; return its MessageSid."""
        from_number = from_number or self.from_number
        if self._client is None or not from_number:
            raise WhatsAppError(
                "Twilio is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_WHATSAPP_NUMBER)",
                retryable=False,
            )
        since = unconfirmed_since or datetime.now(UTC)
        unsure = unconfirmed_since is not None

        def attempt() -> str:
            nonlocal unsure
            if unsure:
                sid = self.find_sent(to, text, since, from_number, in_template=in_template)
                if sid:
                    return sid
            try:
                return self._client.messages.create(to=to, from_=from_number, **content,
                                                    status_callback=self.status_callback or values.unset).sid
            except (TwilioException, requests.RequestException) as exc:
                error = _as_whatsapp_error(exc)
                unsure = error.status is None
                raise error from exc

        return with_retries(attempt, attempts=self.attempts, backoff=self.backoff, sleep=self.sleep,
                            label="twilio send")

    def find_sent(self, to: str, body: str | tuple[str, ...], since: datetime, from_number: str = "",
                  in_template: bool = False) -> str | None:
        """Return the sid of a message with exactly this body that Twilio took for `to` from
        `from_number` (empty: the default number) since `since` (less CLOCK_SKEW), or None.
        `in_template`: `body` went in a template (its variable, or several as a tuple), so Twilio's copy
        holds it (each of them) among the template's own words."""
        since = (since if since.tzinfo else since.replace(tzinfo=UTC)) - CLOCK_SKEW
        try:
            recent = self._client.messages.list(to=to, from_=from_number or self.from_number, limit=RECENT_MESSAGES)
        except TwilioRestException as exc:
            raise _as_whatsapp_error(exc) from exc
        except TwilioException as exc:
            # The SDK's pager raises a bare "Unable to fetch page" with the response beside it.
            response = exc.args[1] if len(exc.args) > 1 else None
            status = getattr(response, "status_code", None)
            raise WhatsAppError(f"could not look up sent messages (HTTP {status})", status=status,
                                retryable=status is None or status == 429 or status >= 500) from exc
        except requests.RequestException as exc:
            raise _as_whatsapp_error(exc) from exc
        for message in recent:  # newest first
            if message.date_created is not None and message.date_created < since:
                break
            if _holds(message.body or "", body) if in_template else message.body == body:
                log.info("twilio already took message_sid=%s; not sending it again", message.sid)
                return message.sid
        return None

    def show_typing(self, message_sid: str) -> None:
        """Show the user "typing…" under their message `message_sid`, best effort: a failure is logged
        and the answer goes on without it."""
        if self._typing_client is None:
            return
        try:
            self._typing_client.messaging.v2.typing_indicator.create(channel="whatsapp", message_id=message_sid)
        # ValueError: an answer that is not JSON. Upstream text is left out of the log: it may hold a number.
        except (TwilioException, requests.RequestException, ValueError) as exc:
            error = _as_whatsapp_error(exc)
            log.warning("typing indicator not shown message_sid=%s error=%s status=%s code=%s",
                        message_sid, exc.__class__.__name__, error.status, error.code)

    def account_status(self) -> str:
        """Fetch the Twilio account (checks the credentials, sends nothing); return its status."""
        if self._client is None:
            raise WhatsAppError("Twilio is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)",
                                retryable=False)
        try:
            return self._client.api.v2010.accounts(self._client.account_sid).fetch().status
        except (TwilioException, requests.RequestException) as exc:
            raise _as_whatsapp_error(exc) from exc


def _holds(body: str, wanted: str | tuple[str, ...]) -> bool:
    """Whether a template message's `body` holds `wanted` (each of them, for a tuple)."""
    return all(piece in body for piece in ((wanted,) if isinstance(wanted, str) else wanted))


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
