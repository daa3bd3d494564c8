"""The admin dashboard's figures, on a day of traffic whose answers are known, on SQLite and Postgres."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlparse
from zoneinfo import ZoneInfo

import pytest
from rq import Worker

from chatbot.jobs import queueing
from chatbot.models import Conversation, Message, ReplyPart, db, migrations, utcnow
from chatbot.reports import PERIODS, bucket_labels, bucket_starts, compute_stats
from chatbot.web.security import DASHBOARD_CSP
from tests.conftest import log_in

SALES = "whatsapp:+15557770001"
M1, M2 = "openai/gpt-4o-mini", "anthropic/claude-3.5-sonnet"


def asked(conversation, at, status, content="question", **fields) -> Message:
    return Message.create(conversation=conversation, role="user", content=content, status=status,
                          created_at=at, **fields)


def answered(question, status="sent", took=None, model=None, tokens=(None, None), cost=None, latency=None,
             parts=(), **fields) -> Message:
    """The answer to `question`; `took` seconds after it Twilio took its last part (None: never)."""
    prompt, completion = tokens
    answer = Message.create(
        conversation=question.conversation_id, role="assistant", content="answer", status=status,
        reply_to=question, created_at=question.created_at + timedelta(seconds=1), model=model,
        prompt_tokens=prompt, completion_tokens=completion,
        total_tokens=None if prompt is None else prompt + completion, cost=cost, latency_ms=latency,
        sent_at=None if took is None else question.created_at + timedelta(seconds=took), **fields)
    for number, (part_status, code) in enumerate(parts, start=1):
        ReplyPart.create(message=answer, number=number, twilio_sid=f"SM{answer.id:016x}{number:016x}",
                         status=part_status, error_code=code)
    return answer


@pytest.fixture
def traffic(services):
    """A day of traffic with known figures (see each test), plus older messages and a playground trial."""
    now = utcnow()
    hours = lambda n: now - timedelta(hours=n)  # noqa: E731
    ann = Conversation.create(user_phone="whatsapp:+15550000001", profile_name="Ann")
    bob = Conversation.create(user_phone="whatsapp:+15550000002", profile_name="Bob")
    cyd = Conversation.create(user_phone="whatsapp:+15550000003", profile_name="Cyd", number=SALES)
    trial = Conversation.create(user_phone="playground:ops")
    answered(asked(ann, hours(2), "answered"), took=4, model=M1, tokens=(10, 5), cost=0.01, latency=1000)
    answered(asked(ann, hours(3), "answered"), took=10, model=M1, tokens=(20, 10), cost=0.02, latency=2000)
    answered(asked(ann, hours(3), "failed", error="OpenRouter 402"), took=1)  # the apology
    answered(asked(bob, hours(5), "answered"), status="send_failed", model=M2, tokens=(100, 50), latency=3000)
    answered(asked(bob, hours(5), "answered"), took=20, model=M2, tokens=(40, 20), cost=0.04, latency=4000,
             parts=[("undelivered", 63016)])
    answered(asked(bob, hours(2), "answered"), status="outside_window")
    asked(bob, hours(2), "rate_limited")
    asked(bob, hours(2), "not_allowed")
    asked(bob, hours(1), "pending")
    answered(asked(cyd, hours(2), "answered"), took=30, model=M1, tokens=(1, 1), cost=0.5, latency=500)
    # Older: in 7 days, in 30 days, in none; and an operator's playground trial, counted nowhere.
    answered(asked(cyd, now - timedelta(days=3), "answered"), took=6, model=M1, tokens=(1, 1), latency=600)
    asked(cyd, now - timedelta(days=20), "rate_limited")
    answered(asked(ann, now - timedelta(days=40), "answered"), took=99, model=M1, tokens=(1, 1), latency=99)
    answered(asked(trial, hours(2), "answered", origin="playground"), took=50, model=M1, tokens=(9, 9),
             latency=9000, origin="playground")


def page_of(client, **query) -> str:
    response = client.get("/admin/", query_string=query)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def tile(page: str, tile_id: str) -> str:
    return re.search(rf'id="{tile_id}"[^>]*>\s*(.*?)\s*<', page).group(1)


def charts(page: str) -> dict:
    island = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', page, re.S)
    return json.loads(island.group(1))


@pytest.mark.postgres
def test_tiles_count_each_inbound_message_once_by_what_became_of_it(operator, traffic):
    page = page_of(operator)
    assert [tile(page, name) for name in ("inbound", "answered", "failed", "undelivered", "rate-limited",
                                          "active-conversations")] == ["10", "3", "4", "3", "1", "3"]
    # End to end: 4, 10, 20 and 30 s; the AI alone: 0.5, 1, 2, 3 and 4 s (nearest rank).
    assert tile(page, "reply-p50") == "10.0 s" and tile(page, "reply-p95") == "30.0 s"
    assert "AI 2.0 s" in page and "AI alone 4.0 s" in page


@pytest.mark.postgres
def test_charts_hold_every_bucket_by_outcome_and_add_up_to_the_tiles(operator, traffic):
    data = charts(page_of(operator))
    assert len(data["labels"]) == 24
    totals = {outcome: sum(series["counts"]) for outcome, series in data["outcomes"].items()}
    assert totals == {"answered": 3, "failed": 1, "undelivered": 3, "rate_limited": 1, "refused": 1, "waiting": 1}
    assert all(len(series) == 24 for series in data["reply_times"].values())
    # Per hour, end to end: 4 and 30 s two hours ago, 10 s three hours ago, 20 s five hours ago.
    timed = {name: sorted(value for value in series if value is not None)
             for name, series in data["reply_times"].items()}
    # SQLite reckons times between dates in fractions of a day: right to well under a millisecond.
    assert timed["end_to_end_p50"] == pytest.approx([4000, 10000, 20000], abs=1)
    assert timed["end_to_end_p95"] == pytest.approx([10000, 20000, 30000], abs=1)
    assert timed["ai_p50"] == [500, 2000, 3000]


@pytest.mark.postgres
def test_errors_are_counted_by_kind(operator, traffic):
    data = charts(page_of(operator))
    assert sorted((error["kind"], error["count"]) for error in data["errors"]) == [
        ("Twilio 63016", 1), ("ai_failure", 1), ("outside_window", 1), ("send_failed", 1)]


@pytest.mark.postgres
def test_tokens_and_cost_per_model(operator, traffic):
    page = page_of(operator)
    assert [(use["model"], use["prompt_tokens"], use["completion_tokens"]) for use in charts(page)["models"]] == [
        (M2, 140, 70), (M1, 31, 16)]
    table = page.split('id="model-use"')[1].split("</table>")[0]
    assert re.search(r"\$0\.0400 <small[^>]*>\+ 1 unknown", table) and "$0.5300" in table


@pytest.mark.postgres
def test_longer_periods_take_older_messages_in(operator, traffic):
    week, month = page_of(operator, period="7d"), page_of(operator, period="30d")
    assert (tile(week, "inbound"), tile(week, "answered"), tile(week, "rate-limited")) == ("11", "4", "1")
    assert (tile(month, "inbound"), tile(month, "rate-limited")) == ("12", "2")
    assert len(charts(week)["labels"]) == 7 and len(charts(month)["labels"]) == 30
    # End to end over the week: 4, 6, 10, 20, 30 s.
    assert (tile(week, "reply-p50"), tile(week, "reply-p95")) == ("10.0 s", "30.0 s")
    assert 'data-points="7"' in week


@pytest.mark.postgres
def test_one_numbers_figures(operator, traffic):
    sales, default = page_of(operator, number=SALES), page_of(operator, number="")
    assert (tile(sales, "inbound"), tile(sales, "answered"), tile(sales, "reply-p50")) == ("1", "1", "30.0 s")
    assert (tile(default, "inbound"), tile(default, "failed"), tile(default, "active-conversations")) == ("9", "4", "2")


@pytest.mark.postgres
def test_every_figure_links_to_the_list_behind_it(operator, traffic):
    page = page_of(operator, number=SALES, period="7d")
    # The period's start in ADMIN_TIMEZONE (UTC here), its offset named; tests/test_drilldowns_exact.py
    # follows each link.
    start = compute_stats(number=SALES, period="7d").bucket_starts[0].strftime("%Y-%m-%d %H:%M:%S+00:00")
    link = re.search(r'id="rate-limited" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert urlparse(link).path == "/admin/message/"
    assert parse_qs(urlparse(link).query) == {"flt0_figure_equals": ["rate_limited"],
                                              "flt1_created_at_from": [start],
                                              "flt3_number_equals": [SALES]}
    data = charts(page)
    assert all(series["link"] for series in data["outcomes"].values())
    assert all(len(series["bucket_links"]) == 7 for series in data["outcomes"].values())
    assert all(error["link"] for error in data["errors"])
    default_link = re.search(r'id="answered" href="([^"]+)"', page_of(operator, number="")).group(1)
    assert "flt3_number_equals=default" in default_link


@pytest.mark.postgres
def test_days_are_counted_in_the_admin_time_zone(app_with, admin_user):
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    # 02:00 UTC two days ago: the evening before in New York, the same morning in Kolkata.
    late = asked(Conversation.create(user_phone="whatsapp:+15550000001"), midnight - timedelta(days=2, hours=-2),
                 "rate_limited")
    for zone, day in (("UTC", 2), ("America/New_York", 3), ("Asia/Kolkata", 2)):
        client = app_with(admin_timezone=zone).test_client()
        assert log_in(client).status_code == 302
        page = page_of(client, period="7d")
        data = charts(page)
        assert data["zone"] == zone and f'<span id="time-zone">{zone}</span>' in page
        expected = (midnight - timedelta(days=day)).strftime("%Y-%m-%d")
        assert data["outcomes"]["rate_limited"]["counts"][data["labels"].index(expected)] == 1, zone
    assert late.created_at.hour == 2


def test_hours_and_days_shift_with_the_zone():
    now = datetime(2026, 3, 10, 12, 30)  # New York already on summer time (UTC-4); Kolkata is UTC+5:30.
    new_york = bucket_starts(PERIODS["7d"], now, ZoneInfo("America/New_York"))
    assert new_york[-1] == datetime(2026, 3, 10, 4, 0) and new_york[0] == datetime(2026, 3, 4, 5, 0)
    kolkata = bucket_starts(PERIODS["24h"], now, ZoneInfo("Asia/Kolkata"))
    assert kolkata[-1] == datetime(2026, 3, 10, 12, 30) and len(kolkata) == 24
    assert bucket_labels(PERIODS["24h"], kolkata, ZoneInfo("Asia/Kolkata"))[-1] == "18:00"


def test_live_queue_figures_come_from_rq(operator, services):
    ann = Conversation.create(user_phone="whatsapp:+15550000001")
    first, second = (asked(ann, utcnow(), "pending") for _ in range(2))
    queueing.enqueue_processing(services.queue, first.id, ann.user_phone)
    queueing.enqueue_processing(services.queue, second.id, ann.user_phone)  # held behind the first
    worker = Worker([services.queue], connection=services.redis)
    worker.register_birth()
    try:
        page = page_of(operator)
    finally:
        worker.register_death()
    assert tile(page, "workers-alive") == "1" and tile(page, "queue-waiting") == "2"
    assert "1 queued, 1 behind the same sender" in page
    assert re.fullmatch(r"\d+ s", tile(page, "oldest-wait"))
    assert tile(page_of(operator), "workers-alive") == "0"


def test_dashboard_runs_only_its_own_scripts(operator, traffic):
    response = operator.get("/admin/")
    assert response.headers["Content-Security-Policy"] == DASHBOARD_CSP
    script_policy = DASHBOARD_CSP.split("script-src")[1].split(";")[0]
    assert script_policy.strip() == "'self'"
    page = response.get_data(as_text=True)
    assert not re.search(r"https?://(?!localhost)[^\"']*\.(js|css)", page)
    assert re.findall(r"<script(?![^>]*(src=|application/json))", page) == []
    for path in re.findall(r'src="(/static/[^"]+)"', page):
        assert operator.get(path).status_code == 200, path
    assert "/static/vendor/chart.umd.min.js" in page


@pytest.mark.postgres
def test_answers_sent_record_when_twilio_took_them(services, post_webhook, run_jobs):
    before = utcnow()
    post_webhook.message("Hello")
    run_jobs()
    answer = Message.get(Message.role == "assistant")
    assert answer.status == "sent" and before <= answer.sent_at <= utcnow()


@pytest.mark.postgres
def test_upgrade_adds_sent_at_to_an_older_database(empty_database_url):
    db.open_database(empty_database_url)
    migrations.upgrade()
    with db.database.connection_context():
        db.database.execute_sql("ALTER TABLE message DROP COLUMN sent_at")
        migrations.SchemaVersion.delete().where(migrations.SchemaVersion.version >= 9).execute()
    assert migrations.upgrade() == (8, len(migrations.MIGRATIONS))
    with db.database.connection_context():
        assert "sent_at" in {column.name for column in db.database.get_columns("message")}
        question = asked(Conversation.create(user_phone="whatsapp:+15550000001"), utcnow(), "answered")
        assert answered(question, took=3).sent_at == question.created_at + timedelta(seconds=3)
