"""What a customer sent besides text, shown in the transcript: their photos, voice notes and files,
and the locations they shared.

A file stays at Twilio. The transcript asks the panel for it (/admin/media/<message id>/<n>), and the
panel fetches it with the account's credentials through the same MediaFetcher the worker uses (Twilio's
API host only, redirects through the outbound guard, a deadline and a size cap) and passes the bytes
on: the browser never sees Twilio's URL or the credentials. When Twilio cannot give the file (gone,
credentials refused, too slow), the answer says so in words, and the transcript shows that instead of
a broken picture.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

from flask import Response, abort, url_for
from flask_admin import BaseView, expose

from chatbot.admin.panel import LoginRequired, services
from chatbot.media import READ_CHUNK, Media, MediaError, MediaTimeout, MediaTooLarge, media_type, megabytes
from chatbot.models import Message
from chatbot.models.db import connection_released

log = logging.getLogger(__name__)

# How long an operator waits for one file before the transcript says Twilio did not give it.
FETCH_SECONDS = 15.0
# The pictures a browser shows in the page, and the families it plays; any other file is offered as a
# download, never opened here.
SHOWN_INLINE = ("image/jpeg", "image/png", "image/webp", "image/gif")
PLAYED = ("audio", "video")
# Whatever a customer's file holds, it runs nothing on the panel's origin, even opened on its own.
FILE_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, max-age=300"}
OSM_MAP = "https://www.openstreetmap.org/?mlat={latitude}&mlon={longitude}#map=17/{latitude}/{longitude}"


@dataclass(frozen=True)
class Attachment:
    """One file of a message as the transcript shows it: a picture, a player, or a link to download."""

    kind: str  # "image", "audio", "video" or "file"
    url: str  # the panel's own address for it
    content_type: str

    @property
    def noun(self) -> str:
        """What it is, in words: `photo`, `voice note`, `PDF document`, `file (application/zip)`."""
        return {"image": "photo", "audio": "voice note", "video": "video"}.get(
            self.kind, "PDF document" if self.content_type == "application/pdf" else f"file ({self.content_type})")


@dataclass(frozen=True)
class Place:
    """A location the customer shared."""

    latitude: float
    longitude: float

    @property
    def map_url(self) -> str:
        return OSM_MAP.format(latitude=f"{self.latitude:.6f}", longitude=f"{self.longitude:.6f}")

    def __str__(self) -> str:
        return f"{self.latitude:.5f}, {self.longitude:.5f}"


def shown_kind(content_type: str) -> str:
    """How the transcript shows a file of this type: `image`, `audio`, `video` or `file` (a download)."""
    bare = media_type(content_type)
    if bare in SHOWN_INLINE:
        return "image"
    family = bare.split("/", 1)[0]
    return family if family in PLAYED else "file"


def attachments_of(message: Message) -> list[Attachment]:
    """The message's files, each by the panel's address for it."""
    return [Attachment(kind=shown_kind(item.get("content_type", "")),
                       url=url_for("media.file_view", message_id=message.id, index=index),
                       content_type=media_type(item.get("content_type", "")) or "of no stated type")
            for index, item in enumerate(message.metadata.get("media") or [])]


def place_of(message: Message) -> Place | None:
    """The location the message shared, or None (none, or coordinates that are not a place on Earth)."""
    try:
        latitude = float(message.metadata["Latitude"])
        longitude = float(message.metadata["Longitude"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(latitude) and math.isfinite(longitude)) or abs(latitude) > 90 or abs(longitude) > 180:
        return None
    return Place(latitude, longitude)


def shown_besides_text(message: Message) -> dict:
    """The message's files and location, when it has any, as the conversation page's poll hands them
    to its script."""
    shown = {}
    files = attachments_of(message)
    if files:
        shown["media"] = [{"kind": file.kind, "url": file.url, "noun": file.noun} for file in files]
    place = place_of(message)
    if place:
        shown["place"] = {"text": str(place), "map_url": place.map_url}
    return shown


def why_unavailable(error: MediaError, noun: str, max_bytes: int) -> str:
    """Say for the operator why the file cannot be shown, and what to do."""
    what = f"this {noun}"
    if error.status == 404:
        return f"Twilio no longer has {what}: it was deleted there, or is past Twilio's media retention."
    if error.status in (401, 403):
        return (f"Twilio refused the account's credentials for {what}: check TWILIO_ACCOUNT_SID and "
                "TWILIO_AUTH_TOKEN (flask check-config).")
    if isinstance(error, MediaTimeout):
        return f"Twilio did not send {what} within {FETCH_SECONDS:g} s; reload the page to try again."
    if isinstance(error, MediaTooLarge):
        return f"This {noun} is over the {megabytes(max_bytes)} MB the panel fetches (MAX_MEDIA_BYTES)."
    return f"Twilio could not give {what}: {error.args[0]}."


def chunks_of(download: Media) -> Iterator[bytes]:
    """The file's bytes as they are read from its temporary file, which is closed at the end."""
    try:
        download.file.seek(0)
        while chunk := download.file.read(READ_CHUNK):
            yield chunk
    finally:
        download.close()


class MediaView(LoginRequired, BaseView):
    """A message's files, fetched from Twilio for whoever may read its transcript (any role)."""

    def is_visible(self) -> bool:
        return False

    @expose("/")
    def index(self):
        # Flask-Admin wants a page at the view's root; a file is only ever asked for by its address.
        abort(404)

    @expose("/<row_id:message_id>/<int:index>")
    def file_view(self, message_id: int, index: int):
        message = Message.get_or_none(Message.id == message_id)
        items = (message.metadata.get("media") or []) if message is not None else []
        if index >= len(items):
            abort(404)
        item = items[index]
        attachment = attachments_of(message)[index]
        fetcher = services().media
        try:
            # Twilio can take seconds: the database connection goes back to the pool meanwhile.
            with connection_released():
                download = fetcher.fetch(item.get("url", ""), item.get("content_type", ""),
                                         until=fetcher.clock() + FETCH_SECONDS)
        except MediaError as error:
            log.warning("message_id=%s media=%s not shown: %s", message_id, index, error)
            return Response(why_unavailable(error, attachment.noun, fetcher.max_bytes), status=502,
                            mimetype="text/plain", headers=FILE_HEADERS)
        headers = {**FILE_HEADERS, "Content-Length": str(download.size)}
        if attachment.kind == "file":
            headers["Content-Disposition"] = f'attachment; filename="message-{message_id}-{index + 1}"'
        return Response(chunks_of(download), content_type=download.content_type, headers=headers)
