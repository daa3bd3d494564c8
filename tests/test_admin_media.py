"""A customer's photos, voice notes and files in the admin: fetched from Twilio by the panel with the
account's credentials and passed on, never Twilio's address or the credentials themselves."""
from __future__ import annotations

import pytest

from chatbot.admin import media
from chatbot.models import Message
from tests.conftest import log_in
from tests.fakes import Scripted
from tests.support import ACCOUNT_SID, AUTH_TOKEN
from tests.test_media import VOICE_NOTE, png

CY = "whatsapp:+15550003333"


@pytest.fixture
def sent(post_webhook):
    """Store an inbound message carrying these files (url, content type) as the webhook does; return it."""

    def send(*files: tuple[str, str], caption: str = "", **extra) -> Message:
        fields = {f"{name}{index}": value for index, (url, content_type) in enumerate(files)
                  for name, value in (("MediaUrl", url), ("MediaContentType", content_type))}
        form = post_webhook.message(caption, sender=CY, NumMedia=str(len(files)), **fields, **extra)
        return Message.get(Message.twilio_sid == form["MessageSid"])

    return send


def transcript(client, message: Message) -> str:
    return client.get(f"/admin/conversation/details/?id={message.conversation_id}").get_data(as_text=True)


def test_a_visitor_not_logged_in_is_sent_to_the_login_page_and_nothing_is_fetched(client, sent, fake_twilio):
    photo = sent((fake_twilio.add_media(png(), "image/png"), "image/png"))
    answer = client.get(f"/admin/media/{photo.id}/0")
    assert answer.status_code == 302 and "/admin/login/" in answer.location
    assert fake_twilio.media_fetches == []


def test_the_transcript_shows_a_photo_and_a_voice_note_through_the_panel_only(client, admin_user, sent, fake_twilio):
    photo_url, voice_url = fake_twilio.add_media(png(), "image/png"), fake_twilio.add_media(VOICE_NOTE, "audio/ogg")
    message = sent((photo_url, "image/png"), (voice_url, "audio/ogg; codecs=opus"), caption="My cat, and me")
    assert log_in(client).status_code == 302
    page = transcript(client, message)
    assert f'<img src="/admin/media/{message.id}/0"' in page
    assert f'<audio controls preload="none" src="/admin/media/{message.id}/1"' in page
    assert "My cat, and me" in page
    for secret in (photo_url, voice_url, AUTH_TOKEN, ACCOUNT_SID, fake_twilio.url):
        assert secret not in page
    # Nor on the message's own page: its metadata keeps the types, not the addresses.
    details = client.get(f"/admin/message/details/?id={message.id}").get_data(as_text=True)
    assert "image/png" in details and photo_url not in details and ACCOUNT_SID not in details

    photo = client.get(f"/admin/media/{message.id}/0")
    assert (photo.status_code, photo.content_type, photo.data) == (200, "image/png", png())
    voice = client.get(f"/admin/media/{message.id}/1")
    assert (voice.status_code, voice.content_type, voice.data) == (200, "audio/ogg", VOICE_NOTE)
    assert photo.headers["Content-Security-Policy"] == "sandbox" and "Content-Disposition" not in photo.headers
    # The credentials went to Twilio's API host, never to its media storage where it redirects.
    assert {fetch.headers.get("Authorization", "")[:6] for fetch in fake_twilio.media_fetches} == {"Basic "}
    assert [fetch["headers"].get("Authorization") for fetch in fake_twilio.storage.requests] == [None, None]


def test_a_file_of_another_kind_is_offered_as_a_download_and_never_opened_in_the_panel(client, admin_user, sent,
                                                                                        fake_twilio):
    page_body = b"<script>alert(document.cookie)</script>"
    message = sent((fake_twilio.add_media(page_body, "text/html"), "text/html"))
    assert log_in(client).status_code == 302
    assert "📎 Download the file (text/html)" in transcript(client, message)
    answer = client.get(f"/admin/media/{message.id}/0")
    assert answer.status_code == 200 and answer.data == page_body
    assert answer.headers["Content-Disposition"].startswith("attachment;")
    assert answer.headers["Content-Security-Policy"] == "sandbox"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_a_shared_location_is_a_map_link_and_an_empty_message_says_so(client, admin_user, sent):
    place = sent(Latitude="48.8584", Longitude="2.2945")
    empty = sent()
    nowhere = sent(Latitude="91", Longitude="2")
    assert log_in(client).status_code == 302
    page = transcript(client, place)
    assert ('href="https://www.openstreetmap.org/?mlat=48.858400&amp;mlon=2.294500#map=17/48.858400/2.294500"'
            in page)
    assert "📍 Shared a location (48.85840, 2.29450): open the map" in page
    # The empty message and the impossible place both say there is nothing to show.
    assert page.count("(no text: WhatsApp sent nothing this panel can show)") == 2
    assert f'id="message-{empty.id}"' in page and f'id="message-{nowhere.id}"' in page
    polled = client.get(f"/admin/inbox/{place.conversation_id}/since/0.json").get_json()["messages"]
    assert polled[0]["place"]["map_url"].startswith("https://www.openstreetmap.org/?mlat=48.858400&mlon=2.294500")
    assert "place" not in polled[1] and "media" not in polled[1]


def test_a_file_that_does_not_exist_is_a_404(client, admin_user, sent, fake_twilio):
    message = sent((fake_twilio.add_media(png(), "image/png"), "image/png"))
    assert log_in(client).status_code == 302
    assert client.get(f"/admin/media/{message.id}/1").status_code == 404
    assert client.get(f"/admin/media/{message.id + 100}/0").status_code == 404
    assert client.get(f"/admin/media/{message.id}/-1").status_code == 404
    assert fake_twilio.media_fetches == []


def gone(fake_twilio):
    # An address at Twilio whose file its storage no longer has.
    url = fake_twilio.add_media(png(), "image/png")
    fake_twilio.storage.files.clear()
    return url


def refused(fake_twilio):
    fake_twilio.auth_token = "a token rotated since"
    return fake_twilio.add_media(png(), "image/png")


def slow(fake_twilio, monkeypatch):
    monkeypatch.setattr(media, "FETCH_SECONDS", 0.3)
    fake_twilio.then(Scripted(200, "", delay=10))
    return fake_twilio.add_media(png(), "image/png")


@pytest.mark.parametrize("failure, said", [
    (gone, "Twilio no longer has this photo: it was deleted there, or is past Twilio's media retention."),
    (refused, "Twilio refused the account's credentials for this photo: check TWILIO_ACCOUNT_SID and "
              "TWILIO_AUTH_TOKEN (flask check-config)."),
    (slow, "Twilio did not send this photo within 0.3 s; reload the page to try again."),
], ids=["404", "401", "timeout"])
def test_twilio_failing_to_give_a_file_is_said_in_words_not_a_500(client, admin_user, sent, fake_twilio,
                                                                  monkeypatch, failure, said):
    url = failure(fake_twilio, monkeypatch) if failure is slow else failure(fake_twilio)
    message = sent((url, "image/png"))
    assert log_in(client).status_code == 302
    answer = client.get(f"/admin/media/{message.id}/0")
    assert (answer.status_code, answer.content_type) == (502, "text/plain; charset=utf-8")
    assert answer.get_data(as_text=True) == said
    assert AUTH_TOKEN not in answer.get_data(as_text=True) and url not in answer.get_data(as_text=True)
