"""Voice notes, photos and documents: fetched from Twilio safely, understood, answered, remembered."""
from __future__ import annotations

import base64
import logging
import struct
import time
import zlib
from pathlib import Path

import pytest
import requests

from chatbot.media import MediaError, MediaFetcher
from chatbot.models import Message, Role
from chatbot.outbound import OutboundGuard, guarded_session
from chatbot.processor import MEDIA_TOO_LARGE, MEDIA_UNREADABLE, MEDIA_UNSUPPORTED, PHOTOS_UNSEEN, VOICE_UNHEARD
from tests.conftest import log_in, wait_for
from tests.fakes import FakeOpenRouter, Scripted
from tests.support import ACCOUNT_SID, AUTH_TOKEN

ADA = "whatsapp:+15550001111"
VOICE_NOTE = (Path(__file__).parent / "samples" / "voice-note.ogg").read_bytes()
TWENTY_MB = 20 * 1024 * 1024
MB = 1024 * 1024


def png(width: int = 2, height: int = 2) -> bytes:
    """A real PNG of red pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def pdf(text: str = "Invoice 42: 120 EUR") -> bytes:
    """A minimal one-page PDF with one line of text."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    body, offsets = b"%PDF-1.4\n", []
    for number, content in enumerate(objects, start=1):
        offsets.append(len(body))
        body += b"%d 0 obj\n" % number + content + b"\nendobj\n"
    xref = len(body)
    body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    body += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return body + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def fetcher_for(fake_twilio, **options) -> MediaFetcher:
    """A fetcher aimed at the Twilio fake, whose media storage is on loopback too."""
    return MediaFetcher(requests.Session(), guarded_session(OutboundGuard(allow_private=True)), ACCOUNT_SID,
                        AUTH_TOKEN, fake_twilio.url, **options)


def send_media(post_webhook, url: str, content_type: str, caption: str = ""):
    return post_webhook.message(caption, sender=ADA, NumMedia="1", MediaUrl0=url, MediaContentType0=content_type)


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def question() -> Message:
    return Message.select().where(Message.role == Role.USER.value).order_by(Message.id.desc()).get()


def test_voice_note_is_transcribed_answered_and_remembered(post_webhook, run_jobs, fake_twilio, fake_openrouter):
    send_media(post_webhook, fake_twilio.add_media(VOICE_NOTE, "audio/ogg"), "audio/ogg")
    run_jobs()
    assert [r.body for r in fake_openrouter.transcriptions] == [
        {"model": "openai/whisper-1", "input_audio": {"data": b64(VOICE_NOTE), "format": "ogg"}}]
    transcript = fake_openrouter.transcript
    assert fake_openrouter.completions[-1].body["messages"][-1] == {"role": "user", "content": transcript}
    assert transcript in fake_twilio.sent[-1]["Body"]
    voice_note = question()
    assert voice_note.metadata["transcript"] == transcript
    answer = voice_note.current_answer()
    assert answer.cost == pytest.approx(0.00001 + 0.0002)  # the reply's and the transcription's

    post_webhook.message("And tomorrow?", sender=ADA)
    run_jobs()
    assert fake_openrouter.completions[-1].body["messages"][1] == {"role": "user", "content": transcript}


def test_credentials_go_to_twilio_and_never_to_the_media_storage(post_webhook, run_jobs, fake_twilio):
    media_url = fake_twilio.add_media(VOICE_NOTE, "audio/ogg")
    send_media(post_webhook, media_url, "audio/ogg")
    run_jobs()
    assert [r.headers.get("Authorization") for r in fake_twilio.media_fetches] == [
        "Basic " + b64(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode())]
    storage = fake_twilio.storage
    assert len(storage.requests) == 1
    assert "Authorization" not in storage.requests[0]["headers"]
    assert storage.bytes_sent[media_url.rsplit("/", 1)[-1]] == len(VOICE_NOTE)


def test_voice_note_that_cannot_be_transcribed_gets_the_friendly_message(post_webhook, run_jobs, fake_twilio,
                                                                        fake_openrouter):
    fake_openrouter.transcription_error = FakeOpenRouter.error(400, "audio could not be decoded")
    send_media(post_webhook, fake_twilio.add_media(VOICE_NOTE, "audio/ogg"), "audio/ogg")
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == [VOICE_UNHEARD]
    assert fake_openrouter.completions == []
    assert question().current_answer().content == VOICE_UNHEARD


def test_photo_with_caption_reaches_a_vision_model_as_an_image(post_webhook, run_jobs, fake_twilio, fake_openrouter):
    photo = png()
    send_media(post_webhook, fake_twilio.add_media(photo, "image/png"), "image/png", caption="What colour is this?")
    run_jobs()
    assert fake_openrouter.completions[-1].body["messages"][-1]["content"] == [
        {"type": "text", "text": "What colour is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(photo)}},
    ]
    post_webhook.message("Thanks!", sender=ADA)
    run_jobs()
    # Later turns keep a short stand-in for the photo, never its bytes.
    assert fake_openrouter.completions[-1].body["messages"][1] == {
        "role": "user", "content": "[photo: What colour is this?]"}


def test_photo_to_a_text_only_model_gets_one_kind_sentence_and_one_alert(post_webhook, run_jobs, fake_twilio,
                                                                         fake_openrouter, caplog):
    fake_openrouter.input_modalities["openai/gpt-4o-mini"] = ["text"]
    fake_openrouter.input_modalities["google/gemini-2.0-flash-001"] = ["text", "image"]
    caplog.set_level(logging.ERROR)
    for caption in ("Look!", "And this one?"):
        send_media(post_webhook, fake_twilio.add_media(png(), "image/png"), "image/png", caption=caption)
        run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == [PHOTOS_UNSEEN, PHOTOS_UNSEEN]
    assert fake_openrouter.completions == []
    assert fake_twilio.media_fetches == []
    alerts = [r.getMessage() for r in caplog.records if "no_image_input" in r.getMessage()]
    assert len(alerts) == 1
    assert "openai/gpt-4o-mini" in alerts[0] and "google/gemini-2.0-flash-001" in alerts[0]


def test_pdf_reaches_the_model_as_a_file(post_webhook, run_jobs, fake_twilio, fake_openrouter):
    document = pdf()
    send_media(post_webhook, fake_twilio.add_media(document, "application/pdf"), "application/pdf",
               caption="How much is this invoice?")
    run_jobs()
    text, part = fake_openrouter.completions[-1].body["messages"][-1]["content"]
    assert text == {"type": "text", "text": "How much is this invoice?"}
    assert part["type"] == "file"
    assert part["file"]["filename"].endswith(".pdf")
    assert part["file"]["file_data"] == "data:application/pdf;base64," + b64(document)


def test_other_kinds_of_file_get_a_clear_answer_and_are_not_fetched(post_webhook, run_jobs, fake_twilio):
    send_media(post_webhook, fake_twilio.add_media(b"BEGIN:VCARD\nEND:VCARD\n", "text/vcard"), "text/vcard")
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == [MEDIA_UNSUPPORTED]
    assert fake_twilio.media_fetches == []


def test_twenty_megabyte_file_is_refused_before_its_download_finishes(post_webhook, run_jobs, fake_twilio,
                                                                      fake_openrouter):
    media_url = fake_twilio.add_media(b"%PDF-1.4\n", "application/pdf", declared_length=TWENTY_MB)
    send_media(post_webhook, media_url, "application/pdf")
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == [
        MEDIA_TOO_LARGE.format(files="That file is", total="20", each="16")]
    assert fake_openrouter.completions == []
    media_sid = media_url.rsplit("/", 1)[-1]
    assert wait_for(lambda: media_sid in fake_twilio.storage.bytes_sent, timeout=10)
    assert fake_twilio.storage.bytes_sent[media_sid] < TWENTY_MB


def test_download_stops_at_the_cap_when_no_size_is_announced(fake_twilio):
    media_url = fake_twilio.add_media(b"", "application/pdf", declared_length=TWENTY_MB)
    media_sid = media_url.rsplit("/", 1)[-1]
    fake_twilio.storage.unannounced.add(media_sid)
    fetcher = fetcher_for(fake_twilio, max_bytes=1024 * 1024)
    with pytest.raises(MediaError, match="over the 1048576-byte limit"):
        fetcher.fetch(media_url, "application/pdf")
    assert wait_for(lambda: media_sid in fake_twilio.storage.bytes_sent, timeout=10)
    assert fake_twilio.storage.bytes_sent[media_sid] < TWENTY_MB


def test_served_type_must_match_the_declared_one(fake_twilio):
    media_url = fake_twilio.add_media(b"<html></html>", "image/png", served_type="text/html")
    with pytest.raises(MediaError, match="text/html, not the declared image/png"):
        fetcher_for(fake_twilio).fetch(media_url, "image/png")


def test_media_url_on_another_host_is_never_fetched(post_webhook, run_jobs, fake_twilio, fake_openrouter):
    elsewhere = fake_twilio.storage.url + f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/MM1/Media/ME1"
    send_media(post_webhook, elsewhere, "image/png", caption="Look")
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == [MEDIA_UNREADABLE]
    assert fake_twilio.storage.requests == []
    assert fake_openrouter.completions == []


def test_admin_transcript_shows_what_a_voice_note_said(client, admin_user, post_webhook, run_jobs, fake_twilio,
                                                        fake_openrouter):
    send_media(post_webhook, fake_twilio.add_media(VOICE_NOTE, "audio/ogg"), "audio/ogg")
    send_media(post_webhook, fake_twilio.add_media(png(), "image/png"), "image/png", caption="My cat")
    run_jobs()
    assert log_in(client).status_code == 302
    page = client.get(f"/admin/conversation/details/?id={question().conversation_id}").get_data(as_text=True)
    assert f"🎤 {fake_openrouter.transcript}" in page
    # The photo itself, through the panel (tests/test_admin_media.py), under its caption.
    assert f'<img src="/admin/media/{question().id}/0"' in page and "My cat" in page


# --- the type served ------------------------------------------------------------------------------

def test_file_served_without_a_content_type_is_refused_and_never_transcribed(post_webhook, run_jobs, fake_twilio,
                                                                             fake_openrouter):
    media_url = fake_twilio.add_media(b"<html><body>not a voice note</body></html>", "audio/ogg", served_type="")
    send_media(post_webhook, media_url, "audio/ogg")
    run_jobs()
    assert [sent["Body"] for sent in fake_twilio.sent] == [MEDIA_UNREADABLE]
    assert fake_openrouter.requests == []


# --- the deadline -----------------------------------------------------------------------------------

def test_media_host_dripping_a_byte_every_two_seconds_is_cut_off_at_the_deadline(fake_twilio):
    media_url = fake_twilio.add_media(pdf(), "application/pdf")
    fake_twilio.storage.drips[media_url.rsplit("/", 1)[-1]] = 2.0
    started = time.monotonic()
    with pytest.raises(MediaError, match="did not arrive within the deadline") as refused:
        fetcher_for(fake_twilio, deadline=1.0).fetch(media_url, "application/pdf")
    assert time.monotonic() - started < 1.8
    assert not refused.value.retryable


def test_media_host_trickling_quickly_is_cut_off_at_the_deadline_of_the_whole_transfer(fake_twilio):
    media_url = fake_twilio.add_media(b"%PDF-1.4\n" + b"x" * 200, "application/pdf")
    fake_twilio.storage.drips[media_url.rsplit("/", 1)[-1]] = 0.02
    started = time.monotonic()
    with pytest.raises(MediaError, match="did not arrive within the deadline"):
        fetcher_for(fake_twilio, deadline=1.0).fetch(media_url, "application/pdf")
    assert time.monotonic() - started < 1.8


def test_media_host_that_never_answers_is_cut_off_at_the_deadline(fake_twilio):
    media_url = fake_twilio.add_media(pdf(), "application/pdf")
    fake_twilio.then(Scripted(307, "", delay=30))
    started = time.monotonic()
    with pytest.raises(MediaError, match="within the deadline"):
        fetcher_for(fake_twilio, deadline=1.0).fetch(media_url, "application/pdf")
    assert time.monotonic() - started < 1.8


def test_one_messages_downloads_share_one_deadline_and_are_not_retried(post_webhook, run_jobs, services,
                                                                        fake_twilio, fake_openrouter):
    services.processor.channel.media.deadline = 1.0
    urls = [fake_twilio.add_media(pdf(), "application/pdf") for _ in range(2)]
    for url in urls:
        fake_twilio.storage.drips[url.rsplit("/", 1)[-1]] = 2.0
    post_webhook.message("", sender=ADA, NumMedia="2", MediaUrl0=urls[0], MediaContentType0="application/pdf",
                         MediaUrl1=urls[1], MediaContentType1="application/pdf")
    started = time.monotonic()
    run_jobs()
    assert time.monotonic() - started < 1.8
    assert [sent["Body"] for sent in fake_twilio.sent] == [MEDIA_UNREADABLE]
    assert fake_openrouter.requests == []
