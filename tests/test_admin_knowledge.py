"""The Knowledge page over HTTP: sources added, re-synced and deleted, the search preview against the
OpenRouter fake's embeddings, approved answers, the questions not covered, and the transcript's sources."""
from __future__ import annotations

import html
import io
import re

import numpy as np
import pytest

from chatbot.knowledge.retrieval import to_stored
from chatbot.models import (
    ApprovedAnswer,
    KnowledgeGap,
    KnowledgeSource,
    Message,
    Passage,
    WhatsAppNumber,
    utcnow,
)
from chatbot.models.db import database
from tests.conftest import csrf_token, log_in
from tests.fakes import FakeOpenRouter, hashed_words
from tests.support import conversation_for

PAGE = "/admin/knowledge/"
SALES = "whatsapp:+15557770001"
ADA = "whatsapp:+15550001111"
POSTS = [
    "search/", "sources/file/", "sources/url/", "sources/text/", "sources/1/sync/", "sources/1/delete/",
    "approved/save/", "approved/1/delete/",
]


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def post(client, path: str, data: dict | None = None, **kwargs):
    """Post a form of the Knowledge page as a browser does: with the page's CSRF token."""
    return client.post(PAGE + path, data={"csrf_token": csrf_token(client, PAGE), **(data or {})}, **kwargs)


def job_ids(services) -> list[str]:
    return services.queue.get_job_ids()


def index_job(source) -> str:
    return f"knowledge-source-{source.id:012d}"


def similarity(first: str, second: str) -> float:
    return float(np.dot(hashed_words(first), hashed_words(second)))


def ready_source(services, title: str, passages: list[tuple[str, str]], number: str | None = None):
    """A source as the worker leaves it once indexed: its passages embedded by the fake's embeddings."""
    source = KnowledgeSource.create(number=number, kind="text", title=title, status="ready",
                                   passage_count=len(passages), indexed_at=utcnow(),
                                   embedding_model=services.retriever.key)
    with database.atomic():
        for position, (heading, text) in enumerate(passages):
            Passage.create(source=source, position=position, heading=heading, text=text, tokens=len(text.split()),
                           vector=to_stored(hashed_words(text)), embedding_model=services.retriever.key)
        Passage.add_lexical([passage.id for passage in Passage.select().where(Passage.source == source)])
    return source


REFUNDS = "Refunds reach your card within five working days"
OPENING = "The shop opens at nine and closes at six"


@pytest.fixture
def knowledge(services):
    return ready_source(services, "Shop policies", [("Refunds", REFUNDS), ("Opening hours", OPENING)])


# --- access ----------------------------------------------------------------------------------------

def test_the_page_sends_anonymous_visitors_to_login(client, services):
    response = client.get(PAGE)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login/?next=")


@pytest.mark.parametrize("path", POSTS)
def test_every_post_sends_anonymous_visitors_to_login_and_changes_nothing(client, services, path):
    KnowledgeSource.create(kind="text", title="Kept", content=b"kept")
    response = client.post(PAGE + path, data={"text": "x", "title": "x", "url": "https://example.com",
                                               "question": "q", "answer": "a"})
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login/?next=")
    assert [source.title for source in KnowledgeSource.select()] == ["Kept"]
    assert ApprovedAnswer.select().count() == 0
    assert job_ids(services) == []


def test_a_post_without_the_csrf_token_changes_nothing(operator, services):
    response = operator.post(PAGE + "sources/text/", data={"title": "Returns", "text": "Thirty days."},
                             follow_redirects=True)
    assert "The request expired" in text_of(response)
    assert KnowledgeSource.select().count() == 0


def test_the_page_runs_under_the_strict_policy_and_is_in_the_menu(operator, services):
    response = operator.get(PAGE)
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'; script-src 'self';")
    assert 'href="/admin/knowledge/"' in operator.get("/admin/").get_data(as_text=True)


# --- adding sources --------------------------------------------------------------------------------

def test_pasted_text_is_stored_waiting_and_queued(operator, services):
    response = post(operator, "sources/text/", {"title": "Returns", "text": "# Returns\nThirty days.",
                                                "number": "all"}, follow_redirects=True)
    source = KnowledgeSource.get()
    assert (source.kind, source.title, source.status, source.number) == ("text", "Returns", "waiting", None)
    assert bytes(source.content) == b"# Returns\nThirty days."
    assert index_job(source) in job_ids(services)
    page = text_of(response)
    assert "Returns: added, waiting for the worker to index it." in page
    row = page.split(f'id="source-{source.id}"')[1].split("</tr>")[0]
    assert "status-waiting" in row and "all numbers" in row and ">text<" in row


def test_a_web_page_with_its_sitemap_is_stored_for_the_chosen_number(operator, services):
    WhatsAppNumber.create(address=SALES, label="Sales")
    post(operator, "sources/url/", {"url": "https://shop.example.com/faq", "sitemap": "1", "number": SALES})
    source = KnowledgeSource.get()
    assert (source.kind, source.location, source.status, source.number) == (
        "sitemap", "https://shop.example.com/faq", "waiting", SALES)
    assert index_job(source) in job_ids(services)
    row = text_of(operator.get(PAGE)).split(f'id="source-{source.id}"')[1].split("</tr>")[0]
    assert ">site<" in row and "Sales" in row


def test_a_web_page_alone_is_a_page_for_the_default_number(operator, services):
    post(operator, "sources/url/", {"url": "https://shop.example.com/faq", "number": "default", "title": "FAQ"})
    source = KnowledgeSource.get()
    assert (source.kind, source.title, source.number) == ("url", "FAQ", "")


def test_an_uploaded_file_is_stored_with_its_name_and_type_and_queued(operator, services):
    data = b"<html><body><h1>Delivery</h1><p>Two days.</p></body></html>" * 2000  # over MAX_REQUEST_BYTES
    post(operator, "sources/file/", {"file": (io.BytesIO(data), "delivery.html", "text/html"),
                                     "title": "", "number": "all"}, content_type="multipart/form-data")
    source = KnowledgeSource.get()
    assert (source.kind, source.title, source.location, source.status) == (
        "file", "delivery.html", "delivery.html", "waiting")
    assert source.content_type == "text/html" and bytes(source.content) == data
    assert index_job(source) in job_ids(services)


def test_a_file_over_the_limit_is_listed_failed_with_the_reason(app_with, services, admin_user):
    client = app_with(knowledge_max_file_bytes=2048).test_client()
    assert log_in(client).status_code == 302
    response = post(client, "sources/file/", {"file": (io.BytesIO(b"x" * 5000), "manual.pdf")},
                    content_type="multipart/form-data", follow_redirects=True)
    source = KnowledgeSource.get()
    assert source.status == "failed" and source.content is None
    assert source.reason == "file over 0.002 MB (KNOWLEDGE_MAX_FILE_BYTES)"
    assert job_ids(services) == []
    row = text_of(response).split(f'id="source-{source.id}"')[1].split("</tr>")[0]
    assert "status-failed" in row and source.reason in row


def test_an_upload_far_over_the_limit_is_refused_with_a_reason(app_with, services, admin_user):
    client = app_with(knowledge_max_file_bytes=2048).test_client()
    assert log_in(client).status_code == 302
    response = post(client, "sources/file/", {"file": (io.BytesIO(b"x" * 3 * 1024 * 1024), "huge.pdf")},
                    content_type="multipart/form-data", follow_redirects=True)
    assert "the upload is far over the 0.002 MB a file may have" in text_of(response)
    assert KnowledgeSource.select().count() == 0


@pytest.mark.parametrize("path, form, said", [
    ("sources/url/", {"url": "ftp://shop.example.com/faq"}, "not a web address"),
    ("sources/url/", {"url": "javascript:alert(1)"}, "not a web address"),
    ("sources/text/", {"title": "Returns", "text": "   "}, "the text is empty"),
    ("sources/text/", {"title": " ", "text": "Thirty days."}, "give the text a title"),
    ("sources/text/", {"title": "Returns", "text": "Thirty days.", "number": "whatsapp:+19990000000"},
     "that number is not one of the configured numbers"),
])
def test_bad_input_is_said_and_nothing_is_stored(operator, services, path, form, said):
    response = post(operator, path, form, follow_redirects=True)
    assert f"Not added: {said}" in text_of(response)
    assert KnowledgeSource.select().count() == 0
    assert job_ids(services) == []


# --- re-sync and delete ----------------------------------------------------------------------------

def test_resync_puts_a_ready_source_back_in_line(operator, services, knowledge):
    response = post(operator, f"sources/{knowledge.id}/sync/", follow_redirects=True)
    assert "Shop policies: queued to be read again." in text_of(response)
    assert KnowledgeSource.get_by_id(knowledge.id).status == "waiting"
    assert index_job(knowledge) in job_ids(services)


def test_delete_removes_the_source_and_its_passages(operator, services, knowledge):
    other = ready_source(services, "Other", [("", "Something else entirely")])
    page = text_of(operator.get(PAGE))
    assert "Delete it and its 2 passage(s)?" in page  # the second step names what goes
    response = post(operator, f"sources/{knowledge.id}/delete/", follow_redirects=True)
    assert "Deleted Shop policies and its passages." in text_of(response)
    assert KnowledgeSource.get_or_none(KnowledgeSource.id == knowledge.id) is None
    assert [passage.source_id for passage in Passage.select()] == [other.id]
    assert Passage.lexical_ranking(["refunds"], None, services.retriever.key, 10) == []


def test_a_failed_source_shows_its_reason_on_the_page(operator, services):
    source = KnowledgeSource.create(kind="url", title="Prices", location="https://shop.example.com/prices",
                                    status="failed", reason="the page answered 404 Not Found")
    row = text_of(operator.get(PAGE)).split(f'id="source-{source.id}"')[1].split("</tr>")[0]
    assert re.search(r'class="badge badge-danger source-status status-failed">failed</span>', row)
    assert "the page answered 404 Not Found" in row and ">web page<" in row


# --- search preview --------------------------------------------------------------------------------

def test_the_preview_shows_the_passages_a_question_is_given_with_their_scores(operator, services, knowledge,
                                                                             fake_openrouter):
    question = "How many days do refunds take?"
    response = post(operator, "search/", {"question": question, "number": "all"})
    assert response.status_code == 200
    page = text_of(response)
    rows = re.findall(r'<tr class="found-passage">(.*?)</tr>', page, re.S)
    assert len(rows) == 1  # the opening hours share no word with the question and score under the minimum
    assert f'<td class="passage-score" data-label="Score">{similarity(question, REFUNDS):.3f}</td>' in rows[0]
    assert "Shop policies" in rows[0] and "Refunds" in rows[0] and REFUNDS in rows[0]
    assert 'id="search-approved"' not in page
    assert [request.body["input"] for request in fake_openrouter.embedding_requests] == [[question]]


def test_the_preview_shows_the_approved_answer_that_would_win(operator, services, knowledge):
    ApprovedAnswer.create(question="When are you open?", answer="Nine to six, every day.",
                          vector=to_stored(hashed_words("When are you open?")),
                          embedding_model=services.retriever.key)
    page = text_of(post(operator, "search/", {"question": "When are you open?"}))
    approved = page.split('id="search-approved"')[1].split("</div>\n    </div>")[0]
    assert "Nine to six, every day." in approved and '<span class="approved-score">1.000</span>' in approved


def test_the_preview_says_when_there_is_no_knowledge(operator, services):
    page = text_of(post(operator, "search/", {"question": "Anything?"}))
    assert "No indexed knowledge for this number." in page


def test_the_preview_of_another_numbers_knowledge_finds_nothing(operator, services):
    WhatsAppNumber.create(address=SALES, label="Sales")
    ready_source(services, "Sales only", [("", REFUNDS)], number=SALES)
    assert "No indexed knowledge for this number." in text_of(post(operator, "search/", {"question": "refunds"}))
    sales = text_of(post(operator, "search/", {"question": "refunds", "number": SALES}))
    assert re.findall(r'<tr class="found-passage">', sales) == ['<tr class="found-passage">']


def test_an_embeddings_failure_is_said_plainly_not_a_server_error(operator, services, knowledge, fake_openrouter):
    fake_openrouter.embedding_error = FakeOpenRouter.error(401, "No auth credentials found")
    response = post(operator, "search/", {"question": "How long do refunds take?"})
    assert response.status_code == 200
    error = text_of(response).split('id="search-error">')[1].split("</div>")[0]
    assert error.startswith("The question could not be embedded:") and "No auth credentials found" in error
    assert "EMBEDDING_MODEL" in error


# --- approved answers ------------------------------------------------------------------------------

def test_an_approved_answer_is_added_edited_and_deleted(operator, services, admin_user):
    response = post(operator, "approved/save/", {"question": "Do you deliver?", "answer": "Yes, in two days.",
                                                 "number": "all"}, follow_redirects=True)
    approved = ApprovedAnswer.get()
    assert (approved.question, approved.answer, approved.number, approved.created_by) == (
        "Do you deliver?", "Yes, in two days.", None, "ops")
    assert "embed-approved-answers" in job_ids(services)
    row = text_of(response).split(f'id="approved-{approved.id}"')[1].split("</tr>")[0]
    assert '<td class="approved-embedded" data-label="Embedded">no</td>' in row

    services.queue.empty()
    # Embedded, as the worker leaves it: changing only the answer keeps its vector.
    ApprovedAnswer.update(vector=to_stored(hashed_words("Do you deliver?")),
                          embedding_model=services.retriever.key).execute()
    assert '<td class="approved-embedded" data-label="Embedded">yes</td>' in text_of(operator.get(PAGE))
    edit = text_of(operator.get(f"{PAGE}approved/{approved.id}/edit/"))
    assert ">Do you deliver?</textarea>" in edit and ">Yes, in two days.</textarea>" in edit
    post(operator, "approved/save/", {"id": str(approved.id), "question": "Do you deliver?",
                                      "answer": "Yes, in one day.", "number": "default"})
    edited = ApprovedAnswer.get_by_id(approved.id)
    assert (edited.answer, edited.number, edited.vector is not None) == ("Yes, in one day.", "", True)
    assert job_ids(services) == []

    # A changed question is embedded again before it answers.
    post(operator, "approved/save/", {"id": str(approved.id), "question": "Do you ship abroad?",
                                      "answer": "Yes, in one day.", "number": "default"})
    assert ApprovedAnswer.get_by_id(approved.id).vector is None
    assert "embed-approved-answers" in job_ids(services)

    response = post(operator, f"approved/{approved.id}/delete/", follow_redirects=True)
    assert "Approved answer deleted." in text_of(response)
    assert ApprovedAnswer.select().count() == 0


def test_an_approved_answer_without_its_answer_is_refused_and_the_form_kept(operator, services):
    response = post(operator, "approved/save/", {"question": "Do you deliver?", "answer": " "})
    page = text_of(response)
    assert "Not saved: an approved answer needs both a question and its answer." in page
    assert ">Do you deliver?</textarea>" in page
    assert ApprovedAnswer.select().count() == 0


# --- what the knowledge did not cover --------------------------------------------------------------

@pytest.fixture
def asked(services):
    conversation = conversation_for(ADA, "Ada")
    return Message.create(conversation=conversation, role="user", status="answered",
                          content="Do you ship to Mars?")


def test_a_gap_is_listed_and_its_approved_answer_closes_it(operator, services, asked):
    low = KnowledgeGap.create(message=asked, number="", question="Do you ship to Mars?", reason="low_score",
                              best_score=0.2134)
    said = KnowledgeGap.create(message=asked, number="", question="Is parking free?", reason="not_covered",
                               best_score=0.5)
    page = text_of(operator.get(PAGE))
    assert "best passage scored low (0.21)" in page.split(f'id="gap-{low.id}"')[1].split("</tr>")[0]
    assert "the answer said the sources do not cover it" in page.split(f'id="gap-{said.id}"')[1].split("</tr>")[0]
    assert f"/admin/conversation/details/?id={asked.conversation_id}#message-{asked.id}" in page

    form = text_of(operator.get(f"{PAGE}approved/new/?gap={low.id}"))
    assert ">Do you ship to Mars?</textarea>" in form and f'name="gap" value="{low.id}"' in form
    assert '<option value="default" selected>' in form  # the gap's own number
    post(operator, "approved/save/", {"gap": str(low.id), "question": "Do you ship to Mars?",
                                      "answer": "Not yet.", "number": "default"})
    assert KnowledgeGap.get_by_id(low.id).answered_at is not None
    assert KnowledgeGap.get_by_id(said.id).answered_at is None
    assert ApprovedAnswer.get().answer == "Not yet."
    assert f'id="gap-{low.id}"' not in text_of(operator.get(PAGE))


# --- the transcript --------------------------------------------------------------------------------

def test_the_transcript_shows_the_sources_an_answer_was_given_and_promotes_it(operator, services, asked):
    answer = Message.create(conversation=asked.conversation, role="assistant", status="sent", reply_to=asked,
                            content="We ship to Earth only.\n\nSource: Shipping",
                            metadata={"knowledge": {"best_score": 0.4412, "passages": [
                                {"passage": 7, "source": 3, "title": "Shipping", "heading": "Where we ship",
                                 "score": 0.4412},
                                {"passage": 9, "source": 4, "title": "FAQ", "heading": "", "score": 0.3107}]}})
    plain = Message.create(conversation=asked.conversation, role="assistant", status="sent", reply_to=asked,
                           content="Hello!")
    page = text_of(operator.get(f"/admin/conversation/details/?id={asked.conversation_id}"))
    given = page.split(f'id="message-{answer.id}"')[1].split(f'id="message-{plain.id}"')[0]
    assert "Sources given (2, best score 0.441)" in given
    assert re.findall(r'<div class="source-given">(.*?)</div>', given, re.S) == [
        'Shipping › Where we ship · <span class="source-given-score">0.441</span>',
        'FAQ · <span class="source-given-score">0.311</span>']
    assert "Sources given" not in page.split(f'id="message-{plain.id}"')[1]

    promote = re.search(r'href="([^"]+)"[^>]*>Promote to approved answer', given).group(1)
    form = text_of(operator.get(promote))
    assert ">Do you ship to Mars?</textarea>" in form
    assert ">We ship to Earth only.\n\nSource: Shipping</textarea>" in form
