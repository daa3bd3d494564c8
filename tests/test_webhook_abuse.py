"""What an attacker found, closed: forged floods, foreign and self-addressed messages, boundary
bursts, notice floods, whole phone numbers in logs, alerts and pages."""
from __future__ import annotations

import json
import logging

import pytest

from chatbot.alerts import ErrorHandler
from chatbot.models import Message, Status, WebhookLog
from chatbot.rate_limiter import MAX_NOTICES_PER_WINDOW, Allowance, Decision, RateLimiter
from chatbot.web import audit
from tests.conftest import BOT_NUMBER, csrf_token, inbound_form, log_in
from tests.fakes import FakeTwilio
from tests.test_faults import FakeSlack

ADA = "whatsapp:+15550001111"
ADA_DIGITS = "15550001111"


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- forged floods ------------------------------------------------------------------------------

def test_a_forged_flood_costs_bytes_not_megabytes(post_webhook, services, monkeypatch):
    monkeypatch.setattr(audit, "current_minute", lambda: 29_500_000)  # no minute may end mid-flood
    big_headers = {f"X-Junk-{n}": "x" * 8000 for n in range(95)}
    for number in range(audit.ROWS_PER_MINUTE + 20):
        response = post_webhook(inbound_form(f"forged {number}"), signature="forged", headers=dict(big_headers))
        assert response.status_code == 403
    rows = list(WebhookLog.select().order_by(WebhookLog.id))
    refused = [row for row in rows if row.verdict == "bad_signature"]
    summaries = [row for row in rows if row.verdict == "refused_uncounted"]
    assert len(refused) == audit.ROWS_PER_MINUTE
    assert len(summaries) == 1 and summaries[0].error.startswith("20 more refused request(s)")
    for row in refused:
        assert row.body == "" and "bytes not kept" in row.error
        assert sum(len(name) + len(value) for name, value in row.headers.items()) <= audit.MAX_HEADER_CHARS
    stored = sum(len(json.dumps(row.headers)) + len(row.body or "") + len(row.error or "") for row in rows)
    assert stored < 200_000  # 80 requests of 760 KB of headers each
    assert Message.select().count() == 0


@pytest.mark.postgres
def test_refused_rows_are_still_written_when_redis_is_down(app_with):
    app = app_with(redis_url="redis://127.0.0.1:1/0")
    from tests.conftest import WebhookPoster

    response = WebhookPoster(app.test_client())(inbound_form("forged"), signature="forged")
    assert response.status_code == 403
    assert WebhookLog.get().verdict == "bad_signature"


# --- messages the bot must not answer ------------------------------------------------------------

def test_a_message_to_another_number_is_acknowledged_recorded_and_not_answered(post_webhook, services):
    response = post_webhook(inbound_form("hi", To="whatsapp:+14155550000"))
    assert response.status_code == 200
    assert Message.select().count() == 0 and services.queue.count == 0
    row = WebhookLog.get()
    assert row.verdict == "not_our_number" and ADA_DIGITS not in row.error


def test_a_message_from_the_bot_itself_is_not_answered(post_webhook, services):
    response = post_webhook(inbound_form("echo", sender=BOT_NUMBER))
    assert response.status_code == 200
    assert Message.select().count() == 0 and services.queue.count == 0
    assert WebhookLog.get().verdict == "from_ourselves"


# --- rate limits ---------------------------------------------------------------------------------

def test_a_burst_across_the_window_boundary_cannot_pass_twice_the_limit(redis):
    clock = Clock(60 * 1000 + 59.0)  # the last second of a window
    limiter = RateLimiter(redis, per_sender=5, global_limit=1000, window=60, clock=clock)
    assert [limiter.check(ADA).allowed for _ in range(5)] == [True] * 5
    clock.now += 2.0  # the next window has begun; a fixed window would allow five more
    assert [limiter.check(ADA).allowed for _ in range(5)] == [False] * 5
    clock.now += 120.0  # refused messages count too: once the burst is a whole window behind, welcome again
    assert limiter.check(ADA).allowed


def test_limit_notices_are_capped_per_window(redis):
    limiter = RateLimiter(redis, per_sender=1, global_limit=1000, window=60, clock=Clock(60_000.0))
    notified = 0
    for number in range(MAX_NOTICES_PER_WINDOW + 10):
        sender = f"whatsapp:+1555200{number:04d}"
        assert limiter.check(sender) == Decision(Allowance.ALLOWED)
        decision = limiter.check(sender)
        assert decision.allowance is Allowance.SENDER_LIMITED
        notified += decision.notify
    assert notified == MAX_NOTICES_PER_WINDOW


# --- whole numbers nowhere -----------------------------------------------------------------------

def test_twilios_invalid_number_error_is_masked_in_logs_alerts_and_the_message(
        post_webhook, services, run_jobs, fake_twilio, caplog):
    slack = FakeSlack()
    try:
        services.errors = ErrorHandler(services.redis, slack.url)
        services.processor.errors = services.errors
        fake_twilio.then(FakeTwilio.error(400, 21211, f"The 'To' number whatsapp:+{ADA_DIGITS} is not a valid "
                                                      "phone number."))
        post_webhook.message("Hello", sender=ADA)
        with caplog.at_level(logging.INFO):
            run_jobs()
        assert services.errors.flush(5)
        answer = Message.get(Message.role == "assistant")
        assert answer.status == Status.SEND_FAILED.value
        assert "whatsapp:+1555•••1111" in answer.error and ADA_DIGITS not in answer.error
        assert "21211" in caplog.text and ADA_DIGITS not in caplog.text
        assert slack.posts and all(ADA_DIGITS not in post["text"] for post in slack.posts)
    finally:
        slack.stop()


def test_admin_pages_mask_numbers_in_metadata_errors_and_raw_bodies_until_revealed(post_webhook, admin_user, client):
    post_webhook.message("Hello", sender=ADA)
    question = Message.get()
    Message.update(error=f"twilio: The 'To' number whatsapp:+{ADA_DIGITS} is not valid").where(
        Message.id == question.id).execute()
    assert log_in(client).status_code == 302
    log_row = WebhookLog.get()
    pages = [f"/admin/message/details/?id={question.id}", f"/admin/webhooklog/details/?id={log_row.id}",
             "/admin/webhooklog/", f"/admin/conversation/details/?id={question.conversation_id}"]
    for page in pages:
        html = client.get(page).get_data(as_text=True)
        assert ADA_DIGITS not in html, page
    assert "1555•••1111" in client.get(pages[0]).get_data(as_text=True)
    token = csrf_token(client, "/admin/conversation/")
    client.post("/admin/conversation/reveal/", data={"csrf_token": token, "next": "/admin/conversation/"})
    assert ADA_DIGITS in client.get(pages[1]).get_data(as_text=True)


def test_rate_limit_keys_expire_after_their_window(redis):
    limiter = RateLimiter(redis, per_sender=1, global_limit=10, window=60, clock=lambda: 6000.0)
    assert limiter.check(ADA) == Decision(Allowance.ALLOWED)
    assert limiter.check(ADA) == Decision(Allowance.SENDER_LIMITED, notify=True)
    assert limiter.check(ADA) == Decision(Allowance.SENDER_LIMITED, notify=False)
    keys = redis.keys("chatbot:ratelimit:*")
    # The sender's counter, the global counter, the sender's notice marker, the window's notice count:
    # kept through the next window, whose sliding count still weighs this one.
    assert len(keys) == 4
    assert all(0 < redis.ttl(key) <= 125 for key in keys)


def test_rate_limiter_counts_on_when_redis_has_lost_its_scripts(redis):
    limiter = RateLimiter(redis, per_sender=1, global_limit=10, window=60, clock=lambda: 6000.0)
    limiter.check(ADA)
    redis.script_flush()
    assert limiter.check(ADA) == Decision(Allowance.SENDER_LIMITED, notify=True)
