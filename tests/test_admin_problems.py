"""Problems in plain sight: status badges, drop-down filters, the Problems view and its Retry, the
conversation list's summary columns, and the transcript's pairing, reply times and explained errors."""
from __future__ import annotations

import re
import threading
import uuid
from datetime import timedelta

import pytest

from chatbot.models import Conversation, Message, ReplyPart, Status, utcnow
from tests.conftest import csrf_token, log_in
from tests.fakes import FakeOpenRouter
from tests.support import conversation_for

ADA, BOB, CARL, DORA = ("whatsapp:+15550001111", "whatsapp:+15550002222", "whatsapp:+15550003333",
                        "whatsapp:+15550004444")
NO_CREDITS = "openrouter: Insufficient credits (status=402, code=402, permanent)"
BAD_NUMBER = "twilio: The 'To' number whatsapp:+1555•••3333 is not valid (status=400, code=21211, permanent)"


def message(conversation, role, content, status, created_at, **fields) -> Message:
    return Message.create(conversation=conversation, role=role, content=content, status=status,
                          created_at=created_at, **fields)


def part(answer: Message, number: int, status: str, error_code: int | None = None) -> ReplyPart:
    return ReplyPart.create(message=answer, number=number, twilio_sid="SM" + uuid.uuid4().hex, status=status,
                            error_code=error_code)


@pytest.fixture
def day(services):
    """A day with known answers: Ada answered (one a burst), Bob's question failed at the AI, Carl's
    reply refused by Twilio, Dora's reply undelivered and her next question stuck, Ada's newest fresh."""
    now = utcnow()
    ada, bob, carl, dora = (conversation_for(phone, name) for phone, name in
                            ((ADA, "Ada"), (BOB, "Bob"), (CARL, "Carl"), (DORA, "Dora")))
    asked = now - timedelta(hours=2)
    question = message(ada, "user", "What is the capital of France?", "answered", asked)
    answer = message(ada, "assistant", "Paris.", "sent", asked + timedelta(seconds=2), reply_to=question,
                     latency_ms=1500, sent_at=asked + timedelta(seconds=17.4), model="openai/gpt-4o-mini")
    part(answer, 1, "delivered")
    first = message(ada, "user", "And Italy?", "answered", asked + timedelta(minutes=1))
    second = message(ada, "user", "And Spain?", "answered", asked + timedelta(minutes=1, seconds=3))
    burst = message(ada, "assistant", "Rome and Madrid.", "sent", asked + timedelta(minutes=1, seconds=9),
                    reply_to=second, metadata={"answers": [first.id, second.id]},
                    sent_at=asked + timedelta(minutes=1, seconds=13))
    fresh = message(ada, "user", "Thanks, call me on +15550009999", "pending", now - timedelta(minutes=1))
    failed = message(bob, "user", "Hello?", "failed", now - timedelta(hours=1), error=NO_CREDITS)
    message(bob, "assistant", "Sorry, I can't answer right now.", "sent", now - timedelta(hours=1), reply_to=failed,
            metadata={"canned": "ai_failure"}, error=NO_CREDITS)
    carl_question = message(carl, "user", "Hi", "answered", now - timedelta(minutes=50))
    refused = message(carl, "assistant", "Hi Carl", "send_failed", now - timedelta(minutes=50),
                      reply_to=carl_question, error=BAD_NUMBER)
    dora_question = message(dora, "user", "Hi", "answered", now - timedelta(minutes=40))
    undelivered = message(dora, "assistant", "Hi Dora", "sent", now - timedelta(minutes=40),
                          reply_to=dora_question, parts_sent=1)
    part(undelivered, 1, "undelivered", 30008)
    stuck = message(dora, "user", "Anyone there?", "pending", now - timedelta(minutes=10))
    return {"ada": ada, "bob": bob, "carl": carl, "dora": dora, "question": question, "answer": answer,
            "burst": burst, "first": first, "second": second, "fresh": fresh, "failed": failed,
            "refused": refused, "undelivered": undelivered, "stuck": stuck}


def page(client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, path
    return response.get_data(as_text=True)


def listed_problems(html: str) -> set[int]:
    return {int(found) for found in re.findall(r'id="problem-(\d+)"', html)}


def problem_row(html: str, message_id: int) -> str:
    """The Problems page's entry of one message."""
    return html.split(f'id="problem-{message_id}"')[1].split("</li>")[0]


@pytest.mark.postgres
def test_problems_lists_exactly_the_failed_undelivered_and_stuck_messages(operator, day):
    html = page(operator, "/admin/problems/")

    assert listed_problems(html) == {day["failed"].id, day["refused"].id, day["undelivered"].id, day["stuck"].id}
    assert "OpenRouter HTTP 402" in html and "no credits" in html
    assert "Twilio error 21211" in html and "not a valid WhatsApp address" in html
    assert "Twilio error 30008" in html
    assert "No worker has answered" in html
    assert "+15550002222" not in html and "whatsapp:+1555•••2222" in html
    assert 'class="badge badge-danger status-badge status-failed"' in html
    assert 'class="badge badge-secondary status-badge status-pending"' in html


def test_problems_is_in_the_menu_and_behind_the_login(client, operator, day):
    assert 'href="/admin/problems/"' in page(operator, "/admin/")
    assert client.application.test_client().get("/admin/problems/").status_code == 302


def test_retry_is_refused_where_it_cannot_help(operator, day, services):
    html = page(operator, "/admin/problems/")
    row = problem_row(html, day["refused"].id)
    assert "Retry cannot help" in row and 'class="btn btn-primary btn-sm retry"' not in row

    token = csrf_token(operator, "/admin/problems/")
    answer = operator.post(f"/admin/problems/retry/{day['refused'].id}/", data={"csrf_token": token},
                           follow_redirects=True).get_data(as_text=True)

    assert "Not retried" in answer
    assert Message.get_by_id(day["refused"].id).status == Status.SEND_FAILED.value


def test_retry_needs_the_csrf_token_and_a_real_problem(operator, day):
    operator.post(f"/admin/problems/retry/{day['failed'].id}/")
    assert Message.get_by_id(day["failed"].id).status == Status.FAILED.value

    token = csrf_token(operator, "/admin/problems/")
    operator.post(f"/admin/problems/retry/{day['answer'].id}/", data={"csrf_token": token})
    assert Message.get_by_id(day["answer"].id).status == Status.SENT.value  # a delivered reply is not sent again


@pytest.mark.postgres
def test_retry_reanswers_a_failed_message_end_to_end(operator, post_webhook, run_jobs, fake_openrouter, fake_twilio):
    fake_openrouter.then(FakeOpenRouter.error(402, "Insufficient credits"))
    post_webhook.message("What is 2+2?", sender=ADA)
    run_jobs()
    question = Message.get(Message.content == "What is 2+2?")
    assert question.status == Status.FAILED.value
    assert listed_problems(page(operator, "/admin/problems/")) == {question.id}

    token = csrf_token(operator, "/admin/problems/")
    answer = operator.post(f"/admin/problems/retry/{question.id}/", data={"csrf_token": token},
                           follow_redirects=True).get_data(as_text=True)
    assert "Queued for another answer." in answer
    run_jobs()

    assert Message.get_by_id(question.id).status == Status.ANSWERED.value
    assert fake_twilio.sent[-1]["Body"] == "Answer to: What is 2+2?"
    assert listed_problems(page(operator, "/admin/problems/")) == set()


@pytest.mark.postgres
def test_retry_sends_an_undelivered_reply_again(operator, run_jobs, fake_twilio, day):
    token = csrf_token(operator, "/admin/problems/")
    # Dora's reply was taken by Twilio but not delivered (30008): a retry sends it again.
    undelivered = day["undelivered"]
    answer = operator.post(f"/admin/problems/retry/{undelivered.id}/", data={"csrf_token": token},
                           follow_redirects=True).get_data(as_text=True)
    assert "Queued for sending again." in answer
    run_jobs()

    assert "Hi Dora" in [sent["Body"] for sent in fake_twilio.sent]
    resent = Message.get_by_id(undelivered.id)
    assert resent.status == Status.SENT.value and resent.parts_sent == 1
    assert [(part.number, part.status) for part in resent.parts] == [(1, "queued")]


@pytest.mark.postgres
def test_message_status_is_a_drop_down_filter_with_badges(operator, day):
    listing = page(operator, "/admin/message/")
    assert 'class="badge badge-success status-badge status-answered"' in listing

    failed = page(operator, "/admin/message/?flt0_status_equals=failed")
    assert "Hello?" in failed and "Paris." not in failed and "Anyone there?" not in failed

    since = (utcnow() - timedelta(minutes=30)).strftime("%Y-%m-%d %H:%M:%S")
    recent = page(operator, f"/admin/message/?flt1_created_at_greater_than={since}")
    assert "Anyone there?" in recent and "Paris." not in recent


@pytest.mark.postgres
def test_messages_filter_by_number(operator, day):
    other = Conversation.create(user_phone="whatsapp:+15550005555", number="whatsapp:+14155550100")
    message(other, "user", "On the second number", "answered", utcnow())

    default = page(operator, "/admin/message/?flt2_number_equals=default")
    second = page(operator, "/admin/message/?flt2_number_equals=whatsapp:%2B14155550100")

    assert "Paris." in default and "On the second number" not in default
    assert "On the second number" in second and "Paris." not in second


def conversation_row(html: str, conversation: Conversation) -> str:
    return html.split(f'value="{conversation.id}"')[1].split("</tr>")[0]


@pytest.mark.postgres
def test_conversation_list_shows_count_preview_and_failure_badge(operator, day):
    html = page(operator, "/admin/conversation/")

    ada = conversation_row(html, day["ada"])
    assert re.search(r">\s*6\s*<", ada)  # six messages
    assert "Thanks, call me on +1555•••9999" in ada and "+15550009999" not in html
    assert "failure-badge" not in ada
    for key in ("bob", "carl", "dora"):
        assert '<span class="badge badge-danger failure-badge">1 failed</span>' in conversation_row(html, day[key])
    assert ">Transcript</a>" in ada and ">Delete</a>" in ada and "fa-trash" not in html


@pytest.mark.postgres
def test_transcript_pairs_answers_with_questions_and_shows_reply_times(operator, day):
    html = page(operator, f"/admin/conversation/details/?id={day['ada'].id}")

    answer = html.split(f'id="message-{day["answer"].id}"')[1]
    assert f'href="#message-{day["question"].id}"' in answer.split("message-content")[0]
    assert "replied in 17.4 s" in answer and "AI 1.5 s" in answer
    burst = html.split(f'id="message-{day["burst"].id}"')[1].split("message-content")[0]
    assert "answers 2 messages" in burst
    assert f'href="#message-{day["first"].id}"' in burst and f'href="#message-{day["second"].id}"' in burst
    assert "replied in 10.0 s" in html.split(f'id="message-{day["burst"].id}"')[1]


def test_transcript_shows_a_dash_until_the_reply_is_sent(operator, day):
    Message.update(sent_at=None).where(Message.id == day["answer"].id).execute()
    html = page(operator, f"/admin/conversation/details/?id={day['ada'].id}")
    assert "replied in —" in html.split(f'id="message-{day["answer"].id}"')[1]


def test_transcript_explains_error_codes_with_the_fix(operator, day):
    bob = page(operator, f"/admin/conversation/details/?id={day['bob'].id}")
    carl = page(operator, f"/admin/conversation/details/?id={day['carl'].id}")

    assert "OpenRouter HTTP 402:</strong> The OpenRouter account has no credits left." in bob
    assert "openrouter.ai/settings/credits" in bob
    assert "Twilio error 21211:</strong> The user&#39;s number is not a valid WhatsApp address." in carl
    assert 'class="badge badge-danger status-badge status-send_failed"' in carl


@pytest.mark.postgres
def test_transcript_actions_reset_deactivate_and_delete_after_confirmation(operator, day, services):
    ada = day["ada"]
    services.context.add_message(ada.id, "user", "hi", position=1.0, message_id=1)
    details = f"/admin/conversation/details/?id={ada.id}"
    html = page(operator, details)
    for button in ('id="reset-context"', 'id="deactivate"', 'id="delete-conversation"'):
        assert button in html
    token = csrf_token(operator, details)

    operator.post(f"/admin/conversation/reset/{ada.id}/", data={"csrf_token": token})
    assert not services.redis.exists(services.context.key(ada.id))
    operator.post(f"/admin/conversation/deactivate/{ada.id}/", data={"csrf_token": token})
    assert Conversation.get_by_id(ada.id).is_active is False

    confirmation = page(operator, f"/admin/conversation/delete/confirm/?id={ada.id}")
    assert "Delete 1 conversation?" in confirmation and "whatsapp:+1555•••1111" in confirmation
    assert Conversation.get_or_none(Conversation.id == ada.id) is not None
    operator.post("/admin/conversation/delete/confirmed/", data={"id": str(ada.id), "csrf_token": token})

    assert Conversation.get_or_none(Conversation.id == ada.id) is None
    assert Message.select().where(Message.conversation == ada.id).count() == 0
    assert Conversation.select().count() == 3


def test_delete_without_the_csrf_token_deletes_nothing(operator, day):
    operator.post("/admin/conversation/delete/confirmed/", data={"id": str(day["ada"].id)})
    assert Conversation.select().count() == 4


def signed_in_clients(app, count: int) -> list:
    """`count` browsers of the admin `ops`, each signed in with a session of its own."""
    clients = [app.test_client() for _ in range(count)]
    for browser in clients:
        assert log_in(browser).status_code == 302
    return clients


def click_at_once(clients, path: str) -> list[str]:
    """POST `path` from every client at the same moment, as a double (or triple) click does; return the
    flashed messages each got back."""
    tokens = [csrf_token(browser, "/admin/problems/") for browser in clients]
    start = threading.Barrier(len(clients))
    answers = [""] * len(clients)

    def click(index: int) -> None:
        start.wait()
        answers[index] = clients[index].post(path, data={"csrf_token": tokens[index]},
                                             follow_redirects=True).get_data(as_text=True)

    threads = [threading.Thread(target=click, args=(index,)) for index in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.mark.postgres
def test_concurrent_retries_send_an_undelivered_reply_exactly_once(app, admin_user, run_jobs, fake_twilio, day):
    undelivered = day["undelivered"]
    clients = signed_in_clients(app, 3)
    for round_ in range(3):
        answers = click_at_once(clients, f"/admin/problems/retry/{undelivered.id}/")
        run_jobs()

        assert sum("Queued for sending again." in answer for answer in answers) == 1, answers
        assert all("Queued for sending again." in answer or "being retried already" in answer
                   or "solved already" in answer for answer in answers), answers
        assert [sent["Body"] for sent in fake_twilio.sent].count("Hi Dora") == round_ + 1
        resent = Message.get_by_id(undelivered.id)
        assert (resent.status, resent.parts_sent) == (Status.SENT.value, 1)
        # Twilio reports the new part undelivered too: the next round starts from the same problem.
        ReplyPart.update(status="undelivered", error_code=30008).where(ReplyPart.message == undelivered.id).execute()
