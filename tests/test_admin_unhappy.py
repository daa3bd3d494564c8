"""The Unanswered and unhappy page over HTTP: low ratings and questions the knowledge did not cover, merged
newest first, each linked to its place in the transcript, phone numbers masked, open to every role."""
from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest

from chatbot.models import Conversation, GapReason, KnowledgeGap, Message, Origin, Rating, WhatsAppNumber
from chatbot.roles import Role
from tests.support import conversation_for
from tests.test_admin_roles import signed_in_as

PAGE = "/admin/unhappy/"
ADA, BOB, CY = "whatsapp:+15550001111", "whatsapp:+15550002222", "whatsapp:+15550003333"
SALES = "whatsapp:+15557770001"
# Fixed moments, so nothing depends on today's date.
MONDAY = datetime(2030, 1, 7, 9, 0)


@pytest.fixture
def viewer(app):
    return signed_in_as(app, Role.VIEWER)


def page_of(client, **params) -> str:
    response = client.get(PAGE, query_string=params)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def rows_of(page: str) -> list[tuple[str, str]]:
    """Each row's link and what kind it is, in the page's order."""
    return re.findall(r'<tr class="unhappy-row">\s*<td[^>]*><a href="([^"]+)"'
                      r'.*?<td class="unhappy-kind"[^>]*>([^<]*)</td>', page, re.S)


def asked(conversation: Conversation, text: str, **fields) -> Message:
    return Message.create(conversation=conversation, role="user", status="answered", content=text, **fields)


def rated(conversation: Conversation, score: int, at: datetime, before: str = "My parcel never came") -> Rating:
    """The customer's last question, then their reply carrying the score, and the rating it made."""
    asked(conversation, before)
    reply = asked(conversation, str(score))
    return Rating.create(conversation=conversation, message=reply, score=score, created_at=at)


def gap(conversation: Conversation, question: str, at: datetime, **fields) -> KnowledgeGap:
    message = asked(conversation, question, **fields)
    return KnowledgeGap.create(message=message, number=conversation.number, question=question,
                               reason=GapReason.LOW_SCORE.value, best_score=0.12, created_at=at)


def transcript(conversation: Conversation, message_id: int | None = None) -> str:
    link = f"/admin/conversation/details/?id={conversation.id}"
    return f"{link}#message-{message_id}" if message_id else link


@pytest.mark.postgres
def test_a_low_rating_and_a_question_not_covered_are_listed_newest_first_and_a_good_rating_is_not(viewer):
    ada, bob, cy = conversation_for(ADA), conversation_for(BOB), conversation_for(CY)
    low = rated(ada, 2, MONDAY)
    rated(bob, 5, MONDAY + timedelta(hours=1), before="Thanks, all good")
    missing = gap(cy, "Do you ship to Mars?", MONDAY + timedelta(hours=2))
    page = page_of(viewer)
    assert rows_of(page) == [
        (transcript(cy, missing.message_id), "not covered: best passage scored low (0.12)"),
        (transcript(ada, low.message_id), "rated 2/5"),
    ]
    assert "rated 5/5" not in page and "Thanks, all good" not in page
    assert "Do you ship to Mars?" in page and "My parcel never came" in page
    # The transcript has the anchor a row links to.
    assert f'id="message-{low.message_id}"' in viewer.get(transcript(ada)).get_data(as_text=True)


def test_senders_and_numbers_in_the_text_are_masked(viewer):
    gap(conversation_for(ADA), "Can you call me on +447700900123 about it?", MONDAY)
    page = page_of(viewer)
    assert "whatsapp:+1555•••1111" in page and "15550001111" not in page
    assert "+4477•••0123" in page and "447700900123" not in page


def test_times_are_in_the_admin_time_zone_and_each_row_names_its_number(viewer, services):
    services.config = services.config.replace(admin_timezone="Asia/Tokyo")
    WhatsAppNumber.create(address=SALES, label="Sales line")
    sales = Conversation.get_by_id(Conversation.resume_or_start_id(ADA, number=SALES))
    gap(sales, "Do you ship to Mars?", datetime(2030, 1, 15, 12, 0))
    page = page_of(viewer)
    assert "2030-01-15 21:00" in page and "When (Asia/Tokyo)" in page
    assert re.search(r'class="text-nowrap unhappy-number" data-label="Number">Sales line<', page)


def test_a_rating_whose_reply_was_deleted_links_to_its_conversation(viewer):
    ada = conversation_for(ADA)
    rating = rated(ada, 1, MONDAY)
    Message.delete().where(Message.id == rating.message_id).execute()
    assert rows_of(page_of(viewer)) == [(transcript(ada), "rated 1/5")]


@pytest.mark.postgres
def test_the_playgrounds_questions_are_not_listed(viewer):
    gap(conversation_for("playground:ops"), "A trial question", MONDAY, origin=Origin.PLAYGROUND.value)
    page = page_of(viewer)
    assert rows_of(page) == [] and "A trial question" not in page
    assert 'id="nothing-unhappy"' in page


def test_rows_come_fifty_a_page_with_older_and_newer(viewer):
    ada = conversation_for(ADA)
    gaps = [gap(ada, f"Question {number}", MONDAY + timedelta(minutes=number)) for number in range(51)]
    first, second = page_of(viewer), page_of(viewer, page="2")
    assert len(rows_of(first)) == 50 and 'id="older"' in first and 'id="newer"' not in first
    assert rows_of(second) == [(transcript(ada, gaps[0].message_id), "not covered: best passage scored low (0.12)")]
    assert 'id="newer"' in second and 'id="older"' not in second


def test_the_page_needs_a_login(client, services):
    response = client.get(PAGE)
    assert response.status_code == 302 and "/admin/login/" in response.location
