"""Abuse and transport protections: rate limits, sanitising, size limits, headers, https, secrets."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import string
import unicodedata
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peewee import fn

from chatbot import create_app
from chatbot.models import Message, Status, WebhookLog
from chatbot.rate_limiter import LIMIT_NOTICES, Allowance, RateLimiter
from chatbot.sanitizer import TRIMMED_NOTE, clean_text, is_whatsapp_address
from tests.conftest import AUTH_TOKEN, WEBHOOK_URL, WebhookPoster, inbound_form, sign

ADA = "whatsapp:+15550001111"


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def with_settings(services, **changes):
    config = services.config.replace(**changes)
    return dataclasses.replace(
        services, config=config,
        rate_limiter=RateLimiter(services.redis, config.rate_limit_messages, config.rate_limit_global,
                                 config.rate_limit_window, clock=services.rate_limiter.clock),
    )


@pytest.fixture
def limited(services):
    """An app whose limits are 3 messages per sender and 5 in total per minute, on a fake clock."""
    clock = Clock()
    limited_services = with_settings(services, rate_limit_messages=3, rate_limit_global=5)
    limited_services.rate_limiter.clock = clock
    return WebhookPoster(create_app(services=limited_services).test_client()), clock


def test_sender_over_the_limit_gets_one_notice_and_no_ai_call(limited, run_jobs, fake_openrouter, fake_twilio):
    post, clock = limited
    for number in range(6):
        post.message(f"message {number}", sender=ADA)
    run_jobs()
    assert len(fake_openrouter.completions) == 3
    bodies = [s["Body"] for s in fake_twilio.sent]
    assert bodies == ["Answer to: message 0", "Answer to: message 1", "Answer to: message 2",
                      LIMIT_NOTICES[Allowance.SENDER_LIMITED]]
    verdicts = [log.verdict for log in WebhookLog.select().order_by(WebhookLog.id)]
    assert verdicts == ["allowed"] * 3 + ["sender_limited"] * 3
    assert Message.select().where(Message.status == Status.RATE_LIMITED.value).count() == 3
    clock.now += 60
    post.message("after the window", sender=ADA)
    run_jobs()
    assert fake_twilio.sent[-1]["Body"] == "Answer to: after the window"


def test_global_ceiling_holds_back_every_sender(limited, run_jobs, fake_openrouter, fake_twilio):
    post, _clock = limited
    for number in range(7):
        post.message(f"hello {number}", sender=f"whatsapp:+1555000{number:04d}")
    run_jobs()
    assert len(fake_openrouter.completions) == 5
    notices = [s for s in fake_twilio.sent if s["Body"] == LIMIT_NOTICES[Allowance.GLOBAL_LIMITED]]
    assert len(notices) == 2


@pytest.mark.postgres
def test_inbound_text_is_normalised_and_control_characters_removed(post_webhook):
    post_webhook.message("Cafe\u0301 \x00\x07ok\r\nline two 👍🏽 日本語 עברית")
    assert Message.get().content == "Café ok\nline two 👍🏽 日本語 עברית"


def test_long_message_is_trimmed_and_the_user_told(services, run_jobs, fake_openrouter, fake_twilio):
    short = with_settings(services, max_inbound_chars=50)
    services.processor.max_inbound_chars = 50  # the worker reads the same setting
    WebhookPoster(create_app(services=short).test_client()).message("x" * 80)
    run_jobs()
    assert Message.get(Message.role == "user").content == "x" * 50
    assert fake_twilio.sent[0]["Body"].startswith(TRIMMED_NOTE.format(limit=50))


@pytest.mark.parametrize("field, value", [
    ("From", "+15550001111"), ("From", "whatsapp:15550001111"), ("From", "whatsapp:+1"),
    ("To", "sms:+14155238886"), ("From", "whatsapp:+1555000111<script>"),
])
def test_addresses_must_be_whatsapp_e164(post_webhook, services, field, value):
    form = inbound_form(**{field: value}) if field != "From" else inbound_form(sender=value)
    response = post_webhook(form)
    assert response.status_code == 400
    assert f"{field} is not a whatsapp:+E.164 address" in response.get_data(as_text=True)
    assert Message.select().count() == 0 and services.queue.count == 0
    assert WebhookLog.get().verdict == "malformed"


def test_oversized_body_is_413_not_500(post_webhook):
    response = post_webhook(inbound_form("x" * 70_000))
    assert response.status_code == 413
    assert Message.select().count() == 0


def test_security_headers_on_every_response(client, post_webhook):
    for response in (client.get("/health"), client.get("/whatsapp/webhook"), client.get("/admin/login/"),
                     post_webhook(inbound_form())):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert "Strict-Transport-Security" not in response.headers  # plain http here


def test_hsts_when_served_over_https(client):
    response = client.get("/health", base_url="https://localhost")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_no_cors_headers_even_when_asked(client):
    response = client.get("/health", headers={"Origin": "https://evil.example"})
    assert not any(name.lower().startswith("access-control-") for name in response.headers.keys())
    preflight = client.open("/whatsapp/webhook", method="OPTIONS", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_force_https_redirects_everything_but_health(services):
    client = create_app(services=with_settings(services, force_https=True)).test_client()
    assert client.get("/health").status_code == 200
    redirected = client.post("/whatsapp/webhook", data=inbound_form())
    assert redirected.status_code == 308
    assert redirected.headers["Location"].startswith("https://")
    assert client.get("/admin/", base_url="https://localhost").status_code == 302  # to login


def test_without_trusted_proxies_forwarded_headers_are_ignored(services):
    form = inbound_form()
    signature = sign("https://bot.example.com/whatsapp/webhook", form)
    headers = {"X-Twilio-Signature": signature, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "bot.example.com"}
    trusting = create_app(services=with_settings(services, public_base_url="", trusted_proxies=1)).test_client()
    assert trusting.post("/whatsapp/webhook", data=form, headers=headers).status_code == 200
    sceptical = create_app(services=with_settings(services, public_base_url="", trusted_proxies=0)).test_client()
    other = inbound_form()
    headers["X-Twilio-Signature"] = sign("https://bot.example.com/whatsapp/webhook", other)
    assert sceptical.post("/whatsapp/webhook", data=other, headers=headers).status_code == 403


def test_json_variant_with_body_sha256_is_verified(client):
    payload = json.dumps(inbound_form("json body"))
    url = f"{WEBHOOK_URL}?bodySHA256={hashlib.sha256(payload.encode()).hexdigest()}"
    signature = sign(url, {})
    path = url.removeprefix("https://bot.example.com")
    ok = client.post(path, data=payload, content_type="application/json", headers={"X-Twilio-Signature": signature})
    assert ok.status_code == 200
    assert Message.get().content == "json body"
    tampered = client.post(path, data=payload.replace("json body", "evil body"), content_type="application/json",
                           headers={"X-Twilio-Signature": signature})
    assert tampered.status_code == 403


def test_no_secret_or_whole_phone_number_in_logs(post_webhook, run_jobs, caplog, services):
    caplog.set_level(logging.DEBUG)
    post_webhook.message("Hello", sender=ADA)
    post_webhook(inbound_form(), signature="forged")
    run_jobs()
    text = caplog.text
    for secret in (AUTH_TOKEN, services.config.openrouter_api_key, services.config.field_encryption_key,
                   services.config.secret_key, "15550001111"):
        assert secret not in text


# --- properties -------------------------------------------------------------

UNSAFE = {chr(c) for c in list(range(0, 9)) + [11, 12] + list(range(14, 32)) + list(range(127, 160))}


@given(st.text())
def test_clean_text_removes_every_unsafe_character_and_is_idempotent(text):
    cleaned = clean_text(text).text
    assert not UNSAFE & set(cleaned)
    assert clean_text(cleaned).text == cleaned
    assert unicodedata.is_normalized("NFC", cleaned)


@given(st.lists(st.sampled_from(list(string.ascii_letters + "\n\t ") + ["👍🏽", "日", "ع", "é", "👨‍👩‍👧"]),
                max_size=300).map("".join))
def test_clean_text_keeps_newlines_emoji_and_every_script(text):
    assert clean_text(text).text == unicodedata.normalize("NFC", text)


@given(st.text(max_size=400), st.integers(min_value=1, max_value=200))
def test_trimming_respects_the_limit(text, limit):
    result = clean_text(text, limit)
    assert len(result.text) <= limit
    assert result.trimmed == (len(clean_text(text).text) > limit)


@given(st.text(alphabet=string.printable, max_size=30))
def test_only_whatsapp_e164_addresses_pass(value):
    assert is_whatsapp_address(value) == (
        value.startswith("whatsapp:+") and value[10:].isdigit() and value[10:11] != "0" and 7 <= len(value[10:]) <= 15
    )


FIELD_NAMES = st.sampled_from(["Body", "From", "To", "MessageSid", "SmsMessageSid", "NumMedia", "MediaUrl0",
                               "MediaContentType0", "ProfileName", "WaId", "Latitude", "X"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(form=st.dictionaries(FIELD_NAMES, st.text(max_size=60), max_size=10), keep_valid=st.booleans())
def test_fuzzed_signed_forms_never_cause_a_500(client, form, keep_valid):
    if keep_valid:
        form = {**inbound_form(), **{k: v for k, v in form.items() if k in ("Body", "ProfileName", "X")}}
    response = client.post("/whatsapp/webhook", data=form, headers={"X-Twilio-Signature": sign(WEBHOOK_URL, form)})
    assert response.status_code in (200, 400)
    if keep_valid:
        assert response.status_code == 200


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), content_type=st.sampled_from(
    ["application/x-www-form-urlencoded", "application/json", "text/plain", "multipart/form-data; boundary=x", ""]),
    query=st.sampled_from(["", "?bodySHA256=abc", "?a=%ff"]), signature=st.sampled_from([None, "", "x", "AAAA"]))
def test_fuzzed_raw_bodies_never_cause_a_500(client, body, content_type, query, signature):
    headers = {"Content-Type": content_type} if content_type else {}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    response = client.post("/whatsapp/webhook" + query, data=body, headers=headers)
    assert response.status_code in (400, 403, 413)


# --- the query string and the headers, fuzzed -------------------------------------------------------

SIGNATURE_QUERIES = st.one_of(
    st.sampled_from(["", "?bodySHA256=", "?bodySHA256", "?bodySHA256=&x=1", "?x=1&bodySHA256=", "?bodySHA256=abc",
                     "?bodySHA256=%zz", "?%62odySHA256=", "?bodySHA256=+", "?a=%ff", "?a=1&a=2", "?&&=&"]),
    st.dictionaries(st.sampled_from(["bodySHA256", "a", "MessageSid", "x y", "é"]), st.text(max_size=12),
                    max_size=3).map(lambda params: "?" + urlencode(params) if params else ""),
)
HEADER_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "+/=-_ .,;:", max_size=40)
CONTENT_TYPES = st.sampled_from([None, "", "application/x-www-form-urlencoded", "application/json", "text/plain",
                                 "multipart/form-data", "multipart/form-data; boundary=x", "junk", "*/*",
                                 "application/x-www-form-urlencoded; charset=utf-8"])
FORM_TYPES = ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=utf-8")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=SIGNATURE_QUERIES, signature=st.one_of(st.none(), HEADER_TEXT), content_type=CONTENT_TYPES,
       json_body=st.booleans(), extra_header=HEADER_TEXT)
def test_fuzzed_queries_and_headers_without_a_valid_signature_are_refused(client, services, query, signature,
                                                                          content_type, json_body, extra_header):
    form = inbound_form()
    body = json.dumps(form) if json_body else urlencode(form)
    headers = {"I-Twilio-Idempotency-Token": extra_header, "X-Twilio-Webhooks-Signature-Settings": extra_header}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    if content_type is not None:
        headers["Content-Type"] = content_type
    messages, jobs = Message.select().count(), services.queue.count
    last_row = WebhookLog.select(fn.MAX(WebhookLog.id)).scalar() or 0
    response = client.post("/whatsapp/webhook" + query, data=body, headers=headers)
    assert response.status_code == 403, response.get_data(as_text=True)
    assert (Message.select().count(), services.queue.count) == (messages, jobs)
    audit = list(WebhookLog.select().where(WebhookLog.id > last_row))
    assert len(audit) <= 1  # one audit row, or none once a flood of refusals is only counted
    assert all(row.signature_valid is False and row.message_sid is None for row in audit)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(["a", "b", "MessageSid", "x y", "é", "From"]), st.text(max_size=12),
                              max_size=3),
       content_type=CONTENT_TYPES, sender=st.integers(min_value=10**9, max_value=10**10 - 1))
def test_fuzzed_queries_and_content_types_on_signed_requests_get_the_right_answer(client, services, params,
                                                                                  content_type, sender):
    query = "?" + urlencode(params) if params else ""
    form = inbound_form(sender=f"whatsapp:+1{sender}")
    headers = {} if content_type is None else {"Content-Type": content_type}
    # The signature covers the fields the server can read: none unless the body is a form.
    readable = form if content_type in FORM_TYPES else {}
    headers["X-Twilio-Signature"] = sign(WEBHOOK_URL + query, readable)
    messages, jobs = Message.select().count(), services.queue.count
    response = client.post("/whatsapp/webhook" + query, data=urlencode(form), headers=headers)
    if readable:
        assert response.status_code == 200, response.get_data(as_text=True)
        assert Message.get(Message.twilio_sid == form["MessageSid"]).content == form["Body"]
    else:
        assert response.status_code == 400, response.get_data(as_text=True)
        assert (Message.select().count(), services.queue.count) == (messages, jobs)


@pytest.mark.parametrize("query", ["?bodySHA256=", "?bodySHA256", "?x=1&bodySHA256="])
def test_a_blank_body_hash_is_refused_like_any_bad_signature(client, services, query):
    form = inbound_form()
    response = client.post("/whatsapp/webhook" + query, data=form, headers={"X-Twilio-Signature": "junk"})
    assert response.status_code == 403
    assert "bodySHA256 is blank" in response.get_data(as_text=True)
    signed = client.post("/whatsapp/webhook" + query, data=form,
                         headers={"X-Twilio-Signature": sign(WEBHOOK_URL + query, form)})
    assert signed.status_code == 403
    assert Message.select().count() == 0 and services.queue.count == 0
    assert [row.verdict for row in WebhookLog.select()] == ["bad_signature", "bad_signature"]
