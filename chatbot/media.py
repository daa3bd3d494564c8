"""MediaFetcher: download a message's photo, voice note or document from Twilio, safely."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urljoin, urlparse

import requests
import urllib3

from chatbot.errors import UpstreamError

log = logging.getLogger(__name__)

TWILIO_API_BASE = "https://api.twilio.com"
READ_CHUNK = 64 * 1024
# Twilio answers with one redirect to its media storage; more hops than this is not Twilio.
MAX_REDIRECTS = 3
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


@dataclass(frozen=True)
class Media:
    """A fetched file: its bytes and its bare media type."""

    content: bytes
    content_type: str


class MediaFetcher:
    """Fetches MediaUrl{N} with the account's credentials, only from Twilio's API host, and follows
    the redirect to Twilio's media storage without them."""

    def __init__(self, session: requests.Session, account_sid: str, auth_token: str, api_base_url: str = "",
                 max_bytes: int = 16 * 1024 * 1024, timeout: tuple[float, float] = (5.0, 30.0)):
        self.session = session
        self.credentials = (account_sid, auth_token)
        trusted = urlparse(api_base_url or TWILIO_API_BASE)
        self.trusted_origin = (trusted.scheme, trusted.netloc.lower())
        self.max_bytes = max_bytes
        self.timeout = timeout

    def fetch(self, url: str, declared_type: str) -> Media:
        """Return the file at `url`, which must be of `declared_type` (MediaContentType{N})."""
        origin = urlparse(url)
        if (origin.scheme, origin.netloc.lower()) != self.trusted_origin:
            # Only Twilio gets the credentials: a URL elsewhere is never requested at all.
            raise MediaError(f"refused a media URL on host {origin.netloc or '?'}: not the Twilio API host",
                             retryable=False)
        response = self._get(url, auth=self.credentials)
        for _ in range(MAX_REDIRECTS):
            if response.status_code not in REDIRECT_STATUSES:
                break
            location = response.headers.get("Location", "")
            response.close()
            target = urljoin(url, location)
            if urlparse(target).scheme not in ("http", "https"):
                raise MediaError("media redirect was not to an http(s) URL", retryable=False)
            # Twilio's media storage is another host: the account's credentials never go there.
            url, response = target, self._get(target, auth=None)
        try:
            return self._read(response, declared_type)
        finally:
            response.close()

    def _get(self, url: str, auth: tuple[str, str] | None) -> requests.Response:
        try:
            return self.session.get(url, auth=auth, timeout=self.timeout, stream=True, allow_redirects=False,
                                    headers={} if auth else {"Authorization": None})
        except requests.Timeout as exc:
            raise MediaError(f"timed out fetching media from {urlparse(url).netloc}", retryable=True) from exc
        except requests.RequestException as exc:
            raise MediaError(f"could not fetch media from {urlparse(url).netloc}: {exc.__class__.__name__}",
                             retryable=True) from exc

    def _read(self, response: requests.Response, declared_type: str) -> Media:
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
        if length.isdigit() and int(length) > self.max_bytes:
            raise MediaError(f"media of {int(length)} bytes is over the {self.max_bytes}-byte limit",
                             retryable=False)
        chunks, size = [], 0
        try:
            for chunk in response.iter_content(READ_CHUNK):
                size += len(chunk)
                if size > self.max_bytes:
                    # Stop reading here: the rest of an oversized file is never downloaded.
                    raise MediaError(f"media is over the {self.max_bytes}-byte limit", retryable=False)
                chunks.append(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise MediaError(f"media download broke off: {exc.__class__.__name__}", retryable=True) from exc
        log.info("media fetched type=%s bytes=%s", served, size)
        return Media(content=b"".join(chunks), content_type=served)
