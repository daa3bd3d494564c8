"""The Search page over HTTP: messages found by their words, each linked to its place in the transcript,
phone numbers masked, open to every role."""
from __future__ import annotations

import html
import re
from datetime import datetime

import pytest
from markupsafe import escape

from chatbot.models import Conversation, Message, WhatsAppNumber
from chatbot.roles import Role
from chatbot.search import NO_WORDS, NOTHING_TYPED
from tests.support import conversation_for
from tests.test_admin_roles import signed_in_as

PAGE = "/admin/search/"
ADA, ADA_DIGITS, ADA_MASKED = "whatsapp:+15550001111", "15550001111", "whatsapp:+1555•••1111"
SALES = "whatsapp:+15557770001"


@pytest.fixture
def viewer(app):
    return signed_in_as(app, Role.VIEWER)


def search(client, query: str, **params) -> str:
    response = client.get(PAGE, query_string={"q": query, **params})
    assert response.status_code == 200
    return response.get_data(as_text=True)


def hit_ids(page: str) -> list[int]:
    return [int(found) for found in re.findall(r'class="search-hit" id="hit-(\d+)"', page)]


def said(conversation: Conversation, text: str, **fields) -> Message:
    return Message.create(conversation=conversation, role="user", status="answered", content=text, **fields)


@pytest.mark.postgres
def test_a_customers_word_is_found_linked_to_its_message_with_the_numbers_masked(viewer, post_webhook, run_jobs):
    post_webhook.message("Where is my parcel? Call me back on +447700900123", sender=ADA)
    run_jobs()
    question = Message.get(Message.role == "user")
    page = search(viewer, "PARCEL")
    assert question.id in hit_ids(page)
    link = f"/admin/conversation/details/?id={question.conversation_id}#message-{question.id}"
    assert f'href="{link}"' in page
    assert "<mark>parcel</mark>" in page
    assert ADA_MASKED in page and ADA_DIGITS not in page
    assert "+4477•••0123" in page and "447700900123" not in page
    # The anchor the link names is there in the transcript.
    transcript = viewer.get(link.split("#")[0]).get_data(as_text=True)
    assert f'id="message-{question.id}"' in transcript


def test_a_messages_markup_is_shown_as_text(viewer):
    # (Postgres's parser skips what lies inside <script> and <style>: a word there is not found.)
    message = said(conversation_for(ADA), "My <b>parcel</b> <img src=x onerror=alert(1)>")
    page = search(viewer, "parcel")
    assert hit_ids(page) == [message.id]
    assert "<img src=x" not in page and "<b>" not in page
    assert "&lt;b&gt;<mark>parcel</mark>&lt;/b&gt; &lt;img src=x onerror=alert(1)&gt;" in page


@pytest.mark.postgres
@pytest.mark.parametrize("query", ['parcel OR', '"parcel', 'NEAR(parcel ready)', 'parcel*', '-parcel', "'; DROP",
                                   'parcel:* & !x', '<script>'])
def test_query_syntax_typed_in_the_box_is_never_an_error(viewer, query):
    said(conversation_for(ADA), "Your parcel is ready")
    page = search(viewer, query)
    # Answered, with the query back in the box as text.
    assert f'value="{escape(query)}"' in page


def test_a_query_without_a_word_says_what_to_type(viewer):
    said(conversation_for(ADA), "Your parcel is ready")
    first = viewer.get(PAGE).get_data(as_text=True)
    assert NOTHING_TYPED in first and hit_ids(first) == []
    assert NO_WORDS in html.unescape(search(viewer, "?! ** --"))


def test_times_are_in_the_admin_time_zone_which_is_named(viewer, services):
    services.config = services.config.replace(admin_timezone="Asia/Tokyo")
    said(conversation_for(ADA), "parcel at noon UTC", created_at=datetime(2030, 1, 15, 12, 0))
    page = search(viewer, "parcel")
    assert "2030-01-15 21:00" in page and "When (Asia/Tokyo)" in page


@pytest.mark.postgres
def test_a_number_narrows_the_results_and_each_shows_its_label(viewer, services):
    WhatsAppNumber.create(address=SALES, label="Sales line")
    default = said(conversation_for(ADA), "parcel to the default number")
    sales = said(Conversation.get_by_id(Conversation.resume_or_start_id(ADA, number=SALES)), "parcel to sales")
    both = search(viewer, "parcel")
    assert sorted(hit_ids(both)) == sorted([default.id, sales.id])
    assert "Sales line" in both
    assert hit_ids(search(viewer, "parcel", number=SALES)) == [sales.id]
    assert hit_ids(search(viewer, "parcel", number="default")) == [default.id]
    # A number that is not configured filters nothing rather than everything.
    assert len(hit_ids(search(viewer, "parcel", number="whatsapp:+19999999999"))) == 2


def test_results_come_fifty_a_page_with_next_and_previous(viewer):
    ada = conversation_for(ADA)
    for number in range(51):
        said(ada, f"parcel {number}")
    first = search(viewer, "parcel")
    assert len(hit_ids(first)) == 50 and 'id="next"' in first and 'id="previous"' not in first
    second = search(viewer, "parcel", page="2")
    assert len(hit_ids(second)) == 1 and 'id="previous"' in second and 'id="next"' not in second
    assert set(hit_ids(first)) | set(hit_ids(second)) == {message.id for message in Message.select()}


@pytest.mark.parametrize("page", ["0", "-1", "x", "9" * 40])
def test_a_page_out_of_range_is_read_as_a_page_that_fits(viewer, page):
    said(conversation_for(ADA), "parcel")
    search(viewer, "parcel", page=page)


def test_searching_needs_a_login(client, services):
    response = client.get(PAGE, query_string={"q": "parcel"})
    assert response.status_code == 302 and "/admin/login/" in response.location
