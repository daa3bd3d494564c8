"""The handoff inbox: who waits for a person, claiming and resolving, notes, canned replies and the
conversation page's poll for new messages."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from chatbot.handoff import open_handoff
from chatbot.models import CannedReply, Conversation, Handoff, HandoffReason, Message, Note, utcnow
from tests.conftest import csrf_token
from tests.support import conversation_for
from tests.test_takeover import details, logged_in

ANN, BOB = "whatsapp:+15550001111", "whatsapp:+15550002222"
INBOX = "/admin/inbox/"


def waiting_customer(phone: str = ANN, name: str = "Ann", words: str = "I want a person, call me on +15550009999",
                     opened_minutes_ago: int = 5, summary: str = "wants a refund") -> Handoff:
    """A customer who wrote and was handed to a person `opened_minutes_ago` minutes ago."""
    conversation = conversation_for(phone, name)
    question = Message.create(conversation=conversation, role="user", status="waiting", content=words)
    handoff = open_handoff(None, conversation, question, HandoffReason.CUSTOMER_REQUEST, "phrase", summary)
    Handoff.update(opened_at=utcnow() - timedelta(minutes=opened_minutes_ago)).where(Handoff.id == handoff.id).execute()
    return Handoff.get_by_id(handoff.id)


def post(client, path: str, form: dict | None = None, token_from: str = INBOX):
    return client.post(path, data={"csrf_token": csrf_token(client, token_from), **(form or {})})


def page_text(client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def menu_label(page: str) -> str:
    link = re.search(r'<a class="dropdown-item[^"]*" href="/admin/inbox/">\s*([^<]*?)\s*</a>', page)
    assert link, "no inbox entry in the menu"
    return link.group(1)


def test_every_inbox_page_and_post_needs_a_login(client):
    handoff = waiting_customer()
    conversation_id = handoff.conversation_id
    for path in (INBOX, "/admin/cannedreply/", "/admin/cannedreply/new/"):
        response = client.get(path)
        assert response.status_code == 302 and "/admin/login/" in response.location, path
    assert client.get(f"/admin/inbox/{conversation_id}/since/0.json").status_code == 401
    for path in (f"/admin/inbox/{handoff.id}/claim/", f"/admin/inbox/{handoff.id}/resolve/",
                 f"/admin/conversation/note/{conversation_id}/"):
        response = client.post(path, data={"note": "sneaky"})
        assert response.status_code == 302 and "/admin/login/" in response.location, path
    handoff = Handoff.get_by_id(handoff.id)
    assert (handoff.claimed_by, handoff.resolved_at) == (None, None)
    assert Note.select().count() == 0


def test_every_inbox_post_checks_the_csrf_token(operator):
    handoff = waiting_customer()
    for path in (f"/admin/inbox/{handoff.id}/claim/", f"/admin/inbox/{handoff.id}/resolve/",
                 f"/admin/conversation/note/{handoff.conversation_id}/"):
        operator.post(path, data={"note": "forged"})
    handoff = Handoff.get_by_id(handoff.id)
    assert (handoff.claimed_by, handoff.resolved_at) == (None, None)
    assert Note.select().count() == 0


def test_inbox_lists_open_handoffs_oldest_wait_first_with_numbers_masked(operator):
    waiting_customer(BOB, "Bob", "Where is my parcel?", opened_minutes_ago=3, summary="parcel late")
    waiting_customer(ANN, "Ann", opened_minutes_ago=130)
    done = waiting_customer("whatsapp:+15550003333", "Cy", "Thanks", opened_minutes_ago=500)
    Handoff.update(resolved_at=utcnow()).where(Handoff.id == done.id).execute()

    page = page_text(operator, INBOX)
    assert page.index("Ann") < page.index("Bob")
    assert "Cy" not in page
    assert "whatsapp:+1555•••1111" in page and "whatsapp:+1555•••2222" in page
    assert "+15550001111" not in page and "+15550002222" not in page and "+15550009999" not in page
    assert "The customer asked for a person" in page and "wants a refund" in page and "parcel late" in page
    assert "waiting 2 h 10 min" in page and "waiting 3 min" in page
    assert "Last message: “I want a person, call me on +1555•••9999”" in page
    assert "Nobody has claimed it." in page


def test_the_menu_counts_the_customers_waiting(operator):
    assert menu_label(page_text(operator, "/admin/problems/")) == "Waiting"
    waiting_customer(ANN)
    waiting_customer(BOB, "Bob")
    assert menu_label(page_text(operator, "/admin/problems/")) == "Waiting (2)"
    assert re.search(r">\s*Inbox \(2\)<", page_text(operator, "/admin/problems/"))


def test_claiming_assigns_the_handoff_and_a_second_claim_is_refused(app, operator):
    handoff = waiting_customer()
    response = post(operator, f"/admin/inbox/{handoff.id}/claim/")
    assert response.status_code == 302
    assert "Claimed: the customer is yours to answer." in page_text(operator, INBOX)
    handoff = Handoff.get_by_id(handoff.id)
    assert handoff.claimed_by == "ops" and handoff.claimed_at is not None
    assert Conversation.get_by_id(handoff.conversation_id).paused_by == "ops"
    assert "Claimed by <strong>ops</strong>" in page_text(operator, INBOX)

    bo = logged_in(app, "bo")
    post(bo, f"/admin/inbox/{handoff.id}/claim/")
    assert "Not claimed: ops has claimed it already." in page_text(bo, INBOX)
    assert Handoff.get_by_id(handoff.id).claimed_by == "ops"


def test_resolving_closes_the_handoff_and_hands_the_conversation_back(operator):
    handoff = waiting_customer()
    post(operator, f"/admin/inbox/{handoff.id}/claim/")
    post(operator, f"/admin/inbox/{handoff.id}/resolve/")
    handoff = Handoff.get_by_id(handoff.id)
    assert handoff.resolved_at is not None and handoff.resolved_by == "ops"
    assert Conversation.get_by_id(handoff.conversation_id).paused_at is None
    assert "Nobody is waiting for a person." in page_text(operator, INBOX)

    transcript = page_text(operator, details(handoff.conversation))
    assert "Handed to a person: the customer asked for a person — wants a refund" in transcript
    assert "Resolved by ops" in transcript
    assert 'id="handoff-banner"' not in transcript


def test_the_conversation_page_shows_the_open_handoff_with_claim_and_resolve(operator):
    handoff = waiting_customer()
    page = page_text(operator, details(handoff.conversation))
    banner = page[page.index('id="handoff-banner"'):page.index('class="transcript-scroll"')]
    assert "the customer asked for a person" in banner and "wants a refund" in banner
    assert "Nobody has claimed it yet." in banner
    assert f"/admin/inbox/{handoff.id}/claim/" in banner and f"/admin/inbox/{handoff.id}/resolve/" in banner
    # The reply box is there already: the handoff paused the conversation for a person.
    assert 'id="operator-reply"' in page


def test_handing_back_with_a_handoff_open_resolves_it(operator):
    handoff = waiting_customer()
    post(operator, f"/admin/conversation/handback/{handoff.conversation_id}/", token_from=details(handoff.conversation))
    assert Handoff.get_by_id(handoff.id).resolved_by == "ops"
    assert Conversation.get_by_id(handoff.conversation_id).paused_at is None


def test_notes_are_stored_and_shown_and_never_sent(operator, services, run_jobs, fake_twilio):
    handoff = waiting_customer()
    path = details(handoff.conversation)
    response = post(operator, f"/admin/conversation/note/{handoff.conversation_id}/",
                    {"note": "Refund approved by Dana, <b>do not</b> promise a date"}, token_from=path)
    assert response.status_code == 302 and response.location.endswith("#chat")
    note = Note.get()
    assert (note.author, note.text) == ("ops", "Refund approved by Dana, <b>do not</b> promise a date")
    page = page_text(operator, path)
    assert "Internal note by ops" in page
    assert "Refund approved by Dana, &lt;b&gt;do not&lt;/b&gt; promise a date" in page
    assert services.queue.count == 0
    run_jobs()
    assert fake_twilio.sent == []
    assert Message.select().where(Message.content.contains("Refund approved")).count() == 0


def test_a_canned_reply_fills_the_reply_box(operator):
    handoff = waiting_customer()
    canned = CannedReply.create(title="Refund steps", text="Refunds take 5 working days; I have started yours.")
    CannedReply.create(title="Hello", text="Hello! A person here.")
    path = details(handoff.conversation)
    assert re.search(r'<textarea name="reply" id="reply"[^>]*></textarea>', page_text(operator, path))
    assert ">Refund steps</option>" in page_text(operator, path)
    page = page_text(operator, f"{path}&canned={canned.id}")
    assert re.search(r'<textarea name="reply" id="reply"[^>]*>Refunds take 5 working days; I have started yours.'
                     r'</textarea>', page)
    assert re.search(r'<textarea name="reply" id="reply"[^>]*></textarea>',
                     page_text(operator, f"{path}&canned=99999999999"))


def test_canned_replies_are_managed_in_the_panel(operator):
    token = csrf_token(operator, "/admin/cannedreply/new/")
    operator.post("/admin/cannedreply/new/", data={"csrf_token": token, "title": "Opening hours",
                                                   "text": "We open at nine."})
    assert CannedReply.get().text == "We open at nine."
    assert "Opening hours" in page_text(operator, "/admin/cannedreply/")


def test_the_poll_returns_only_the_messages_after_the_given_one_masked(operator):
    handoff = waiting_customer()
    first = Message.get(Message.conversation == handoff.conversation_id)
    newer = Message.create(conversation=handoff.conversation_id, role="user", status="waiting",
                           content="Still there? My number is +15550007777")
    other = conversation_for(BOB)
    Message.create(conversation=other, role="user", status="waiting", content="Not this conversation")

    answer = operator.get(f"/admin/inbox/{handoff.conversation_id}/since/{first.id}.json").get_json()
    assert answer == {"messages": [{"id": newer.id, "role": "user", "text": "Still there? My number is +1555•••7777",
                                    "time": newer.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")}]}
    assert operator.get(f"/admin/inbox/{handoff.conversation_id}/since/{newer.id}.json").get_json() == {
        "messages": []}
    assert len(operator.get(f"/admin/inbox/{handoff.conversation_id}/since/0.json").get_json()["messages"]) == 2


@pytest.mark.parametrize("path", ["/admin/inbox/not-a-uuid/since/0.json",
                                  "/admin/inbox/00000000-0000-0000-0000-000000000000/since/99999999999.json"])
def test_a_malformed_poll_is_not_found(operator, path):
    assert operator.get(path).status_code == 404


def test_a_notification_problem_is_shown(operator):
    handoff = waiting_customer()
    Handoff.update(notify_error="HTTP 500 from the team's webhook for +15550001111").where(
        Handoff.id == handoff.id).execute()
    page = page_text(operator, INBOX)
    assert "The team could not be told by webhook: HTTP 500 from the team&#39;s webhook for +1555•••1111" in page
    assert "+15550001111" not in page
    assert "The team could not be told by webhook" in page_text(operator, details(handoff.conversation))
