"""Users' own commands, answered without the AI: /reset, /help, STOP and START, /forget and YES."""
from __future__ import annotations

import re

import pytest

from chatbot import auth
from chatbot.models import Conversation, Message, OptOut, Status, WebhookLog, WhatsAppNumber
from chatbot.redact import sender_key
from chatbot.stages.commands import FORGET_PREFIX
from tests.conftest import BOT_NUMBER, wait_for
from tests.test_admin import PASSWORD, csrf_token, log_in

ADA = "whatsapp:+15550001111"
BOB = "whatsapp:+15550002222"
SALES = "whatsapp:+15557770001"


def bodies(fake_twilio) -> list[str]:
    return [sent["Body"] for sent in fake_twilio.sent]


def test_help_lists_the_commands_without_asking_the_ai(post_webhook, run_jobs, fake_openrouter, fake_twilio):
    post_webhook.message("/HELP ", sender=ADA)  # any case, surrounding spaces ignored
    run_jobs()
    assert fake_openrouter.completions == []
    [reply] = bodies(fake_twilio)
    assert "/reset" in reply and "STOP" in reply and "/forget" in reply


def test_a_command_inside_a_sentence_is_just_a_message(post_webhook, run_jobs, fake_openrouter, fake_twilio):
    post_webhook.message("what does /help do?", sender=ADA)
    run_jobs()
    assert bodies(fake_twilio) == ["Answer to: what does /help do?"]


def test_reset_starts_a_new_conversation_with_an_empty_context(post_webhook, run_jobs, fake_openrouter,
                                                               fake_twilio):
    post_webhook.message("My name is Ada", sender=ADA)
    run_jobs()
    post_webhook.message("/reset", sender=ADA)
    run_jobs()
    post_webhook.message("What is my name?", sender=ADA)
    run_jobs()
    assert bodies(fake_twilio)[1].startswith("Starting over")
    last_prompt = [m["content"] for m in fake_openrouter.completions[-1].body["messages"][1:]]
    assert last_prompt == ["What is my name?"]
    assert Conversation.select().where(Conversation.user_phone == ADA).count() == 2
    assert len(fake_openrouter.completions) == 2


@pytest.mark.postgres
def test_stop_silences_the_bot_until_start(post_webhook, run_jobs, fake_openrouter, fake_twilio, client):
    post_webhook.message("STOP", sender=ADA)
    run_jobs()
    post_webhook.message("are you there?", sender=ADA)
    post_webhook.message("hello", sender=BOB)  # others are not affected
    run_jobs()
    assert len(fake_twilio.sent) == 2 and "START" in bodies(fake_twilio)[0]
    assert bodies(fake_twilio)[1] == "Answer to: hello"
    assert Message.get(Message.content == "are you there?").status == Status.OPTED_OUT.value
    assert [row.user_phone for row in OptOut.select()] == [ADA]
    # Visible (masked) in the admin.
    auth.create_or_reset_admin("ops", PASSWORD)
    assert log_in(client).status_code == 302
    page = client.get("/admin/optout/").get_data(as_text=True)
    assert "whatsapp:+1555•••1111" in page and ADA not in page
    post_webhook.message("start", sender=ADA)
    run_jobs()
    post_webhook.message("back again", sender=ADA)
    run_jobs()
    assert bodies(fake_twilio)[2].startswith("Welcome back") and bodies(fake_twilio)[3] == "Answer to: back again"
    assert OptOut.select().count() == 0


def test_stop_to_one_number_leaves_the_others_answering_and_start_reopens_that_one(
        post_webhook, run_jobs, fake_twilio, operator):
    WhatsAppNumber.create(address=SALES, label="Sales")
    post_webhook.message("STOP", sender=ADA, To=SALES)
    run_jobs()
    post_webhook.message("any offers?", sender=ADA, To=SALES)
    post_webhook.message("my order is late", sender=ADA)  # to the default number (support)
    run_jobs()
    assert [(sent["From"], sent["Body"]) for sent in fake_twilio.sent][1:] == [
        (BOT_NUMBER, "Answer to: my order is late")]
    assert Message.get(Message.content == "any offers?").status == Status.OPTED_OUT.value
    assert [(row.user_phone, row.number) for row in OptOut.select()] == [(ADA, SALES)]
    page = operator.get("/admin/optout/").get_data(as_text=True)
    assert re.search(r'<td class="col-number" data-label="Number">\s*Sales\s*</td>', page)
    post_webhook.message("START", sender=ADA, To=SALES)
    post_webhook.message("any offers now?", sender=ADA, To=SALES)
    run_jobs()
    welcome, answer = bodies(fake_twilio)[-2:]
    assert welcome.startswith("Welcome back") and answer == "Answer to: any offers now?"
    assert OptOut.select().count() == 0


def test_an_operator_can_reverse_an_opt_out_in_the_admin(post_webhook, run_jobs, fake_twilio, client):
    post_webhook.message("STOP", sender=ADA)
    run_jobs()
    auth.create_or_reset_admin("ops", PASSWORD)
    assert log_in(client).status_code == 302
    token = csrf_token(client, "/admin/optout/")
    opt_out = OptOut.get()
    client.post("/admin/optout/remove/confirmed/", data={"id": opt_out.id, "csrf_token": token})
    assert OptOut.select().count() == 0
    post_webhook.message("hi again", sender=ADA)
    run_jobs()
    assert bodies(fake_twilio)[-1] == "Answer to: hi again"


def everything_of(sender: str, redis) -> dict:
    digits = sender.rsplit("+", 1)[1]
    return {
        "conversations": Conversation.select().where(Conversation.user_phone == sender).count(),
        "log_rows": WebhookLog.select().where(WebhookLog.body.contains(digits)).count(),
        "redis_keys": len(list(redis.scan_iter(f"*{sender_key(sender).split(':')[1]}*"))),
    }


@pytest.mark.postgres
def test_forget_asks_then_erases_everything_of_the_sender_on_yes(post_webhook, run_jobs, services, fake_twilio):
    post_webhook.message("Remember my order 42", sender=ADA)
    post_webhook.message("hello", sender=BOB)
    run_jobs()
    post_webhook.message("/forget", sender=ADA)
    run_jobs()
    assert "Reply YES within 5 minutes" in bodies(fake_twilio)[-1]
    post_webhook.message("yes", sender=ADA)
    run_jobs()
    assert bodies(fake_twilio)[-1] == "Done: everything I stored about you is erased."
    assert everything_of(ADA, services.redis) == {"conversations": 0, "log_rows": 0, "redis_keys": 0}
    assert Message.select().where(Message.content.contains("order 42")).count() == 0
    assert everything_of(BOB, services.redis)["conversations"] == 1  # others keep theirs


def test_yes_without_a_pending_forget_goes_to_the_ai(post_webhook, run_jobs, services, fake_twilio):
    post_webhook.message("/forget", sender=ADA)
    run_jobs()
    services.redis.delete(FORGET_PREFIX + sender_key(ADA))  # the five minutes passed
    post_webhook.message("YES", sender=ADA)
    run_jobs()
    assert bodies(fake_twilio)[-1] == "Answer to: YES"
    assert Conversation.select().where(Conversation.user_phone == ADA).count() == 1


def test_forget_while_a_job_of_the_sender_is_in_flight_leaves_nothing(post_webhook, workers, services,
                                                                       fake_openrouter, fake_twilio):
    fake_openrouter.delay_for = lambda messages: 2.0
    workers.start(WORKER_CONCURRENCY="8")
    post_webhook.message("a slow question", sender=ADA)
    assert wait_for(lambda: fake_openrouter.in_flight == 1, timeout=20)
    post_webhook.message("/forget", sender=ADA)
    post_webhook.message("YES", sender=ADA)
    assert wait_for(lambda: "Done: everything I stored about you is erased." in bodies(fake_twilio), timeout=60), \
        bodies(fake_twilio)
    wait_for(lambda: len(fake_twilio.sent) > 3, timeout=1.0)
    assert bodies(fake_twilio)[0] == "Answer to: a slow question" and len(fake_twilio.sent) == 3
    assert everything_of(ADA, services.redis) == {"conversations": 0, "log_rows": 0, "redis_keys": 0}
    assert Message.select().count() == 0
