"""Problems at scale: grouped by cause with counts, Retry all for a group (each problem still retried
once), dismissal with a reason (kept, audited), badges that tell the delivery, flashes that name the customer."""
from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest

from chatbot.models import AuditEvent, Dismissal, Message, Status, utcnow
from tests.conftest import csrf_token
from tests.support import conversation_for
from tests.test_admin_problems import listed_problems, page, part, problem_row, signed_in_clients

BAD_KEY = "openrouter: Invalid API key (status=401, code=401, permanent)"
NO_CREDITS = "openrouter: Insufficient credits (status=402, code=402, permanent)"
CUSTOMERS = [(f"whatsapp:+155500000{number:02d}", name)
             for number, name in enumerate(("Ann", "Ben", "Cat", "Dan", "Eve", "Fay"), start=1)]
DORA = "whatsapp:+15550004444"


@pytest.fixture
def bad_key_day(services):
    """Six customers whose questions failed on the same refused key, Bob's on credits, Dora's reply undelivered."""
    now = utcnow()
    failed = [Message.create(conversation=conversation_for(phone, name), role="user", content=f"Question from {name}",
                             status=Status.FAILED.value, error=BAD_KEY, created_at=now - timedelta(minutes=minute))
              for minute, (phone, name) in zip(range(20, 14, -1), CUSTOMERS, strict=True)]
    bob = Message.create(conversation=conversation_for("whatsapp:+15550002222", "Bob"), role="user", content="Hi",
                         status=Status.FAILED.value, error=NO_CREDITS, created_at=now - timedelta(minutes=3))
    dora = conversation_for(DORA, "Dora")
    question = Message.create(conversation=dora, role="user", content="Hi", status=Status.ANSWERED.value)
    undelivered = Message.create(conversation=dora, role="assistant", content="Hi Dora", status=Status.SENT.value,
                                 reply_to=question, parts_sent=1)
    part(undelivered, 1, "undelivered", 30008)
    return {"failed": failed, "bob": bob, "undelivered": undelivered}


def group_of(html: str, message_id: int) -> str:
    """The Problems page's group holding one message."""
    return next(group for group in html.split('class="card mb-2 problem-group"')[1:]
                if f'id="problem-{message_id}"' in group)


def post(client, path: str, message_ids, **fields) -> str:
    data = {"csrf_token": csrf_token(client, "/admin/problems/"), "message_id": [str(i) for i in message_ids], **fields}
    return client.post(path, data=data, follow_redirects=True).get_data(as_text=True)


def test_identical_failures_are_one_group_with_a_count_and_one_retry_all(operator, bad_key_day):
    html = page(operator, "/admin/problems/")
    six = group_of(html, bad_key_day["failed"][0].id)

    assert {int(found) for found in re.findall(r'id="problem-(\d+)"', six)} == {m.id for m in bad_key_day["failed"]}
    assert re.search(r'class="badge badge-pill badge-dark mr-2 group-count"[^>]*>6<', six)
    assert six.count(">Retry all 6</button>") == 1
    assert "OpenRouter HTTP 401:</strong> OpenRouter refused the API key." in six
    # Newest first.
    assert "Fay (whatsapp:+1555•••0006), Eve (whatsapp:+1555•••0005), Dan (whatsapp:+1555•••0004) and 3 more" in six
    # Bob's failure has another cause: a group of its own, with no Retry all for one.
    bob = group_of(html, bad_key_day["bob"].id)
    assert bob != six and "OpenRouter HTTP 402" in bob and "Retry all" not in bob
    assert len(listed_problems(html)) == 8


def test_an_undelivered_reply_wears_its_delivery_status_not_sent(operator, bad_key_day):
    row = problem_row(page(operator, "/admin/problems/"), bad_key_day["undelivered"].id)
    assert "status-undelivered" in row and "badge-danger" in row
    assert "status-sent" not in row


def test_retry_all_answers_each_question_once_and_names_the_customers(operator, bad_key_day, run_jobs,
                                                                      fake_openrouter, fake_twilio):
    ids = [message.id for message in bad_key_day["failed"]]
    answer = post(operator, "/admin/problems/retry-group/", ids)

    assert "Retried 6: Fay (whatsapp:+1555•••0006), Eve (whatsapp:+1555•••0005), Dan (whatsapp:+1555•••0004) and " \
           "3 more." in answer
    assert not re.search(r"[Mm]essage \d", answer)
    run_jobs()
    assert sorted(sent["Body"] for sent in fake_twilio.sent) == sorted(
        f"Answer to: Question from {name}" for _, name in CUSTOMERS)
    assert all(Message.get_by_id(i).status == Status.ANSWERED.value for i in ids)
    assert listed_problems(page(operator, "/admin/problems/")) == {bad_key_day["bob"].id,
                                                                   bad_key_day["undelivered"].id}


@pytest.mark.postgres
def test_retry_all_clicked_twice_at_once_still_answers_each_once(app, admin_user, bad_key_day, run_jobs, fake_twilio):
    ids = [str(message.id) for message in bad_key_day["failed"]]
    clients = signed_in_clients(app, 2)
    tokens = [csrf_token(client, "/admin/problems/") for client in clients]
    start, answers = threading.Barrier(2), ["", ""]

    def click(index: int) -> None:
        start.wait()
        answers[index] = clients[index].post("/admin/problems/retry-group/", follow_redirects=True, data={
            "csrf_token": tokens[index], "message_id": ids}).get_data(as_text=True)

    threads = [threading.Thread(target=click, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run_jobs()

    assert len(fake_twilio.sent) == 6, answers
    assert sorted(sent["To"] for sent in fake_twilio.sent) == sorted(phone for phone, _ in CUSTOMERS)


def test_a_single_retry_speaks_of_the_customer(operator, bad_key_day):
    undelivered = bad_key_day["undelivered"]
    answer = post(operator, f"/admin/problems/retry/{undelivered.id}/", [])
    assert "Dora (whatsapp:+1555•••4444): Queued for sending again." in answer
    assert f"Message {undelivered.id}" not in answer


@pytest.mark.postgres
def test_dismissing_a_row_needs_a_reason_and_is_kept_and_audited(operator, bad_key_day):
    bob = bad_key_day["bob"]
    refused = post(operator, "/admin/problems/dismiss/", [bob.id], reason="   ")
    assert "Not dismissed: say why" in refused and bob.id in listed_problems(refused)

    answer = post(operator, "/admin/problems/dismiss/", [bob.id], reason="Bob called; answered by phone")
    assert "Dismissed 1 (Bob (whatsapp:+1555•••2222)): Bob called; answered by phone" in answer
    assert bob.id not in listed_problems(answer)
    # A second dismissal (a stale page) keeps the first one's reason.
    assert Dismissal.dismiss([bob.id], "again", "someone") == 0
    dismissal = Dismissal.get(Dismissal.message == bob.id)
    assert (dismissal.reason, dismissal.dismissed_by) == ("Bob called; answered by phone", "ops")
    [event] = AuditEvent.select().where(AuditEvent.action == "problem_dismissed")
    assert event.actor == "ops" and event.target == "Bob (whatsapp:+1555•••2222)"
    assert "Bob called; answered by phone" in event.detail and "+15550002222" not in event.detail


def test_dismissing_a_group_takes_every_problem_of_it_off_the_page(operator, bad_key_day):
    ids = [message.id for message in bad_key_day["failed"]]
    answer = post(operator, "/admin/problems/dismiss/", ids, reason="Old key, replaced since")
    assert "Dismissed 6 (Fay (whatsapp:+1555•••0006), Eve" in answer
    assert listed_problems(answer) == {bad_key_day["bob"].id, bad_key_day["undelivered"].id}
    # Dismissed is not solved: the questions stay failed, and a retry from the CLI can still take them.
    assert all(Message.get_by_id(i).status == Status.FAILED.value for i in ids)
