"""Who may talk to the bot: ACCESS_MODE with its allowlist or blocklist, the admin's Access page."""
from __future__ import annotations

import hashlib
import json

import pytest

from chatbot.models import AccessEntry, Message, OptOut, Setting, Status
from config import DEFAULT_ACCESS_NOTICE
from tests.conftest import WEBHOOK_URL, csrf_token
from tests.support import inbound_form, sign

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"
CY = "whatsapp:+15550003333"


@pytest.fixture
def access_settings() -> dict:
    """The ACCESS_* variables of a test's deployment; tests parametrize it."""
    return {}


@pytest.fixture
def env(env, access_settings):
    return {**env, **access_settings}


@pytest.fixture(autouse=True)
def no_access_rules_left_behind(services):
    # The Postgres fixture empties only the older tables: an admin's rule or a STOP must not outlive its test.
    yield
    AccessEntry.delete().execute()
    Setting.delete().execute()
    OptOut.delete().execute()


def bodies(fake_twilio) -> list[str]:
    return [sent["Body"] for sent in fake_twilio.sent]


def asked(fake_openrouter) -> list[str]:
    return [request.body["messages"][-1]["content"] for request in fake_openrouter.completions]


def statuses(body: str) -> set[str]:
    return {message.status for message in Message.select().where(Message.content == body)}


def post_json_webhook(client, body: str, sender: str):
    """Post Twilio's JSON variant: the body's SHA-256 in the signed URL, the JSON itself unsigned."""
    payload = json.dumps(inbound_form(body, sender))
    url = f"{WEBHOOK_URL}?bodySHA256={hashlib.sha256(payload.encode()).hexdigest()}"
    response = client.post(url.removeprefix("https://bot.example.com"), data=payload, content_type="application/json",
                           headers={"X-Twilio-Signature": sign(url, {})})
    assert response.status_code == 200


def page(operator) -> str:
    return operator.get("/admin/access/").get_data(as_text=True)


def post_form(operator, path: str, **fields):
    fields["csrf_token"] = csrf_token(operator, "/admin/access/")
    return operator.post(f"/admin/access/{path}", data=fields, follow_redirects=True).get_data(as_text=True)


@pytest.mark.parametrize("access_settings", [{"ACCESS_MODE": "allowlist", "ACCESS_LIST": ADA}])
def test_allowlist_answers_listed_senders_and_tells_others_once(post_webhook, run_jobs, fake_openrouter,
                                                                fake_twilio):
    post_webhook.message("hi from Ada", sender=ADA)
    post_webhook.message("hi from Bob", sender=BOB)
    run_jobs()
    post_webhook.message("Bob again", sender=BOB)
    run_jobs()
    assert asked(fake_openrouter) == ["hi from Ada"]
    assert bodies(fake_twilio) == ["Answer to: hi from Ada", DEFAULT_ACCESS_NOTICE]
    assert statuses("hi from Bob") == statuses("Bob again") == {Status.NOT_ALLOWED.value}
    assert Message.get(Message.content == "Bob again").metadata["access"] == "not on the allowlist"


@pytest.mark.parametrize("access_settings", [{"ACCESS_MODE": "blocklist"}])
def test_blocklist_refuses_the_blocked_sender_and_answers_the_others(operator, post_webhook, run_jobs,
                                                                     fake_openrouter, fake_twilio):
    post_form(operator, "add/", numbers=BOB, kind="block")
    post_webhook.message("hello", sender=BOB)
    post_webhook.message("hello there", sender=ADA)
    run_jobs()
    assert asked(fake_openrouter) == ["hello there"]
    assert sorted(bodies(fake_twilio)) == sorted([DEFAULT_ACCESS_NOTICE, "Answer to: hello there"])
    bob = Message.get(Message.content == "hello")
    assert bob.status == Status.NOT_ALLOWED.value and bob.metadata["access"] == "on the blocklist"


@pytest.mark.postgres
@pytest.mark.parametrize("access_settings", [{"ACCESS_MODE": "allowlist", "ACCESS_LIST": f"{ADA}, +15550001111"}])
def test_access_list_from_the_environment_is_merged_with_the_admins(operator, post_webhook, run_jobs,
                                                                    fake_openrouter):
    post_form(operator, "add/", numbers="+15550003333", kind="allow")
    shown = page(operator)
    assert shown.count("+1555•••1111") == 1 and "ACCESS_LIST" in shown  # the environment's, once, marked
    assert "+1555•••3333" in shown and "+15550003333" not in shown  # masked until revealed
    for sender in (ADA, BOB, CY):
        post_webhook.message(f"from {sender}", sender=sender)
    run_jobs()
    assert sorted(asked(fake_openrouter)) == [f"from {ADA}", f"from {CY}"]
    assert statuses(f"from {BOB}") == {Status.NOT_ALLOWED.value}


@pytest.mark.postgres
def test_the_admin_switches_the_mode_and_the_next_message_follows_it(operator, post_webhook, run_jobs,
                                                                     fake_openrouter, fake_twilio):
    post_webhook.message("while open", sender=BOB)
    run_jobs()
    assert "allowlist, from the next message on" in post_form(operator, "mode/", mode="allowlist")
    post_webhook.message("while allowlisted", sender=BOB)
    run_jobs()
    assert "ACCESS_MODE again (open)" in post_form(operator, "mode/", mode="environment")
    post_webhook.message("open again", sender=BOB)
    run_jobs()
    assert asked(fake_openrouter) == ["while open", "open again"]
    assert bodies(fake_twilio)[1] == DEFAULT_ACCESS_NOTICE
    assert statuses("while allowlisted") == {Status.NOT_ALLOWED.value}
    # The admin's notice wins over the environment's too.
    post_form(operator, "mode/", mode="allowlist")
    post_form(operator, "notice/", notice="Members only.", action="save")
    post_webhook.message("still there?", sender=CY)
    run_jobs()
    assert bodies(fake_twilio)[-1] == "Members only."


@pytest.mark.postgres
def test_pasted_numbers_are_normalised_and_invalid_or_repeated_ones_skipped(operator):
    pasted = "+15550001111, whatsapp:+15550002222\n+1-555-000-3333\t12345 not-a-number +15550001111"
    shown = post_form(operator, "add/", numbers=pasted, kind="allow")
    assert "Added 3 number(s) to the allowlist." in shown
    assert "Skipped 2 that are not phone numbers" in shown and "not-a-number" in shown
    assert sorted(entry.user_phone for entry in AccessEntry.of_kind("allow")) == [
        "+15550001111", "+15550002222", "+15550003333"]
    again = post_form(operator, "add/", numbers="+15550001111 +15550004444", kind="allow")
    assert "Added 1 number(s) to the allowlist; 1 already on it." in again
    entry = AccessEntry.get(AccessEntry.user_phone == "+15550004444")
    post_form(operator, f"delete/{entry.id}/")
    assert AccessEntry.select().count() == 3


def test_access_forms_need_their_csrf_token(operator):
    operator.post("/admin/access/add/", data={"numbers": "+15550001111", "kind": "allow"})
    operator.post("/admin/access/mode/", data={"mode": "allowlist"})
    assert AccessEntry.select().count() == 0 and Setting.select().count() == 0


def test_the_access_page_needs_a_login(client, services):
    assert client.get("/admin/access/").status_code == 302


@pytest.mark.parametrize("access_settings", [{"ACCESS_MODE": "allowlist", "ACCESS_NOTICE": ""}])
def test_an_empty_notice_keeps_the_bot_silent(post_webhook, run_jobs, fake_openrouter, fake_twilio):
    post_webhook.message("anyone?", sender=BOB)
    run_jobs()
    assert fake_openrouter.completions == [] and fake_twilio.sent == []
    assert statuses("anyone?") == {Status.NOT_ALLOWED.value}


@pytest.mark.parametrize("access_settings", [{"ACCESS_MODE": "allowlist", "ACCESS_LIST": ADA}])
def test_the_json_webhook_variant_is_held_to_the_same_rules(client, run_jobs, fake_openrouter, fake_twilio):
    post_json_webhook(client, "json from Ada", ADA)
    post_json_webhook(client, "json from Bob", BOB)
    run_jobs()
    assert asked(fake_openrouter) == ["json from Ada"]
    assert sorted(bodies(fake_twilio)) == sorted(["Answer to: json from Ada", DEFAULT_ACCESS_NOTICE])
    assert statuses("json from Bob") == {Status.NOT_ALLOWED.value}


@pytest.mark.postgres
@pytest.mark.parametrize("access_settings", [{"ACCESS_MODE": "allowlist"}])
def test_a_sender_who_is_kept_out_can_still_stop_the_bot(post_webhook, run_jobs, fake_openrouter, fake_twilio):
    post_webhook.message("STOP", sender=BOB)
    run_jobs()
    assert fake_openrouter.completions == []
    assert bodies(fake_twilio)[0].startswith("You won't get any more answers")


KEPT_OUT_TRIES = ["/help", "/reset", "/forget", "YES", "hello?", "STOP", "/help", "START", "/help"]


@pytest.mark.parametrize("access_settings", [{"ACCESS_MODE": "allowlist", "ACCESS_NOTICE": ""},
                                             {"ACCESS_MODE": "blocklist", "ACCESS_LIST": BOB, "ACCESS_NOTICE": ""}])
def test_a_silently_kept_out_sender_gets_only_the_stop_and_start_confirmations(post_webhook, run_jobs,
                                                                               fake_openrouter, fake_twilio):
    for text in KEPT_OUT_TRIES:
        post_webhook.message(text, sender=BOB)
        run_jobs()
    assert fake_openrouter.completions == []
    stop, start = bodies(fake_twilio)
    assert stop.startswith("You won't get any more answers") and start.startswith("Welcome back")
    assert [statuses(text) for text in ("/forget", "hello?", "STOP", "START")] == [
        {Status.NOT_ALLOWED.value}, {Status.NOT_ALLOWED.value}, {Status.ANSWERED.value}, {Status.ANSWERED.value}]
    assert statuses("/help") == {Status.NOT_ALLOWED.value, Status.OPTED_OUT.value}
