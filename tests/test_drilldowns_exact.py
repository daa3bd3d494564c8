"""Every dashboard figure's link opens exactly the rows it counts: same ids, same count, figure by figure.

A varied day of traffic (two numbers, every outcome, a burst, a retried answer, failed parts, an
ended conversation, playground trials and `flask chat` lines) is seeded with the ids each figure
must count; the dashboard, in a zone half an hour off UTC, is then followed link by link.
"""
from __future__ import annotations

import html
import re
from datetime import timedelta
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest

from chatbot import clock
from chatbot.models import Conversation, Message, utcnow
from chatbot.reports import PERIODS, bucket_starts
from tests.conftest import log_in
from tests.test_dashboard_figures import answered, asked, charts

SALES = "whatsapp:+15557770001"
ZONE = "Asia/Kolkata"


@pytest.fixture
def day(services):
    """The traffic, and by figure the ids of the rows it must count."""
    now = utcnow()
    hours = lambda n: now - timedelta(hours=n)  # noqa: E731
    ann = Conversation.create(user_phone="whatsapp:+15550000001", profile_name="Ann")
    bob = Conversation.create(user_phone="whatsapp:+15550000002", profile_name="Bob")
    cyd = Conversation.create(user_phone="whatsapp:+15550000003", profile_name="Cyd", number=SALES)
    dan = Conversation.create(user_phone="whatsapp:+15550000004", profile_name="Dan", is_active=False)
    # `flask chat --phone` lines in a customer's number, alone in a conversation: no customer here.
    fay = Conversation.create(user_phone="whatsapp:+15550000006")
    trial = Conversation.create(user_phone="playground:ops")
    console = Conversation.create(user_phone="console:local")
    figures: dict[str, set[int]] = {name: set() for name in (
        "answered", "failed", "undelivered", "rate_limited", "refused", "waiting", "timed", "send_failed",
        "outside_window", "twilio:63016", "twilio:none")}
    refused_by_status: dict[str, set[int]] = {}

    def question(conversation, at, status, outcome):
        message = asked(conversation, at, status)
        figures[outcome].add(message.id)
        return message

    # Ann: timed, not sent, sent but undelivered (a code), an AI failure with its apology.
    first = answered(question(ann, hours(3), "answered", "answered"), took=4, latency=900)
    figures["timed"].add(first.id)
    unsent = answered(question(ann, hours(4), "answered", "undelivered"), status="send_failed")
    figures["send_failed"].add(unsent.id)
    coded = answered(question(ann, hours(5), "answered", "undelivered"), took=12,
                     parts=[("delivered", None), ("undelivered", 63016), ("failed", 63016)])
    figures["timed"].add(coded.id)
    figures["twilio:63016"].add(coded.id)
    answered(question(ann, hours(6), "failed", "failed"), took=1)
    # A `flask chat` line in Ann's own conversation: no customer message, yet her conversation stays hers.
    answered(asked(ann, hours(3), "answered", origin="console"), took=2, origin="console")

    # Bob: held back, refused three ways, waiting twice, a burst answered once, a retried answer.
    question(bob, hours(3), "rate_limited", "rate_limited")
    for status, at in (("not_allowed", 3), ("over_budget", 4), ("opted_out", 4)):
        refused_by_status[status] = {question(bob, hours(at), status, "refused").id}
    question(bob, hours(2), "pending", "waiting")
    question(bob, hours(2), "waiting", "waiting")
    question(bob, hours(7), "answered", "answered")
    burst_answer = answered(question(bob, hours(7), "answered", "answered"), took=9)
    figures["timed"].add(burst_answer.id)
    retried = question(bob, hours(8), "answered", "answered")
    answered(retried, status="superseded", took=1)
    figures["timed"].add(answered(retried, took=15).id)
    # A part failed without a code, on an answer whose question is answered all the same.
    nocode = answered(question(bob, hours(9), "answered", "undelivered"), parts=[("failed", None)])
    figures["twilio:none"].add(nocode.id)

    # Cyd, on the Sales number: timed, held outside the window, and two questions either side of a
    # bucket's start (an hour of the zone, half past a UTC hour).
    figures["timed"].add(answered(question(cyd, hours(5), "answered", "answered"), took=30).id)
    held = answered(question(cyd, hours(6), "answered", "undelivered"), status="outside_window")
    figures["outside_window"].add(held.id)
    boundary = bucket_starts(PERIODS["24h"], now, ZoneInfo(ZONE))[12]
    on_start = question(cyd, boundary, "answered", "answered")
    just_before = question(cyd, boundary - timedelta(microseconds=1), "answered", "answered")

    # Dan's conversation has ended: his message counts, his conversation is not active.
    question(dan, hours(10), "answered", "answered")
    asked(fay, hours(2), "answered", origin="console")
    answered(asked(trial, hours(2), "answered", origin="playground"), took=5, cost=0.5, origin="playground")
    answered(asked(console, hours(2), "answered", origin="console"), took=5, origin="console")
    # Before the period: counted in none of its figures.
    answered(asked(ann, now - timedelta(hours=30), "answered"), took=3)

    figures["inbound"] = set().union(*(figures[name] for name in (
        "answered", "failed", "undelivered", "rate_limited", "refused", "waiting")))
    figures["failed_all"] = figures["failed"] | figures["undelivered"]
    sales = {message.id for message in Message.select().where(Message.conversation == cyd)}
    return {"figures": figures, "refused": refused_by_status, "sales": sales,
            "active": {ann.id, bob.id, cyd.id}, "bucket": (on_start, just_before)}


@pytest.fixture
def browser(app_with, admin_user):
    """A logged-in client of a deployment whose ADMIN_TIMEZONE is half an hour off UTC."""
    client = app_with(admin_timezone=ZONE).test_client()
    assert log_in(client).status_code == 302
    return client


def get(client, link: str) -> str:
    response = client.get(html.unescape(link))
    assert response.status_code == 200, link
    return response.get_data(as_text=True)


def listed(client, link: str, kind: str = "message") -> set:
    """The ids a list shows (every row on one page), checked against the count it names."""
    page = get(client, link + "&page_size=100")
    ids = set(re.findall(rf"/admin/{kind}/details/\?id=([\w-]+)", page))
    count = re.search(r"List \((\d+)\)", page)
    assert (int(count.group(1)) if count else 0) == len(ids), link
    return {int(found) for found in ids} if kind == "message" else ids


def tile(page: str, tile_id: str) -> tuple[str, str]:
    """A tile's figure, as shown, and its link."""
    link, value = re.search(rf'id="{tile_id}" href="([^"]+)">\s*([^<]+?)\s*<', page).groups()
    return value, link


def link_named(page: str, text: str) -> tuple[int, str]:
    """The link whose text is `text: N` (or `N text`), and its N."""
    found = re.search(rf'<a href="([^"]+)"[^>]*>{re.escape(text)}: (\d+)</a>', page)
    if found:
        return int(found.group(2)), found.group(1)
    found = re.search(rf'<a href="([^"]+)"[^>]*>(\d+) {re.escape(text)}</a>', page)
    return int(found.group(2)), found.group(1)


@pytest.mark.postgres
def test_each_tile_opens_exactly_the_messages_it_counts(browser, day):
    page = get(browser, "/admin/")
    figures = day["figures"]
    for tile_id, figure in (("inbound", "inbound"), ("answered", "answered"), ("failed", "failed_all"),
                            ("undelivered", "undelivered"), ("rate-limited", "rate_limited")):
        count, link = tile(page, tile_id)
        assert int(count) == len(figures[figure]) and listed(browser, link) == figures[figure], tile_id
    for outcome in ("answered", "failed", "undelivered", "rate_limited", "refused", "waiting"):
        link = re.search(rf'<a href="([^"]+)" id="outcome-{outcome}">[^:]+: (\d+)</a>', page)
        assert int(link.group(2)) == len(figures[outcome]), outcome
        assert listed(browser, link.group(1)) == figures[outcome], outcome
    # Each kind of refusal on its own.
    for status, words in (("not_allowed", "not allowed"), ("over_budget", "over budget"), ("opted_out", "opted out")):
        link = re.search(rf'<a href="([^"]+)">{words}</a>', page).group(1)
        assert listed(browser, link) == day["refused"][status], status


@pytest.mark.postgres
def test_reply_times_and_errors_open_the_answers_they_count(browser, day):
    page = get(browser, "/admin/")
    figures = day["figures"]
    count, link = link_named(page, "answers")
    assert count == len(figures["timed"]) and listed(browser, link) == figures["timed"]
    assert tile(page, "reply-p50")[1] == tile(page, "reply-p95")[1] == link
    for label, figure in (("AI failure", "failed"), ("could not be sent", "send_failed"),
                          ("outside the 24-hour window", "outside_window"), ("Twilio 63016", "twilio:63016"),
                          ("Twilio (no code)", "twilio:none")):
        count, link = link_named(page, label)
        assert count == len(figures[figure]) and listed(browser, link) == figures[figure], label


@pytest.mark.postgres
def test_active_conversations_open_the_conversations_counted(browser, day):
    count, link = tile(get(browser, "/admin/"), "active-conversations")
    assert count == "3" and listed(browser, link, "conversation") == {str(key) for key in day["active"]}
    count, link = tile(get(browser, f"/admin/?number={quote(SALES)}"), "active-conversations")
    assert count == "1" and len(listed(browser, link, "conversation")) == 1


@pytest.mark.postgres
def test_one_numbers_figures_open_that_numbers_rows(browser, day):
    page = get(browser, f"/admin/?number={quote(SALES)}&period=7d")
    count, link = tile(page, "inbound")
    assert count == "4" and listed(browser, link) == {i for i in day["figures"]["inbound"] if i in day["sales"]}
    default = get(browser, "/admin/?number=")
    count, link = tile(default, "inbound")
    assert int(count) == len(day["figures"]["inbound"]) - 4
    assert listed(browser, link) == day["figures"]["inbound"] - day["sales"]


@pytest.mark.postgres
def test_a_bar_opens_its_own_hour(browser, day):
    data = charts(get(browser, "/admin/"))
    on_start, just_before = day["bucket"]
    answered_bars = data["outcomes"]["answered"]
    hour = data["labels"].index(clock.in_zone(on_start.created_at, ZONE).strftime("%H:%M"))
    assert on_start.id in listed(browser, answered_bars["bucket_links"][hour])
    assert just_before.id not in listed(browser, answered_bars["bucket_links"][hour])
    assert just_before.id in listed(browser, answered_bars["bucket_links"][hour - 1])
    # Every bar, of every outcome, opens as many rows as it is tall.
    for outcome, series in data["outcomes"].items():
        for height, link in zip(series["counts"], series["bucket_links"], strict=True):
            if height:
                assert len(listed(browser, link)) == height, outcome
    assert sum(data["outcomes"]["answered"]["counts"]) == len(day["figures"]["answered"])


@pytest.mark.postgres
def test_the_reply_time_line_breaks_where_no_answer_was_timed(browser, day):
    data = charts(get(browser, "/admin/"))
    series = data["reply_times"]["end_to_end_p50"]
    assert None in series and sum(value is not None for value in series) >= 4
    script = get(browser, "/static/admin/dashboard.js")
    assert "spanGaps: true" not in script


def test_a_figure_the_list_does_not_know_is_named_as_such(browser, day):
    page = get(browser, "/admin/message/?flt0_figure_equals=everything")
    assert "Invalid Filter Value: everything" in page
