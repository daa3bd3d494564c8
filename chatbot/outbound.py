"""The outbound-address guard: a URL an outsider may have picked reaches only the public internet.

A media redirect (later a knowledge page or a tool's endpoint) could name the machine's own
services, the private network or the cloud's metadata endpoint. A `guarded_session` resolves each
host itself, checks every address the name resolves to, and connects only to one of those checked
addresses: urllib3 is handed the address, not the name, so a name that answers differently on a
second lookup (DNS rebinding) never gets that second lookup. Loopback, private and other
non-public addresses are refused unless ALLOW_PRIVATE_HOSTS is set (tests, intranets); link-local
addresses and the clouds' metadata endpoints are refused always.

The check sits in the connection itself, so every connection is checked, every redirect hop
included, whoever follows it; the session itself follows at most MAX_REDIRECTS. It takes no proxy
from the environment: a proxy would make the connection the guard is there to check.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError

MAX_REDIRECTS = 3
# The clouds' instance metadata services (AWS, GCP, Azure, Oracle, DigitalOcean on 169.254.169.254,
# AWS's IPv6 one, Alibaba's): they hand out credentials to whoever asks from the machine.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(address) for address in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))
METADATA_NAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog"})


class AddressRefused(Exception):
    """A request was about to go to an address the guard does not allow."""


@dataclass(frozen=True)
class OutboundGuard:
    """Which addresses a request may go to; `resolve` is socket.getaddrinfo's shape (tests pass their own)."""

    allow_private: bool = False
    resolve: Callable = socket.getaddrinfo

    def addresses(self, host: str, port: int) -> list[str]:
        """Return the addresses `host` resolves to when every one is allowed; else raise AddressRefused."""
        name = host.rstrip(".").lower()
        if name in METADATA_NAMES:
            raise AddressRefused(f"{host} is a cloud metadata endpoint")
        found = []
        for *_, sockaddr in self.resolve(name, port, type=socket.SOCK_STREAM):
            address = sockaddr[0]
            reason = self.refusal(address)
            if reason:
                raise AddressRefused(f"{host} resolves to {address}: {reason}")
            if address not in found:
                found.append(address)
        return found

    def refusal(self, address: str) -> str | None:
        """Say why a connection to `address` is refused, or None when it is allowed."""
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if ip in METADATA_ADDRESSES or ip.is_link_local:
            return "a link-local or cloud metadata address, never fetched"
        if (not ip.is_global or ip.is_multicast) and not self.allow_private:
            return "not a public address (ALLOW_PRIVATE_HOSTS=1 allows private ones)"
        return None


class _GuardedConnection:
    """Mixed into urllib3's connections: resolve and check the host, then connect to a checked address."""

    guard: OutboundGuard

    def _new_conn(self):
        try:
            addresses = self.guard.addresses(self._dns_host, self.port)
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error
        name = self._dns_host
        try:
            for address in addresses:
                # urllib3 connects to `_dns_host`; TLS still names the host, which is back by then.
                self._dns_host = address
                try:
                    return super()._new_conn()
                except ConnectTimeoutError as error:  # refused or timed out: the next address, as urllib3 does
                    failure = error
            raise failure
        finally:
            self._dns_host = name


def _guarded_pool(pool: type[HTTPConnectionPool], guard: OutboundGuard) -> type[HTTPConnectionPool]:
    # A pool builds its connections from its ConnectionCls with no room for an argument of ours, so
    # each guard gets subclasses that carry it.
    connection = type(f"Guarded{pool.ConnectionCls.__name__}", (_GuardedConnection, pool.ConnectionCls),
                      {"guard": guard})
    return type(f"Guarded{pool.__name__}", (pool,), {"ConnectionCls": connection})


class GuardedAdapter(HTTPAdapter):
    """A requests transport whose every new connection goes only to an address `guard` allows."""

    def __init__(self, guard: OutboundGuard, **kwargs):
        self.guard = guard
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _guarded_pool(HTTPConnectionPool, self.guard),
                                                   "https": _guarded_pool(HTTPSConnectionPool, self.guard)}


def guarded_session(guard: OutboundGuard, pool_size: int = 10) -> requests.Session:
    """Return a session for URLs an outsider may have picked: guarded, taking no proxy or .netrc from
    the environment, following at most MAX_REDIRECTS redirects."""
    session = requests.Session()
    session.trust_env = False
    session.max_redirects = MAX_REDIRECTS
    adapter = GuardedAdapter(guard, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def refused_in(error: BaseException) -> AddressRefused | None:
    """Return the guard's refusal somewhere in an exception's chain (requests wraps it), if any."""
    return next((link for link in chain_of(error) if isinstance(link, AddressRefused)), None)


def chain_of(error: BaseException) -> list[BaseException]:
    """Return an exception and the ones it was raised from, outermost first."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def unreachable(error: BaseException) -> str:
    """Say briefly why a connection failed: the root cause in the chain, without urllib3's wrapping."""
    chain = chain_of(error)
    names = {type(link).__name__ for link in chain}
    if "NameResolutionError" in names or "gaierror" in names:
        return "its name does not resolve"
    if "ConnectionRefusedError" in names:
        return "connection refused"
    if "SSLError" in names or "SSLCertVerificationError" in names:
        return "TLS certificate problem"
    if "InvalidSchema" in names or "InvalidURL" in names or "MissingSchema" in names:
        return "not a web address"
    lines = str(chain[-1]).strip().splitlines()
    return (lines[0] if lines else type(chain[-1]).__name__)[:120]
