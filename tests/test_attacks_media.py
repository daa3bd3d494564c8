"""Attacks through a signed webhook on how attachments are fetched: where a media redirect may lead."""
from __future__ import annotations

import logging

import pytest

from chatbot.outbound import OutboundGuard, guarded_session
from chatbot.processor import MEDIA_UNREADABLE
from tests.fakes import Scripted
from tests.test_media import VOICE_NOTE, send_media


@pytest.fixture
def env(env):
    """A deployment as shipped: the test fakes' loopback address is not a public one."""
    return {**env, "ALLOW_PRIVATE_HOSTS": "0"}


def test_redirect_to_a_private_address_is_refused_and_the_user_is_told(post_webhook, run_jobs, fake_twilio,
                                                                      fake_openrouter, caplog):
    # Twilio's API host is the operator's setting (loopback here); its redirect leads to the storage
    # fake, on loopback too: the request to it is never made.
    send_media(post_webhook, fake_twilio.add_media(VOICE_NOTE, "audio/ogg"), "audio/ogg")
    caplog.set_level(logging.ERROR)
    run_jobs()
    assert len(fake_twilio.media_fetches) == 1
    assert fake_twilio.storage.requests == []
    assert fake_openrouter.requests == []
    assert [sent["Body"] for sent in fake_twilio.sent] == [MEDIA_UNREADABLE]
    assert "resolves to 127.0.0.1: not a public address" in caplog.text


@pytest.mark.parametrize("location", ["http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                                      "http://metadata.google.internal/computeMetadata/v1/",
                                      "http://[fd00:ec2::254]/latest/meta-data/"])
def test_redirect_to_a_metadata_endpoint_is_refused_even_where_private_hosts_are_allowed(
        location, post_webhook, run_jobs, services, fake_twilio, fake_openrouter, caplog):
    services.processor.channel.media.hop_session = guarded_session(OutboundGuard(allow_private=True))
    fake_twilio.then(Scripted(307, "", {"Location": location}))
    send_media(post_webhook, fake_twilio.add_media(VOICE_NOTE, "audio/ogg"), "audio/ogg")
    caplog.set_level(logging.ERROR)
    run_jobs()
    assert fake_openrouter.requests == []
    assert [sent["Body"] for sent in fake_twilio.sent] == [MEDIA_UNREADABLE]
    assert "metadata" in caplog.text
