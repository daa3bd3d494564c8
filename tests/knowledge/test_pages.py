"""Fetching pages and sitemaps from a real loopback site, through the outbound guard's session."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chatbot.knowledge.extract import Document, ExtractionError
from chatbot.knowledge.pages import Page, fetch_pages
from chatbot.outbound import OutboundGuard, guarded_session
from tests.support import free_port

MB = 1024 * 1024
HOURS = b"<html><head><title>Hours</title></head><body><main><h1>Hours</h1><p>We open at eight.</p></main></body>"
ABOUT = b"<html><head><title>About us</title></head><body><h1>About</h1><p>A cafe by the harbour.</p></body></html>"


def html(title: str) -> tuple[int, dict, bytes]:
    page = f"<html><head><title>{title}</title></head><body><p>All about {title}.</p></body></html>"
    return 200, {"Content-Type": "text/html; charset=utf-8"}, page.encode()


def urlset(*locations: str, tag: str = "urlset", entry: str = "url") -> tuple[int, dict, bytes]:
    entries = "".join(f"<{entry}><loc>{location}</loc></{entry}>" for location in locations)
    xml = f'<?xml version="1.0" encoding="UTF-8"?><{tag} xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
    return 200, {"Content-Type": "application/xml"}, f"{xml}{entries}</{tag}>".encode()


def sitemap_index(*locations: str) -> tuple[int, dict, bytes]:
    return urlset(*locations, tag="sitemapindex", entry="sitemap")


class Site:
    """A loopback web site: `routes` maps a path to (status, headers, body) or to a handler of its own."""

    def __init__(self):
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                site.requests.append((self.headers.get("Host", ""), self.path, self.headers.get("User-Agent", "")))
                answer = site.routes.get(self.path, (404, {"Content-Type": "text/html"}, b"<p>Not found</p>"))
                try:
                    if callable(answer):
                        answer(self)
                        return
                    status, headers, body = answer
                    self.send_response(status)
                    for name, value in {"Content-Length": str(len(body)), **headers}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the fetcher hung up on purpose: too slow or too large

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.routes: dict = {}
        self.requests: list[tuple[str, str, str]] = []
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]


def drip(handler: BaseHTTPRequestHandler) -> None:
    """Headers at once, then a byte every 50 ms: each read succeeds, the whole never arrives in time."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    for _ in range(100):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.05)


def late(handler: BaseHTTPRequestHandler) -> None:
    time.sleep(1.0)
    handler.send_response(200)
    handler.end_headers()


def endless(handler: BaseHTTPRequestHandler) -> None:
    """A page with no Content-Length that goes on and on."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.end_headers()
    for _ in range(64):
        handler.wfile.write(b"<p>" + b"x" * 64 * 1024 + b"</p>")


@pytest.fixture(scope="module")
def running_site():
    site = Site()
    yield site
    site.server.shutdown()
    site.server.server_close()


@pytest.fixture
def site(running_site):
    running_site.requests.clear()
    running_site.routes = {
        "/": (200, {"Content-Type": "text/html; charset=utf-8"}, HOURS),
        "/about": (200, {"Content-Type": "text/html"}, ABOUT),
        "/menu.txt": (200, {"Content-Type": "text/plain; charset=utf-8"}, "Tea – 2 EUR\r\nCake".encode()),
        "/forbidden": (403, {"Content-Type": "text/html"}, b"<p>No</p>"),
        "/old": (302, {"Location": "/about"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/logo.png": (200, {"Content-Type": "image/png"}, b"\x89PNG\r\n"),
        "/big": (200, {"Content-Type": "text/html"}, b"<p>" + b"x" * MB + b"</p>"),
        "/endless": endless,
        "/drip": drip,
        "/late": late,
    }
    return running_site


@pytest.fixture
def session():
    with guarded_session(OutboundGuard(allow_private=True)) as session:
        yield session


def reason(session, url: str, **limits) -> str:
    with pytest.raises(ExtractionError) as raised:
        fetch_pages(session, url, **limits)
    return str(raised.value)


def test_a_page_is_fetched_as_one_document_naming_the_product(site, session):
    fetched = fetch_pages(session, site.url + "/")
    assert fetched.pages == [Page(site.url + "/", Document("Hours", "# Hours\n\nWe open at eight."))]
    assert fetched.skipped == []
    assert site.requests == [(site.url[len("http://"):], "/", "whatsapp-assistant knowledge fetcher")]


def test_a_redirected_page_is_kept_under_the_address_it_ended_at(site, session):
    assert fetch_pages(session, site.url + "/old").pages[0].url == site.url + "/about"


def test_a_plain_text_page_is_kept_as_text_titled_by_its_address(site, session):
    assert fetch_pages(session, site.url + "/menu.txt").pages == [
        Page(site.url + "/menu.txt", Document("menu", "Tea – 2 EUR\nCake"))]


@pytest.mark.parametrize(("path", "expected"), [
    ("/forbidden", "403 from the site"),
    ("/nowhere", "404 from the site"),
    ("/loop", "too many redirects"),
    ("/logo.png", "not a web page (image/png)"),
])
def test_a_page_that_cannot_be_read_says_why_in_one_line(site, session, path, expected):
    assert reason(session, site.url + path) == expected


@pytest.mark.parametrize("path", ["/big", "/endless"])
def test_a_page_over_the_size_limit_is_cut_off(site, session, path):
    assert reason(session, site.url + path, max_bytes=MB) == "page over 1 MB (KNOWLEDGE_MAX_FILE_BYTES)"


@pytest.mark.parametrize("path", ["/drip", "/late"])
def test_a_site_that_is_too_slow_is_given_up_on_at_the_deadline(site, session, path):
    started = time.monotonic()
    assert reason(session, site.url + path, timeout=0.5) == "the site did not answer in 0.5 s"
    assert time.monotonic() - started < 0.9


def test_a_loopback_address_is_refused_by_the_guard_and_never_requested(site):
    with guarded_session(OutboundGuard(allow_private=False)) as session:
        assert reason(session, site.url + "/") == ("refused: 127.0.0.1 resolves to 127.0.0.1: not a public address "
                                                   "(ALLOW_PRIVATE_HOSTS=1 allows private ones)")
    assert site.requests == []


def test_a_site_that_is_not_there_cannot_be_reached(session):
    assert reason(session, f"http://127.0.0.1:{free_port()}/") == "could not reach the site: connection refused"


def test_a_sitemap_adds_the_pages_of_the_same_host_once_each(site, session):
    site.routes["/sitemap.xml"] = urlset(
        site.url + "/", site.url + "/about", site.url + "/about#team", site.url + "/menu.txt",
        site.url + "/missing", "http://elsewhere.example/page", site.url.replace("127.0.0.1", "localhost") + "/about")
    fetched = fetch_pages(session, site.url + "/", sitemap=True)
    assert [(page.url, page.document.title) for page in fetched.pages] == [
        (site.url + "/", "Hours"), (site.url + "/about", "About"), (site.url + "/menu.txt", "menu")]
    assert fetched.skipped == [(site.url + "/missing", "404 from the site")]
    assert site.paths() == ["/", "/sitemap.xml", "/about", "/menu.txt", "/missing"]
    assert {host for host, _, _ in site.requests} == {site.url[len("http://"):]}


def test_a_sitemap_index_is_followed_one_level(site, session):
    site.routes.update({
        "/index.xml": sitemap_index(site.url + "/pages.xml", site.url + "/nested.xml", site.url + "/gone.xml",
                                    "http://elsewhere.example/sitemap.xml"),
        "/pages.xml": urlset(site.url + "/about", site.url + "/menu.txt"),
        "/nested.xml": sitemap_index(site.url + "/pages.xml"),
    })
    fetched = fetch_pages(session, site.url + "/index.xml", sitemap=True)
    assert [page.url for page in fetched.pages] == [site.url + "/about", site.url + "/menu.txt"]
    assert fetched.skipped == [(site.url + "/nested.xml", "a sitemap index inside a sitemap index: not followed"),
                               (site.url + "/gone.xml", "404 from the site")]


def test_a_url_that_answers_xml_is_read_as_the_sitemap(site, session):
    site.routes["/feed"] = urlset(site.url + "/about")
    assert [page.url for page in fetch_pages(session, site.url + "/feed", sitemap=True).pages] == [site.url + "/about"]
    assert site.paths() == ["/feed", "/about"]


def test_a_sitemap_reads_at_most_max_pages_the_given_one_included(site, session):
    site.routes.update({f"/p{number}": html(f"Page {number}") for number in range(5)})
    site.routes["/sitemap.xml"] = urlset(*(f"{site.url}/p{number}" for number in range(5)))
    fetched = fetch_pages(session, site.url + "/", sitemap=True, max_pages=3)
    assert [page.url for page in fetched.pages] == [site.url + "/", site.url + "/p0", site.url + "/p1"]
    assert site.paths() == ["/", "/sitemap.xml", "/p0", "/p1"]


def test_a_missing_sitemap_is_noted_and_the_page_itself_kept(site, session):
    fetched = fetch_pages(session, site.url + "/", sitemap=True)
    assert [page.url for page in fetched.pages] == [site.url + "/"]
    assert fetched.skipped == [(site.url + "/sitemap.xml", "404 from the site")]


def test_a_sitemap_with_a_doctype_is_refused_unparsed(site, session):
    site.routes["/sitemap.xml"] = (200, {"Content-Type": "application/xml"},
                                   b'<?xml version="1.0"?><!DOCTYPE urlset [<!ENTITY a "aaaa">]>'
                                   b"<urlset><url><loc>&a;</loc></url></urlset>")
    fetched = fetch_pages(session, site.url + "/", sitemap=True)
    assert fetched.skipped == [(site.url + "/sitemap.xml", "sitemap refused: it has a DOCTYPE")]


def test_a_broken_sitemap_is_noted(site, session):
    site.routes["/sitemap.xml"] = (200, {"Content-Type": "text/xml"}, b"<urlset><url><loc>oops")
    skipped = fetch_pages(session, site.url + "/", sitemap=True).skipped
    assert [(url, reason.split(":")[0]) for url, reason in skipped] == [(site.url + "/sitemap.xml", "broken sitemap")]


def test_a_site_with_no_page_that_can_be_read_fails_with_the_first_reason(site, session):
    site.routes["/sitemap.xml"] = urlset(site.url + "/forbidden", site.url + "/logo.png")
    assert reason(session, site.url + "/missing", sitemap=True) == "404 from the site"


def test_a_single_page_that_is_xml_is_not_a_web_page(site, session):
    site.routes["/feed"] = urlset(site.url + "/about")
    assert reason(session, site.url + "/feed") == "not a web page (application/xml)"
