"""MediaFetcher: download a message's photo, voice note or document from Twilio, safely.

A file streams to a temporary file as it arrives, within the job's deadline (connect, each read and
the whole transfer) and its byte limit, and is read back only when the request that carries it is
built: a worker holds at most `max_bytes_in_memory` of attachments in memory at once (HeldBytes),
whatever the number of messages it answers.
"""
from __future__ import annotations

import base64
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO
from urllib.parse import urljoin, urlparse

import requests
import urllib3

from chatbot.errors import UpstreamError
from chatbot.outbound import MAX_REDIRECTS, AddressRefused

log = logging.getLogger(__name__)

TWILIO_API_BASE = "https://api.twilio.com"
READ_CHUNK = 64 * 1024
# Base64 turns each 3 bytes into 4 characters: a multiple of 3 read at a time encodes a file piecewise.
ENCODE_CHUNK = 3 * 256 * 1024
# A socket timeout of 0 would make reads non-blocking; this little is "the deadline has come".
MIN_WAIT = 0.01
REDIRECT_STATUSES = {301, 302, 303, 307, 308}

# The format name OpenRouter's speech-to-text takes for each audio type WhatsApp sends.
AUDIO_FORMATS = {
    "audio/ogg": "ogg", "audio/opus": "ogg", "audio/mpeg": "mp3", "audio/mp3": "mp3",
    "audio/mp4": "m4a", "audio/m4a": "m4a", "audio/x-m4a": "m4a", "audio/aac": "aac",
    "audio/amr": "amr", "audio/wav": "wav", "audio/x-wav": "wav", "audio/webm": "webm",
}
IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp"}
PDF_TYPE = "application/pdf"


class MediaKind(StrEnum):
    AUDIO = "audio"
    IMAGE = "image"
    PDF = "pdf"
    OTHER = "other"


def media_type(content_type: str) -> str:
    """Return the bare media type of a Content-Type (`audio/ogg; codecs=opus` → `audio/ogg`)."""
    return content_type.split(";", 1)[0].strip().lower()


def media_kind(content_type: str) -> MediaKind:
    """Say how the assistant understands a file of this type."""
    bare = media_type(content_type)
    if bare in AUDIO_FORMATS:
        return MediaKind.AUDIO
    if bare in IMAGE_TYPES:
        return MediaKind.IMAGE
    if bare == PDF_TYPE:
        return MediaKind.PDF
    return MediaKind.OTHER


class MediaError(UpstreamError):
    """A media file could not be fetched, or was refused (wrong host, too large, wrong type)."""

    upstream = "twilio-media"


class MediaTooLarge(MediaError):
    """A file was larger than it may be: its own cap, or what is left of its message's budget."""


class MediaTimeout(MediaError):
    """A file did not arrive in time: a read timed out, or the deadline came."""


@dataclass
class Media:
    """A fetched file, kept in a temporary file until closed: its size and bare media type."""

    file: BinaryIO
    size: int
    content_type: str

    def content(self) -> bytes:
        """Read the whole file back."""
        self.file.seek(0)
        return self.file.read()

    def data_url(self) -> str:
        """Return the file as a `data:` URL (a model's image or file part), encoded piece by piece so
        the bytes and their base64 are never in memory whole at the same time."""
        self.file.seek(0)
        pieces = [f"data:{self.content_type};base64,"]
        while chunk := self.file.read(ENCODE_CHUNK):
            pieces.append(base64.b64encode(chunk).decode("ascii"))
        return "".join(pieces)

    def close(self) -> None:
        self.file.close()


class HeldBytes:
    """The attachment bytes one worker process holds in memory at once: at most `limit`; the rest wait."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.clock = clock
        self.held = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, size: int, until: float | None = None) -> Iterator[None]:
        """Hold `size` bytes while the block runs, waiting (until `until`, a `clock()` time) for room."""
        with self._changed:
            timeout = None if until is None else max(0.0, until - self.clock())
            if not self._changed.wait_for(lambda: self.held + size <= self.limit, timeout):
                raise MediaError(f"no room before the deadline to read {size} bytes of attachments "
                                 f"({self.held} of {self.limit} held by other messages)", retryable=True)
            self.held += size
        try:
            yield
        finally:
            with self._changed:
                self.held -= size
                self._changed.notify_all()


class MediaFetcher:
    """Fetches MediaUrl{N} with the account's credentials, only from Twilio's API host, and follows its
    redirects to Twilio's media storage through `hop_session` (the outbound guard's), which has none.

    `session` only ever talks to the configured Twilio API origin, the operator's choice; every hop
    after it goes to an address the guard allows, at most MAX_REDIRECTS of them.
    """

    def __init__(self, session: requests.Session, hop_session: requests.Session, account_sid: str,
                 auth_token: str, api_base_url: str = "", max_bytes: int = 16 * 1024 * 1024,
                 max_message_bytes: int = 20 * 1024 * 1024, max_bytes_in_memory: int = 40 * 1024 * 1024,
                 deadline: float = 60.0, timeout: tuple[float, float] = (5.0, 30.0),
                 clock: Callable[[], float] = time.monotonic):
        self.session = session
        self.hop_session = hop_session
        self.credentials = (account_sid, auth_token)
        trusted = urlparse(api_base_url or TWILIO_API_BASE)
        self.trusted_origin = (trusted.scheme, trusted.netloc.lower())
        self.max_bytes = max_bytes
        # The most one message's attachments may add up to; past it the processor skips them.
        self.max_message_bytes = max_message_bytes
        self.memory = HeldBytes(max_bytes_in_memory, clock)
        # Seconds one message's downloads may take together (AI_DEADLINE).
        self.deadline = deadline
        self.timeout = timeout
        self.clock = clock

    def fetch(self, url: str, declared_type: str, max_bytes: int | None = None,
              until: float | None = None) -> Media:
        """Return the file at `url`, which must be of `declared_type` (MediaContentType{N}) and at most
        `max_bytes` (and the fetcher's own cap), fetched by `until` (a `clock()` time; by default
        `deadline` seconds from now). The caller closes it."""
        ends = self.clock() + self.deadline if until is None else until
        limit = self.max_bytes if max_bytes is None else min(self.max_bytes, max_bytes)
        origin = urlparse(url)
        if (origin.scheme, origin.netloc.lower()) != self.trusted_origin:
            # Only Twilio gets the credentials: a URL elsewhere is never requested at all.
            raise MediaError(f"refused a media URL on host {origin.netloc or '?'}: not the Twilio API host",
                             retryable=False)
        response = self._get(self.session, url, self.credentials, ends)
        for _ in range(MAX_REDIRECTS):
            if response.status_code not in REDIRECT_STATUSES:
                break
            location = response.headers.get("Location", "")
            response.close()
            target = urljoin(url, location)
            if urlparse(target).scheme not in ("http", "https"):
                raise MediaError("media redirect was not to an http(s) URL", retryable=False)
            url, response = target, self._get(self.hop_session, target, None, ends)
        try:
            return self._read(response, declared_type, limit, ends)
        finally:
            response.close()

    def _get(self, session: requests.Session, url: str, auth: tuple[str, str] | None,
             ends: float) -> requests.Response:
        host = urlparse(url).netloc
        left = ends - self.clock()
        if left <= 0:
            raise self._deadline_passed(host)
        connect_timeout, read_timeout = (max(MIN_WAIT, min(limit, left)) for limit in self.timeout)
        try:
            return session.get(url, auth=auth, timeout=(connect_timeout, read_timeout), stream=True,
                               allow_redirects=False)
        except AddressRefused as exc:
            raise MediaError(f"refused to fetch media from {host}: {exc}", retryable=False) from exc
        except requests.Timeout as exc:
            raise self._timed_out(host, ends) from exc
        except requests.RequestException as exc:
            raise MediaError(f"could not fetch media from {host}: {exc.__class__.__name__}",
                             retryable=True) from exc

    def _read(self, response: requests.Response, declared_type: str, limit: int, ends: float) -> Media:
        status = response.status_code
        if status in REDIRECT_STATUSES:
            raise MediaError("too many media redirects", retryable=False, status=status)
        if status != 200:
            raise MediaError(f"media fetch answered HTTP {status}", retryable=status == 429 or status >= 500,
                             status=status)
        declared = media_type(declared_type)
        served = media_type(response.headers.get("Content-Type", ""))
        if not served or served != declared:
            # A body of no stated type is of no known type: it never reaches speech-to-text or a model.
            raise MediaError(f"media was {served or 'served without a Content-Type'}, not the declared {declared}",
                             retryable=False)
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise MediaTooLarge(f"media of {int(length)} bytes is over the {limit}-byte limit", retryable=False)
        host = urlparse(response.url).netloc
        file = tempfile.TemporaryFile()
        try:
            size = 0
            while chunk := self._read_some(response, ends):
                size += len(chunk)
                if size > limit:
                    # Stop reading here: the rest of an oversized file is never downloaded.
                    raise MediaTooLarge(f"media is over the {limit}-byte limit", retryable=False)
                file.write(chunk)
                if self.clock() >= ends:
                    raise self._deadline_passed(host)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            file.close()
            raise self._timed_out(host, ends) from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            file.close()
            raise MediaError(f"media download broke off: {exc.__class__.__name__}", retryable=True) from exc
        except BaseException:
            file.close()
            raise
        log.info("media fetched type=%s bytes=%s", served, size)
        return Media(file=file, size=size, content_type=served)

    def _read_some(self, response: requests.Response, ends: float) -> bytes:
        """Return the next bytes that arrive, waiting no later than `ends` for them."""
        connection = response.raw.connection
        if connection is not None and connection.sock is not None:
            # A host that drips a byte at a time never lets a fixed read timeout fire: each read waits
            # at most what is left of the deadline.
            connection.sock.settimeout(max(MIN_WAIT, min(self.timeout[1], ends - self.clock())))
        # read1 returns what has arrived; iter_content would wait to fill each whole chunk.
        return response.raw.read1(READ_CHUNK, decode_content=True)

    def _timed_out(self, host: str, ends: float) -> MediaTimeout:
        if self.clock() >= ends - MIN_WAIT:
            return self._deadline_passed(host)
        return MediaTimeout(f"timed out fetching media from {host}", retryable=True)

    @staticmethod
    def _deadline_passed(host: str) -> MediaTimeout:
        # Not retried: the user has waited long enough, and a host that is this slow would be again.
        return MediaTimeout(f"media from {host} did not arrive within the deadline", retryable=False)


def megabytes(size: int) -> str:
    """Say a byte count in MB for people: 16777216 → `16`, 1572864 → `1.5`, 2048 → `0.002`."""
    mib = size / (1024 * 1024)
    return f"{mib:.1f}".removesuffix(".0") if mib >= 0.1 else f"{mib:.1g}"
