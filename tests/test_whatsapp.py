"""WhatsAppClient with the real twilio SDK, over real HTTP against the loopback fake."""
from __future__ import annotations

import base64

import pytest

from chatbot.errors import WhatsAppError
from chatbot.whatsapp import SHORTENED_NOTE, WHATSAPP_LIMIT, WhatsAppClient, split_message, utf16_length
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, free_port
from tests.fakes import FakeTwilio, Scripted

ADA = "whatsapp:+15550001111"
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
LONG_REPLY = "\n\n".join(
    f"Paragraph {number}. " + " ".join(f"word{number}x{index}" for index in range(150))
    for number in range(1, 4)
)


class RecordingSleep:
    """Stands in for time.sleep: remembers each delay and returns at once."""

    def __init__(self):
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def accepted(sid: str) -> Scripted:
    """Twilio's 201 answer to a message it queued, with a known SID."""
    return Scripted(201, {
        "sid": sid, "account_sid": ACCOUNT_SID, "to": ADA, "from": BOT_NUMBER, "body": "...",
        "status": "queued", "num_segments": "1", "direction": "outbound-api", "api_version": "2010-04-01",
        "date_created": "Wed, 25 Nov 2026 12:00:00 +0000",
        "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
    })


@pytest.fixture
def sleep():
    return RecordingSleep()


@pytest.fixture
def whatsapp(fake_twilio, sleep):
    return WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=fake_twilio.url, backoff=0.01,
                          sleep=sleep)


def test_send_posts_to_from_and_body_and_returns_the_sid(whatsapp, fake_twilio):
    fake_twilio.then(accepted("SM0123456789abcdef0123456789abcdef"))

    sids = whatsapp.send(ADA, "Hello Ada")

    [request] = fake_twilio.requests
    assert (request.method, request.path) == ("POST", MESSAGES_PATH)
    assert fake_twilio.sent == [{"To": ADA, "From": BOT_NUMBER, "Body": "Hello Ada"}]
    assert sids == ["SM0123456789abcdef0123456789abcdef"]


def test_send_asks_twilio_to_report_delivery_to_the_status_callback(fake_twilio, sleep):
    whatsapp = WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=fake_twilio.url, sleep=sleep,
                              status_callback="https://bot.example.com/whatsapp/status")

    whatsapp.send(ADA, "Hello Ada")

    assert fake_twilio.sent == [{"To": ADA, "From": BOT_NUMBER, "Body": "Hello Ada",
                                 "StatusCallback": "https://bot.example.com/whatsapp/status"}]


def test_send_authenticates_with_the_account_sid_and_token(whatsapp, fake_twilio):
    whatsapp.send(ADA, "Hello Ada")

    headers = {name.lower(): value for name, value in fake_twilio.requests[0].headers.items()}
    scheme, credentials = headers["authorization"].split(" ", 1)
    assert scheme == "Basic"
    assert base64.b64decode(credentials).decode() == f"{ACCOUNT_SID}:{AUTH_TOKEN}"


@pytest.mark.parametrize("failure", [
    FakeTwilio.error(429, 20429, "Too Many Requests"),
    FakeTwilio.error(500, 20500, "Internal Server Error"),
    FakeTwilio.error(503, 20503, "Service Unavailable"),
], ids=["429", "500", "503"])
def test_transient_failure_is_retried_then_succeeds(failure, whatsapp, fake_twilio, sleep):
    fake_twilio.then(failure, accepted("SMretried"))

    sids = whatsapp.send(ADA, "Hello Ada")

    assert sids == ["SMretried"]
    assert len(fake_twilio.sent) == 2
    assert fake_twilio.sent[0] == fake_twilio.sent[1]
    [delay] = sleep.delays
    assert 0.005 <= delay <= 0.01


@pytest.mark.parametrize("status, code", [(400, 21211), (400, 21614), (400, 63016), (401, 20003)])
def test_permanent_error_is_not_retried(status, code, whatsapp, fake_twilio, sleep):
    fake_twilio.then(FakeTwilio.error(status, code, "permanent failure"))

    with pytest.raises(WhatsAppError) as caught:
        whatsapp.send(ADA, "Hello Ada")

    assert len(fake_twilio.requests) == 1
    assert caught.value.retryable is False
    assert caught.value.code == code
    assert caught.value.status == status
    assert "permanent failure" in str(caught.value)
    assert sleep.delays == []


def test_retries_are_bounded(fake_twilio, sleep):
    fake_twilio.then(*[FakeTwilio.error(503, 20503, "Service Unavailable")] * 6)
    client = WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=fake_twilio.url,
                            attempts=3, backoff=0.01, sleep=sleep)

    with pytest.raises(WhatsAppError) as caught:
        client.send(ADA, "Hello Ada")

    assert len(fake_twilio.requests) == 3
    assert len(sleep.delays) == 2
    assert caught.value.retryable is True
    assert caught.value.status == 503


def test_connection_refused_is_a_retryable_error(sleep):
    client = WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=f"http://127.0.0.1:{free_port()}",
                            attempts=2, backoff=0.01, sleep=sleep)

    with pytest.raises(WhatsAppError) as caught:
        client.send(ADA, "Hello Ada")

    assert caught.value.retryable is True
    assert "could not reach Twilio" in str(caught.value)
    assert len(sleep.delays) == 1


def test_timeout_is_a_retryable_error(fake_twilio):
    fake_twilio.then(Scripted(201, {"sid": "SMlate"}, delay=1.0))
    client = WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=fake_twilio.url,
                            timeout=0.3, attempts=1, backoff=0.01)

    with pytest.raises(WhatsAppError) as caught:
        client.send(ADA, "Hello Ada")

    assert caught.value.retryable is True


def test_timed_out_send_that_twilio_did_not_take_is_sent_again(fake_twilio):
    # A scripted answer: the fake does not count the first post among the messages it took.
    fake_twilio.then(Scripted(201, {"sid": "SMlate"}, delay=1.0))
    client = WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=fake_twilio.url,
                            timeout=0.3, backoff=0.01)

    assert client.send(ADA, "Hello Ada") == [fake_twilio.accepted[0]["sid"]]
    assert len(fake_twilio.sent) == 2
    assert len(fake_twilio.lookups) == 1  # asked first: not taken, so sent again


@pytest.mark.parametrize("account_sid, auth_token, number", [
    ("", AUTH_TOKEN, BOT_NUMBER),
    (ACCOUNT_SID, "", BOT_NUMBER),
    (ACCOUNT_SID, AUTH_TOKEN, ""),
], ids=["no-account-sid", "no-auth-token", "no-number"])
def test_missing_twilio_settings_fail_without_a_request(account_sid, auth_token, number, fake_twilio):
    client = WhatsAppClient(account_sid, auth_token, number, api_base_url=fake_twilio.url, backoff=0.01)

    with pytest.raises(WhatsAppError) as caught:
        client.send(ADA, "Hello Ada")

    assert caught.value.retryable is False
    for setting in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_WHATSAPP_NUMBER"):
        assert setting in str(caught.value)
    assert fake_twilio.requests == []


def test_long_body_is_split_and_sent_in_order(whatsapp, fake_twilio):
    assert utf16_length(LONG_REPLY) > WHATSAPP_LIMIT

    sids = whatsapp.send(ADA, LONG_REPLY)

    bodies = [form["Body"] for form in fake_twilio.sent]
    assert len(bodies) >= 2
    assert bodies == split_message(LONG_REPLY)
    assert all(utf16_length(body) <= WHATSAPP_LIMIT for body in bodies)
    assert " ".join(" ".join(bodies).split()) == " ".join(LONG_REPLY.split())
    assert bodies[0].startswith("Paragraph 1.")
    assert len(sids) == len(bodies)
    assert all(form["To"] == ADA and form["From"] == BOT_NUMBER for form in fake_twilio.sent)


def test_already_sent_parts_are_skipped(whatsapp, fake_twilio):
    parts = split_message(LONG_REPLY)

    whatsapp.send(ADA, LONG_REPLY, already_sent=1)

    assert [form["Body"] for form in fake_twilio.sent] == parts[1:]


def test_each_sent_part_is_reported_with_its_number_and_sid(whatsapp, fake_twilio):
    parts = split_message(LONG_REPLY)
    fake_twilio.then(*[accepted(f"SMpart{number}") for number in range(1, len(parts) + 1)])
    reported = []

    sids = whatsapp.send(ADA, LONG_REPLY, on_part_sent=lambda number, sid: reported.append((number, sid)))

    assert reported == [(number, f"SMpart{number}") for number in range(1, len(parts) + 1)]
    assert sids == [sid for _, sid in reported]


def test_resumed_send_reports_parts_by_their_place_in_the_whole_reply(whatsapp, fake_twilio):
    parts = split_message(LONG_REPLY)
    reported = []

    whatsapp.send(ADA, LONG_REPLY, already_sent=1, on_part_sent=lambda number, sid: reported.append(number))

    assert reported == list(range(2, len(parts) + 1))


def test_failure_mid_reply_stops_after_the_parts_already_reported(whatsapp, fake_twilio):
    fake_twilio.then(accepted("SMfirst"), FakeTwilio.error(400, 63016, "outside the 24-hour window"))
    reported = []

    with pytest.raises(WhatsAppError) as caught:
        whatsapp.send(ADA, LONG_REPLY, on_part_sent=lambda number, sid: reported.append((number, sid)))

    assert caught.value.code == 63016
    assert reported == [(1, "SMfirst")]
    assert len(fake_twilio.sent) == 2


def test_a_reply_past_the_part_cap_is_shortened_and_says_so(fake_twilio, sleep):
    whatsapp = WhatsAppClient(ACCOUNT_SID, AUTH_TOKEN, BOT_NUMBER, api_base_url=fake_twilio.url, sleep=sleep,
                              max_parts=3)
    storm = "\U0001F44D\u200D" * 5000  # one "grapheme" of ten thousand code points, no place to cut

    sids = whatsapp.send(ADA, storm)

    bodies = [form["Body"] for form in fake_twilio.sent]
    assert len(bodies) == len(sids) == 3
    assert all(WHATSAPP_LIMIT - 64 <= utf16_length(body) <= WHATSAPP_LIMIT for body in bodies)
    assert bodies[-1].endswith(SHORTENED_NOTE)


def test_the_built_client_caps_replies_at_max_reply_parts(services):
    assert services.whatsapp.max_parts == services.config.max_reply_parts == 10


def test_account_status_fetches_the_account_and_sends_nothing(whatsapp, fake_twilio):
    assert whatsapp.account_status() == "active"
    [request] = fake_twilio.requests
    assert (request.method, request.path) == ("GET", f"/2010-04-01/Accounts/{ACCOUNT_SID}.json")
    assert fake_twilio.sent == []


def test_account_status_with_wrong_credentials_is_a_permanent_error(whatsapp, fake_twilio):
    fake_twilio.then(FakeTwilio.error(401, 20003, "Authenticate"))
    with pytest.raises(WhatsAppError) as caught:
        whatsapp.account_status()
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (401, 20003, False)
