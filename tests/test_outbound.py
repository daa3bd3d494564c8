"""The outbound-address guard: only allowed addresses are connected to, the one that was checked."""
from __future__ import annotations

import socket

import pytest
import requests

from chatbot.outbound import MAX_REDIRECTS, AddressRefused, OutboundGuard, guarded_session
from tests.fakes import Scripted


def resolving_to(*addresses: str, calls: list | None = None):
    """A resolver (socket.getaddrinfo's shape) that answers `addresses` for any name."""
    def resolve(host, port, type=0):
        if calls is not None:
            calls.append(host)
        return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (address, port)) for address in addresses]
    return resolve


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "100.64.0.1",
                                     "0.0.0.0", "fc00::1", "::ffff:10.0.0.1", "224.0.0.1"])
def test_private_addresses_are_refused_unless_allowed(address):
    assert "ALLOW_PRIVATE_HOSTS" in OutboundGuard().refusal(address)
    assert OutboundGuard(allow_private=True).refusal(address) is None


@pytest.mark.parametrize("address", ["169.254.169.254", "169.254.170.2", "169.254.1.1", "fe80::1", "fd00:ec2::254",
                                     "100.100.100.200", "::ffff:169.254.169.254"])
def test_link_local_and_metadata_addresses_are_refused_always(address):
    assert "never fetched" in OutboundGuard().refusal(address)
    assert "never fetched" in OutboundGuard(allow_private=True).refusal(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_are_allowed(address):
    assert OutboundGuard().refusal(address) is None


@pytest.mark.parametrize("name", ["metadata.google.internal", "METADATA.google.internal.", "metadata"])
def test_metadata_names_are_refused_without_being_looked_up(name):
    calls = []
    with pytest.raises(AddressRefused, match="metadata"):
        OutboundGuard(allow_private=True, resolve=resolving_to("93.184.216.34", calls=calls)).addresses(name, 80)
    assert calls == []


def test_a_name_with_any_private_address_is_refused():
    guard = OutboundGuard(resolve=resolving_to("93.184.216.34", "127.0.0.1"))
    with pytest.raises(AddressRefused, match="resolves to 127.0.0.1"):
        guard.addresses("mixed.example", 443)


def test_a_refused_address_is_never_connected_to(fake_twilio):
    with pytest.raises(AddressRefused, match="not a public address"):
        guarded_session(OutboundGuard()).get(fake_twilio.url + "/anything", timeout=5)
    assert fake_twilio.requests == []


def test_the_connection_goes_to_the_address_that_was_checked_looked_up_once(fake_twilio):
    """A second look-up (DNS rebinding) could answer another address: there is none to answer."""
    calls = []
    port = fake_twilio.server.server_address[1]
    guard = OutboundGuard(allow_private=True, resolve=resolving_to("127.0.0.1", calls=calls))
    fake_twilio.then(Scripted(200, "found"))
    response = guarded_session(guard).get(f"http://media.example:{port}/epoch{fake_twilio.epoch}/file", timeout=5)
    assert response.text == "found"
    assert calls == ["media.example"]
    assert fake_twilio.requests[-1].headers["Host"] == f"media.example:{port}"


def test_a_guarded_session_follows_at_most_three_redirects(fake_twilio):
    fake_twilio.then(*[Scripted(302, "", {"Location": fake_twilio.url + "/again"})] * (MAX_REDIRECTS + 1))
    with pytest.raises(requests.TooManyRedirects):
        guarded_session(OutboundGuard(allow_private=True)).get(fake_twilio.url + "/start", timeout=5)
    assert len(fake_twilio.requests) == MAX_REDIRECTS + 1
