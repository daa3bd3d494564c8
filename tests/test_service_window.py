"""WhatsApp's 24-hour window: a reply past it goes as the number's approved template, or is held."""
from __future__ import annotations

import html
import json
from datetime import timedelta

import pytest
from rq.job import Job

from chatbot.jobs import queueing, tasks
from chatbot.models import Conversation, Message, ReplyPart, Role, Status, utcnow
from chatbot.whatsapp import TEMPLATE_VARIABLE_LIMIT, utf16_length
from tests.conftest import BOT_NUMBER
from tests.fakes import TEMPLATE_TEXT, FakeTwilio
from tests.support import conversation_for
from tests.test_takeover import details, logged_in, reply, take_over

ADA = "whatsapp:+15550001111"
TEMPLATE = "HX" + "0123456789abcdef" * 2


@pytest.fixture
def template_sid(request):
    """WINDOW_TEMPLATE_SID of the test deployment: none unless a test asks for one."""
    return getattr(request, "param", "")


@pytest.fixture
def config(config, template_sid):
    return config.replace(window_template_sid=template_sid)


with_template = pytest.mark.parametrize("template_sid", [TEMPLATE], indirect=True)


def written_ago(hours: float, role: Role | None = None) -> None:
    """Move the stored messages (only `role`'s when given) back in time, as if `hours` had passed."""
    moved = Message.update(created_at=utcnow() - timedelta(hours=hours))
    (moved.where(Message.role == role.value) if role else moved).execute()


def the_answer() -> Message:
    return Message.get(Message.role == Role.ASSISTANT.value)


@with_template
def test_reply_past_the_window_goes_once_as_the_template_on_one_line(post_webhook, run_jobs, fake_openrouter,
                                                                     fake_twilio):
    fake_openrouter.reply_for = lambda messages: "Paris.\n\nAnd Rome  \t is Italy's.      Enjoy!"
    post_webhook.message("Capitals?", sender=ADA)
    written_ago(25, Role.USER)
    run_jobs()

    [form] = fake_twilio.sent
    assert (form["To"], form["From"], form["ContentSid"]) == (ADA, BOT_NUMBER, TEMPLATE)
    assert "Body" not in form
    variable = "Paris. And Rome is Italy's. Enjoy!"
    assert json.loads(form["ContentVariables"]) == {"1": variable}
    [accepted] = fake_twilio.accepted
    assert accepted["body"] == TEMPLATE_TEXT.replace("{{1}}", variable)
    answer = the_answer()
    assert (answer.status, answer.parts_sent, answer.metadata["template"]) == (Status.SENT.value, 1, TEMPLATE)
    assert [part.twilio_sid for part in ReplyPart.select()] == [accepted["sid"]]

    tasks.sweep_pending_messages()
    run_jobs()
    assert len(fake_twilio.sent) == 1


@with_template
def test_long_reply_past_the_window_is_cut_to_fit_one_template_variable(post_webhook, run_jobs, fake_openrouter,
                                                                        fake_twilio):
    paragraphs = [" ".join(f"Sentence {n}.{m} says something." for m in range(20)) for n in range(5)]
    fake_openrouter.reply_for = lambda messages: "\n\n".join(paragraphs)
    post_webhook.message("Tell me a lot", sender=ADA)
    written_ago(25, Role.USER)
    run_jobs()

    [form] = fake_twilio.sent
    variable = json.loads(form["ContentVariables"])["1"]
    assert TEMPLATE_VARIABLE_LIMIT - 40 <= utf16_length(variable) <= TEMPLATE_VARIABLE_LIMIT
    assert variable.endswith("something.…") and " ".join(paragraphs).startswith(variable[:-1])


def test_reply_past_the_window_without_a_template_is_held_with_the_fix_and_never_retried(
        app, post_webhook, run_jobs, fake_twilio):
    post_webhook.message("Hello", sender=ADA)
    written_ago(25, Role.USER)
    last_message_at = Message.get(Message.role == Role.USER.value).created_at
    run_jobs()

    assert fake_twilio.sent == []
    answer = the_answer()
    assert answer.status == Status.OUTSIDE_WINDOW.value
    assert answer.error == (
        f"outside WhatsApp's 24-hour window: the user's last message was at {last_message_at:%Y-%m-%d %H:%M} UTC; "
        "configure an approved template (WINDOW_TEMPLATE_SID or "
        f"`.venv/bin/flask numbers update {BOT_NUMBER} --template HX…`) or wait for the user to write again")

    tasks.sweep_pending_messages()
    run_jobs()
    assert fake_twilio.sent == []
    assert the_answer().status == Status.OUTSIDE_WINDOW.value

    conversation = Conversation.get(Conversation.user_phone == ADA)
    page = html.unescape(logged_in(app, "ops").get(details(conversation)).get_data(as_text=True))
    assert "not sent: outside the 24-hour window" in page
    assert "outside WhatsApp's 24-hour window: the user's last message was at" in page
    assert "WhatsApp's 24-hour window closed since" in page


def test_twilio_refusing_for_the_window_without_a_template_holds_the_reply(post_webhook, run_jobs, fake_twilio):
    fake_twilio.closed_windows.add(ADA)  # Twilio's clock already closed the window; ours has not
    post_webhook.message("Hello", sender=ADA)
    run_jobs()

    assert len(fake_twilio.sent) == 1 and fake_twilio.accepted == []
    answer = the_answer()
    assert (answer.status, answer.sending_part) == (Status.OUTSIDE_WINDOW.value, None)
    assert "the user's last message was at" in answer.error and "WINDOW_TEMPLATE_SID" in answer.error


@with_template
def test_twilio_refusing_for_the_window_sends_the_reply_as_the_template(post_webhook, run_jobs, fake_twilio):
    fake_twilio.closed_windows.add(ADA)
    post_webhook.message("Hello", sender=ADA)
    run_jobs()

    refused, taken = fake_twilio.sent
    assert (refused["Body"], "ContentSid" in refused) == ("Answer to: Hello", False)
    assert (taken["ContentSid"], json.loads(taken["ContentVariables"])) == (TEMPLATE, {"1": "Answer to: Hello"})
    answer = the_answer()
    assert (answer.status, answer.metadata["template"]) == (Status.SENT.value, TEMPLATE)


@pytest.mark.postgres
@with_template
def test_sweeper_sends_an_answer_left_unsent_past_the_window_as_the_template_once(
        post_webhook, run_jobs, redis, fake_twilio):
    fake_twilio.then(*[FakeTwilio.error(503, 20500, "Service unavailable")] * 20)
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    assert the_answer().status == Status.UNSENT.value
    fake_twilio.script.clear()
    refused = len(fake_twilio.sent)
    # Thirty hours later Twilio is back and the job's retries are long spent.
    Job.fetch(queueing.job_id_for(Message.get(Message.role == Role.USER.value).id), connection=redis).delete()
    written_ago(30)

    assert tasks.sweep_pending_messages() == 1
    run_jobs()
    tasks.sweep_pending_messages()
    run_jobs()

    [form] = fake_twilio.sent[refused:]
    assert (form["ContentSid"], json.loads(form["ContentVariables"])) == (TEMPLATE, {"1": "Answer to: Hello"})
    assert (the_answer().status, the_answer().metadata["template"]) == (Status.SENT.value, TEMPLATE)


@with_template
def test_template_twilio_took_without_the_run_learning_it_is_found_not_sent_again(
        post_webhook, run_jobs, services, redis, fake_twilio):
    fake_twilio.then(*[FakeTwilio.error(503, 20500, "Service unavailable")] * 20)
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    fake_twilio.script.clear()
    Job.fetch(queueing.job_id_for(Message.get(Message.role == Role.USER.value).id), connection=redis).delete()
    written_ago(30)
    # A run handed the template to Twilio, which took it, and died before hearing back.
    answer = the_answer()
    Message.update(sending_part=1, sending_since=utcnow()).where(Message.id == answer.id).execute()
    taken = services.whatsapp.send_template(ADA, TEMPLATE, answer.content)
    posts = len(fake_twilio.sent)

    tasks.sweep_pending_messages()
    run_jobs()

    assert len(fake_twilio.sent) == posts
    assert fake_twilio.lookups
    assert (the_answer().status, [part.twilio_sid for part in ReplyPart.select()]) == (Status.SENT.value, [taken])


@pytest.mark.postgres
def test_answer_unsent_for_a_week_is_given_up(post_webhook, run_jobs, redis, fake_twilio):
    fake_twilio.then(*[FakeTwilio.error(503, 20500, "Service unavailable")] * 20)
    post_webhook.message("Hello", sender=ADA)
    run_jobs()
    fake_twilio.script.clear()
    Job.fetch(queueing.job_id_for(Message.get(Message.role == Role.USER.value).id), connection=redis).delete()
    posts = len(fake_twilio.sent)
    written_ago(8 * 24)

    assert tasks.sweep_pending_messages() == 0
    assert len(fake_twilio.sent) == posts
    answer = the_answer()
    assert (answer.status, answer.error) == (Status.SEND_FAILED.value, "not delivered within 7 days, 0:00:00")


@with_template
def test_operator_reply_after_a_long_takeover_goes_as_the_template(app, post_webhook, run_jobs, fake_twilio,
                                                                   fake_openrouter):
    operator = logged_in(app, "ops")
    conversation = conversation_for(ADA)
    take_over(operator, conversation)
    post_webhook.message("I want to talk to a person", sender=ADA)
    run_jobs()
    written_ago(25, Role.USER)

    reply(operator, conversation, "Hi, this is Ada from support.\nSorry for the wait.")
    run_jobs()

    [form] = fake_twilio.sent
    assert (form["ContentSid"], json.loads(form["ContentVariables"])) == (
        TEMPLATE, {"1": "Hi, this is Ada from support. Sorry for the wait."})
    by_hand = Message.get(Message.operator == "ops")
    assert (by_hand.status, by_hand.metadata["template"]) == (Status.SENT.value, TEMPLATE)
    assert fake_openrouter.completions == []
    page = operator.get(details(conversation)).get_data(as_text=True)
    assert f"sent past the 24-hour window as template {TEMPLATE}" in page


@with_template
def test_answer_inside_the_window_is_sent_as_usual(app, post_webhook, run_jobs, fake_twilio):
    post_webhook.message("Hello", sender=ADA)
    written_ago(23, Role.USER)
    run_jobs()

    assert fake_twilio.sent == [{"To": ADA, "From": BOT_NUMBER, "Body": "Answer to: Hello",
                                 "StatusCallback": "https://bot.example.com/whatsapp/status"}]
    assert "template" not in the_answer().metadata
    conversation = Conversation.get(Conversation.user_phone == ADA)
    page = html.unescape(logged_in(app, "ops").get(details(conversation)).get_data(as_text=True))
    assert "WhatsApp's 24-hour window open until" in page


@pytest.mark.postgres
def test_window_is_opened_by_the_senders_latest_message_to_the_number_in_any_conversation(services):
    earlier, other_number = conversation_for(ADA), Conversation.create(user_phone=ADA, number="whatsapp:+15550009999")
    Message.create(conversation=earlier, role=Role.USER.value, content="hi", status=Status.ANSWERED.value,
                   created_at=utcnow() - timedelta(hours=30))
    Conversation.end([earlier.id], services.context)
    later = conversation_for(ADA)
    Message.create(conversation=later, role=Role.USER.value, content="again", status=Status.ANSWERED.value,
                   created_at=utcnow() - timedelta(hours=2))
    Message.create(conversation=other_number, role=Role.USER.value, content="there", status=Status.ANSWERED.value,
                   created_at=utcnow() - timedelta(hours=1))

    assert not earlier.service_window().is_closed()
    assert abs(earlier.service_window().closes_at - (utcnow() + timedelta(hours=22))) < timedelta(minutes=1)
    assert conversation_for("whatsapp:+15550002222").service_window().closes_at is None
