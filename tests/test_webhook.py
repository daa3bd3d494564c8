"""POST /whatsapp/webhook, GET /whatsapp/webhook and /health."""
from __future__ import annotations

import dataclasses
import threading

import pytest
from flask import Flask, session
from flask.sessions import NullSession
from rq.job import Job

from chatbot import create_app
from chatbot.jobs import queueing, tasks
from chatbot.models import Message, Status, WebhookLog
from chatbot.services import build_services
from chatbot.web.signature import signature_problem
from tests.conftest import WEBHOOK_URL, inbound_form, sign

# Twilio's published vectors (twilio-python's own tests).
VECTOR_TOKEN = "12345"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}


@pytest.mark.parametrize(
    "public_base_url, signature",
    [
        ("https://mycompany.com", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("https://mycompany.com:443", "kvajT1Ptam85bY51eRf/AJRuM3w="),
        ("http://mycompany.com:80", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
    ],
)
def test_twilio_published_signature_vectors_are_accepted(public_base_url, signature):
    app = Flask(__name__)
    with app.test_request_context(
        "/myapp.php?foo=1&bar=2", method="POST", data=VECTOR_PARAMS,
        headers={"X-Twilio-Signature": signature},
    ):
        assert signature_problem(VECTOR_TOKEN, public_base_url) is None
    with app.test_request_context(
        "/myapp.php?foo=1&bar=3", method="POST", data=VECTOR_PARAMS,
        headers={"X-Twilio-Signature": signature},
    ):
        assert signature_problem(VECTOR_TOKEN, public_base_url) is not None


@pytest.mark.parametrize("path, sessionless", [
    ("/whatsapp/webhook", True), ("/whatsapp/status", True), ("/health", True), ("/metrics", True),
    ("/admin/", False), ("/admin/login/", False),
])
def test_only_pages_a_person_opens_get_a_cookie_session(app, path, sessionless):
    with app.test_request_context(path, method="POST", headers={"Cookie": "session=whatever"}):
        assert isinstance(session, NullSession) is sessionless


def test_a_twilio_post_sets_no_cookie(post_webhook):
    response = post_webhook(inbound_form("Hello"))
    assert response.status_code == 200 and "Set-Cookie" not in response.headers


@pytest.mark.postgres
def test_valid_webhook_is_stored_queued_and_answered_with_empty_twiml(post_webhook, services):
    form = inbound_form("Hello there")
    response = post_webhook(form)
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    assert response.get_data(as_text=True) == '<?xml version="1.0" encoding="UTF-8"?><Response/>'
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    assert (message.content, message.status, message.role) == ("Hello there", Status.PENDING.value, "user")
    assert message.conversation.user_phone == form["From"]
    assert message.metadata["profile_name"] == "Ada"
    job = Job.fetch(queueing.job_id_for(message.id), connection=services.redis)
    assert job.args == (message.id,)
    assert job.timeout == queueing.JOB_TIMEOUT and job.retries_left == queueing.JOB_RETRY.max
    log = WebhookLog.get(WebhookLog.message_sid == form["MessageSid"])
    assert (log.response_status, log.signature_valid) == (200, True)
    assert log.headers["X-Twilio-Signature"] == "[redacted]"
    assert "Hello+there" in log.body


def test_missing_signature_is_refused_with_403(post_webhook, services):
    form = inbound_form()
    response = post_webhook(form, signature=None)
    assert response.status_code == 403
    assert "missing" in response.get_data(as_text=True)
    assert Message.select().count() == 0
    assert services.queue.count == 0
    log = WebhookLog.get()
    assert (log.response_status, log.signature_valid) == (403, False)


def test_forged_signature_is_refused_with_403(post_webhook, services):
    form = inbound_form()
    forged = sign(WEBHOOK_URL, form, token="not-the-auth-token")
    assert post_webhook(form, signature=forged).status_code == 403
    tampered = dict(form, Body="tampered")
    assert post_webhook(tampered, signature=sign(WEBHOOK_URL, form)).status_code == 403
    assert post_webhook(form, signature="garbage").status_code == 403
    assert Message.select().count() == 0
    assert services.queue.count == 0


def with_settings(services, **changes):
    return dataclasses.replace(services, config=services.config.replace(**changes))


def test_without_auth_token_nothing_is_accepted(services):
    app = create_app(services=with_settings(services, twilio_auth_token=""))
    form = inbound_form()
    response = app.test_client().post("/whatsapp/webhook", data=form,
                                      headers={"X-Twilio-Signature": sign(WEBHOOK_URL, form)})
    assert response.status_code == 403
    assert "TWILIO_AUTH_TOKEN" in response.get_data(as_text=True)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "change, reason",
    [
        ({"MessageSid": "", "SmsMessageSid": ""}, "MessageSid is missing"),
        ({"MessageSid": "not-a-sid", "SmsMessageSid": ""}, "not a Twilio SID"),
        ({"From": ""}, "From is missing"),
    ],
)
def test_malformed_webhook_is_refused_with_400_and_logged(post_webhook, services, change, reason):
    form = {**inbound_form(), **change}
    response = post_webhook(form)
    assert response.status_code == 400
    assert reason in response.get_data(as_text=True)
    assert Message.select().count() == 0
    assert services.queue.count == 0
    log = WebhookLog.get()
    assert log.response_status == 400 and reason in log.error


@pytest.mark.postgres
def test_unknown_fields_and_media_are_tolerated(post_webhook):
    form = inbound_form("", NumMedia="2", MediaUrl0="https://api.twilio.com/m/ME1", MediaContentType0="image/png",
                        MediaUrl1="https://api.twilio.com/m/ME2", MediaContentType1="audio/ogg",
                        SomeFieldTwilioAddsLater="x", Latitude="48.85", Longitude="2.35")
    assert post_webhook(form).status_code == 200
    message = Message.get()
    assert [m["content_type"] for m in message.metadata["media"]] == ["image/png", "audio/ogg"]
    assert message.metadata["Latitude"] == "48.85"


@pytest.mark.postgres
def test_redelivery_finds_the_row_and_enqueues_nothing(post_webhook, services):
    form = inbound_form()
    post_webhook(form)
    assert post_webhook(form).status_code == 200
    assert Message.select().count() == 1
    assert services.queue.count == 1
    assert [log.error for log in WebhookLog.select().order_by(WebhookLog.id)] == [None, "duplicate delivery"]


@pytest.mark.postgres
def test_concurrent_redelivery_stores_and_queues_once(app, services):
    form = inbound_form()
    signature = sign(WEBHOOK_URL, form)
    statuses = []
    barrier = threading.Barrier(8)

    def deliver():
        client = app.test_client()
        barrier.wait()
        statuses.append(client.post("/whatsapp/webhook", data=form,
                                    headers={"X-Twilio-Signature": signature}).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 8
    assert Message.select().count() == 1
    assert services.queue.count == 1


@pytest.mark.postgres
def test_first_messages_of_a_new_sender_arriving_together_share_one_conversation(app):
    forms = [inbound_form(f"message {n}", sender="whatsapp:+15557770000") for n in range(6)]
    barrier = threading.Barrier(len(forms))

    def deliver(form):
        client = app.test_client()
        barrier.wait()
        assert client.post("/whatsapp/webhook", data=form,
                           headers={"X-Twilio-Signature": sign(WEBHOOK_URL, form)}).status_code == 200

    threads = [threading.Thread(target=deliver, args=(form,)) for form in forms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Message.select().count() == 6
    assert len({m.conversation_id for m in Message.select()}) == 1


def test_signature_checked_against_public_base_url_behind_a_proxy(post_webhook):
    # The request reaches Flask as http://localhost/..., but Twilio signed the public https URL.
    assert post_webhook.message("through the proxy")


def test_without_public_base_url_forwarded_headers_give_the_signed_url(services):
    app = create_app(services=with_settings(services, public_base_url="", trusted_proxies=1))
    form = inbound_form()
    signature = sign("https://bot.example.com/whatsapp/webhook", form)
    client = app.test_client()
    plain = client.post("/whatsapp/webhook", data=form, headers={"X-Twilio-Signature": signature})
    assert plain.status_code == 403
    proxied = client.post(
        "/whatsapp/webhook", data=form,
        headers={"X-Twilio-Signature": signature, "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "bot.example.com"},
    )
    assert proxied.status_code == 200


def test_query_string_is_part_of_the_signed_url(post_webhook):
    form = inbound_form()
    url = WEBHOOK_URL + "?source=sandbox"
    response = post_webhook.client.post("/whatsapp/webhook?source=sandbox", data=form,
                                        headers={"X-Twilio-Signature": sign(url, form)})
    assert response.status_code == 200
    other = inbound_form()
    refused = post_webhook.client.post("/whatsapp/webhook?source=other", data=other,
                                       headers={"X-Twilio-Signature": sign(url, other)})
    assert refused.status_code == 403


def test_get_webhook_is_an_operator_url_check(client):
    response = client.get("/whatsapp/webhook")
    assert response.status_code == 200
    assert "POST" in response.get_data(as_text=True)


@pytest.mark.postgres
def sqlite_writer_turn(config) -> dict:
    """The health check's SQLite-only field, when the test's database is SQLite."""
    return {"sqlite_writer_turn": True} if config.database_url.startswith("sqlite") else {}


def test_health_reports_database_and_redis(client, config):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": True, "redis": True, **sqlite_writer_turn(config)}


def test_health_is_503_when_redis_is_unreachable(config, private_redis):
    services = build_services(config.replace(redis_url=private_redis.url))
    app = create_app(services=services)
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": True, "redis": False,
                                   **sqlite_writer_turn(config)}


@pytest.mark.postgres
def test_health_is_503_when_database_is_unreachable(config):
    services = build_services(config.replace(database_url="postgresql://postgres@127.0.0.1:1/none"))
    app = create_app(services=services)
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["database"] is False


@pytest.mark.postgres
def test_database_down_answers_503_so_twilio_retries(config, redis):
    services = build_services(config.replace(database_url="postgresql://postgres@127.0.0.1:1/none"))
    app = create_app(services=services)
    form = inbound_form()
    response = app.test_client().post("/whatsapp/webhook", data=form,
                                      headers={"X-Twilio-Signature": sign(WEBHOOK_URL, form)})
    assert response.status_code == 503
    assert services.queue.count == 0


@pytest.mark.postgres
def test_redis_down_still_stores_and_the_sweeper_queues_later(config, services, private_redis, monkeypatch):
    from datetime import timedelta

    private_redis.start()
    services_on_private = build_services(config.replace(redis_url=private_redis.url))
    app = create_app(services=services_on_private)
    private_redis.stop()
    form = inbound_form("while redis was down")
    response = app.test_client().post("/whatsapp/webhook", data=form,
                                      headers={"X-Twilio-Signature": sign(WEBHOOK_URL, form)})
    assert response.status_code == 200
    message = Message.get(Message.twilio_sid == form["MessageSid"])
    assert message.status == Status.PENDING.value
    private_redis.start()
    tasks.install(services_on_private)
    monkeypatch.setattr(tasks, "PENDING_GRACE", timedelta(0))
    assert tasks.sweep_pending_messages() == 1
    assert tasks.sweep_pending_messages() == 0  # the job now exists
    assert services_on_private.queue.job_ids == [queueing.job_id_for(message.id)]


def test_status_callback_is_acknowledged_and_never_answered(post_webhook, services):
    form = {"MessageSid": "SM" + "c" * 32, "MessageStatus": "delivered", "SmsStatus": "delivered",
            "To": "whatsapp:+15550001111", "From": "whatsapp:+14155238886", "AccountSid": "AC" + "0" * 32}
    response = post_webhook(form)
    assert response.status_code == 200
    assert Message.select().count() == 0 and services.queue.count == 0
    assert WebhookLog.get().verdict == "status_callback"
