"""Fetch a web page, or the pages a site's sitemap lists, for the knowledge index.

Every request goes through the session it is given (the outbound guard's), so a page, a redirect or a
sitemap entry can reach only the addresses the guard allows. A body streams in within one deadline
and one byte cap, as media downloads do: a site that drips bytes or sends a huge page is cut off, not
waited on. Each failure is one line for the operator; in a sitemap, a page that fails is listed as
skipped and the others are kept.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from urllib.parse import urldefrag, urlsplit

import requests
import urllib3
from lxml import etree

from chatbot.knowledge.extract import (
    Document,
    ExtractionError,
    decode_text,
    extract_html,
    short,
    url_title,
)
from chatbot.media import megabytes
from chatbot.outbound import AddressRefused, refused_in, unreachable

USER_AGENT = "whatsapp-assistant knowledge fetcher"
ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,application/xml;q=0.8,text/xml;q=0.8"
READ_CHUNK = 64 * 1024
# A socket timeout of 0 would make reads non-blocking; this little is "the deadline has come".
MIN_WAIT = 0.01
HTML_TYPES = {"text/html", "application/xhtml+xml"}
TEXT_TYPE = "text/plain"
# Only a charset the site states: requests' ISO-8859-1 default for text/* would override <meta charset>.
CHARSET = re.compile(r"charset=[\"']?([\w.:-]+)", re.IGNORECASE)
XML_TYPES = {"application/xml", "text/xml"}
# A DOCTYPE is how entity bombs and external entities get into XML; a sitemap never needs one.
DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
SITEMAP_PARSER = dict(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                      remove_comments=True, remove_pis=True)


@dataclass(frozen=True)
class Page:
    url: str
    document: Document


@dataclass(frozen=True)
class Fetched:
    pages: list[Page]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Body:
    """What a URL answered: the address it ended at (after redirects), its bare type and charset."""

    url: str
    content_type: str
    charset: str
    data: bytes


def fetch_pages(session: requests.Session, url: str, sitemap: bool = False, max_pages: int = 50,
                max_bytes: int = 10 * 1024 * 1024, timeout: float = 15) -> Fetched:
    """Fetch the page at `url`; with `sitemap`, also (or instead, for a sitemap's own URL) the pages of
    its host that the site's sitemap lists, at most `max_pages` in all."""
    fetcher = Fetcher(session, max_bytes, timeout)
    if not sitemap:
        return Fetched([fetcher.page(url)])
    return SiteReader(fetcher, url, max_pages).read()


class Fetcher:
    """GETs one URL at a time, each within `timeout` seconds and `max_bytes`."""

    def __init__(self, session: requests.Session, max_bytes: int, timeout: float):
        self.session = session
        self.max_bytes = max_bytes
        self.timeout = timeout

    def page(self, url: str) -> Page:
        """Return the page at `url` as a document."""
        return as_page(self.get(url))

    def get(self, url: str, any_type: bool = False) -> Body:
        """Return what `url` answers with a 200, its body read whole; else raise ExtractionError. A
        body not of a web page's type is refused unread unless `any_type` (sitemaps come as anything)."""
        ends = time.monotonic() + self.timeout
        try:
            with self.session.get(url, stream=True, timeout=(self.timeout, self.timeout),
                                  headers={"User-Agent": USER_AGENT, "Accept": ACCEPT}) as response:
                if response.status_code != 200:
                    raise ExtractionError(f"{response.status_code} from the site")
                content_type = response.headers.get("Content-Type", "")
                bare_type = content_type.split(";", 1)[0].strip().lower()
                if not any_type and bare_type not in HTML_TYPES | XML_TYPES | {TEXT_TYPE}:
                    raise ExtractionError(f"not a web page ({bare_type or 'no Content-Type'})")
                charset = CHARSET.search(content_type)
                return Body(response.url, bare_type, charset.group(1) if charset else "", self._read(response, ends))
        except AddressRefused as error:
            raise ExtractionError(f"refused: {error}") from error
        except requests.TooManyRedirects as error:
            raise ExtractionError("too many redirects") from error
        except (requests.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError) as error:
            raise self._too_slow() from error
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            refusal = refused_in(error)
            if refusal is not None:
                raise ExtractionError(f"refused: {refusal}") from error
            raise ExtractionError(f"could not reach the site: {unreachable(error)}") from error

    def _read(self, response: requests.Response, ends: float) -> bytes:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise self._too_large()
        body = bytearray()
        while chunk := self._read_some(response, ends):
            body += chunk
            if len(body) > self.max_bytes:
                # Stop here: the rest of an oversized page is never downloaded.
                raise self._too_large()
            if time.monotonic() >= ends:
                raise self._too_slow()
        return bytes(body)

    def _read_some(self, response: requests.Response, ends: float) -> bytes:
        """Return the next bytes that arrive, waiting no later than `ends` for them."""
        connection = response.raw.connection
        if connection is not None and connection.sock is not None:
            # A site that drips a byte at a time never lets a fixed read timeout fire: each read waits
            # at most what is left of the deadline.
            connection.sock.settimeout(max(MIN_WAIT, min(self.timeout, ends - time.monotonic())))
        # read1 returns what has arrived; iter_content would wait to fill each whole chunk.
        return response.raw.read1(READ_CHUNK, decode_content=True)

    def _too_slow(self) -> ExtractionError:
        return ExtractionError(f"the site did not answer in {self.timeout:g} s")

    def _too_large(self) -> ExtractionError:
        return ExtractionError(f"page over {megabytes(self.max_bytes)} MB (KNOWLEDGE_MAX_FILE_BYTES)")


class SiteReader:
    """Reads a site from its sitemap: the given page first (unless it is the sitemap), then the pages
    on its host that the sitemap lists, one sitemap index level deep."""

    def __init__(self, fetcher: Fetcher, url: str, max_pages: int):
        self.fetcher = fetcher
        self.url = url
        self.max_pages = max(1, max_pages)
        self.hosts = {host_of(url)}
        self.pages: list[Page] = []
        self.skipped: list[tuple[str, str]] = []
        self.seen: set[str] = set()

    def read(self) -> Fetched:
        parts = urlsplit(self.url)
        if parts.path.lower().endswith(".xml"):
            locations = self._sitemap(self.url)
        else:
            locations = self._first_page()
            if locations is None:
                locations = self._sitemap(f"{parts.scheme}://{parts.netloc}/sitemap.xml")
        for location in locations:
            # Every page asked for counts, read or not: the limit bounds the time a sync takes.
            if len(self.seen) >= self.max_pages:
                break
            self._page(location)
        if not self.pages:
            reason = self.skipped[0][1] if self.skipped else f"the sitemap lists no pages on {host_of(self.url)}"
            raise ExtractionError(reason)
        return Fetched(self.pages, self.skipped)

    def _first_page(self) -> list[str] | None:
        """Read the given URL; return its entries when it turned out to be a sitemap, else None."""
        try:
            body = self.fetcher.get(self.url, any_type=True)
        except ExtractionError as error:
            self.seen.add(without_fragment(self.url))
            self.skipped.append((self.url, str(error)))
            return None
        if is_sitemap(body):
            return self._sitemap(self.url, body)
        self.seen.add(without_fragment(self.url))
        # A site that moves example.com to www.example.com lists its pages under the second name.
        self.hosts.add(host_of(body.url))
        self._keep(self.url, body)
        return None

    def _sitemap(self, url: str, body: Body | None = None) -> list[str]:
        """Return the page URLs that the sitemap at `url` (already fetched as `body`, if given) lists,
        or its child sitemaps list; note it as skipped when it cannot be read."""
        try:
            return self._entries(body or self.fetcher.get(url, any_type=True))
        except ExtractionError as error:
            self.skipped.append((url, str(error)))
            return []

    def _entries(self, body: Body) -> list[str]:
        kind, locations = parse_sitemap(body.data)
        if kind == "urlset":
            return locations
        pages: list[str] = []
        for child in self._on_site(locations):
            try:
                child_kind, child_locations = parse_sitemap(self.fetcher.get(child, any_type=True).data)
            except ExtractionError as error:
                self.skipped.append((child, str(error)))
                continue
            if child_kind != "urlset":
                # One level of index is what sites use; following more would let a sitemap loop.
                self.skipped.append((child, "a sitemap index inside a sitemap index: not followed"))
                continue
            pages += child_locations
            if len(pages) >= self.max_pages:
                break
        return pages

    def _on_site(self, locations: list[str]) -> list[str]:
        return [location for location in locations
                if urlsplit(location).scheme in ("http", "https") and host_of(location) in self.hosts]

    def _page(self, location: str) -> None:
        key = without_fragment(location)
        if key in self.seen or not self._on_site([location]):
            return
        self.seen.add(key)
        try:
            self._keep(location, self.fetcher.get(location))
        except ExtractionError as error:
            self.skipped.append((location, str(error)))

    def _keep(self, url: str, body: Body) -> None:
        try:
            self.pages.append(as_page(body))
        except ExtractionError as error:
            self.skipped.append((url, str(error)))


def as_page(body: Body) -> Page:
    """Read a fetched body as a page: HTML through extract_html, plain text as it is."""
    if body.content_type not in HTML_TYPES | {TEXT_TYPE}:
        raise ExtractionError(f"not a web page ({body.content_type or 'no Content-Type'})")
    text = decoded(body)
    if body.content_type == TEXT_TYPE:
        if not text.strip():
            raise ExtractionError("no readable text on the page")
        return Page(body.url, Document(url_title(body.url), text.replace("\r\n", "\n").strip()))
    return Page(body.url, extract_html(text, body.url))


def decoded(body: Body) -> bytes | str:
    """Decode by the charset the site declared; without one, HTML goes on as bytes, for its <meta charset>."""
    if body.charset:
        try:
            return body.data.decode(body.charset, errors="replace")
        except LookupError:
            pass
    if body.content_type == TEXT_TYPE:
        return decode_text(body.data)
    return body.data


def is_sitemap(body: Body) -> bool:
    if body.content_type in XML_TYPES:
        return True
    start = body.data[:512].lstrip()
    return start.startswith(b"<?xml") and (b"<urlset" in start or b"<sitemapindex" in start)


def parse_sitemap(data: bytes) -> tuple[str, list[str]]:
    """Return a sitemap's kind ("urlset" or "sitemapindex") and its <loc> URLs, in order."""
    if DOCTYPE.search(data):
        raise ExtractionError("sitemap refused: it has a DOCTYPE")
    try:
        root = etree.fromstring(data, etree.XMLParser(**SITEMAP_PARSER))
    except etree.XMLSyntaxError as error:
        raise ExtractionError(f"broken sitemap: {short(error)}") from error
    kind = etree.QName(root).localname
    if kind == "urlset":
        entries = root.iterfind("{*}url/{*}loc")
    elif kind == "sitemapindex":
        entries = root.iterfind("{*}sitemap/{*}loc")
    else:
        raise ExtractionError(f"not a sitemap: its root is <{kind}>")
    return kind, [(entry.text or "").strip() for entry in entries if (entry.text or "").strip()]


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def without_fragment(url: str) -> str:
    return urldefrag(url)[0]
