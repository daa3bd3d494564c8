"""Searching messages by their words (chatbot.search): what is found, in what order, on SQLite's FTS5 and
Postgres's tsvector alike; what is never found; and operator input that is never query syntax."""
from __future__ import annotations

import pytest
from peewee import PostgresqlDatabase

from chatbot.models import Conversation, Message, Origin
from chatbot.models.db import database
from chatbot.redact import mask_phones_in
from chatbot.search import (
    NO_WORDS,
    NOTHING_TYPED,
    SNIPPET_WORDS,
    START,
    STOP,
    WORDS_BEFORE,
    excerpt,
    highlighted,
    search_messages,
)
from tests.support import conversation_for

pytestmark = pytest.mark.postgres

ADA, BOB = "whatsapp:+15550001111", "whatsapp:+15550002222"
SALES = "whatsapp:+15557770001"


def on_postgres() -> bool:
    return isinstance(database.obj, PostgresqlDatabase)


def found(query: str, **options) -> list[str]:
    """The texts of the messages `query` finds, best first."""
    return [hit.message.content for hit in search_messages(query, **options).hits]


def said(conversation: Conversation, text: str, role: str = "user", **fields) -> Message:
    return Message.create(conversation=conversation, role=role, status="answered", content=text, **fields)


def test_a_word_of_a_customers_message_answered_by_the_worker_is_found(post_webhook, run_jobs, fake_twilio):
    post_webhook.message("Where is my parcel? It left Lisbon on Monday", sender=ADA)
    run_jobs()
    assert fake_twilio.sent, "the worker answered nothing"
    hits = search_messages("lisbon").hits
    # The customer's message, and the fake model's answer that repeats it.
    assert {hit.message.role for hit in hits} == {"user", "assistant"}
    question = next(hit for hit in hits if hit.message.role == "user")
    assert question.message.conversation.user_phone == ADA
    assert f"{START}Lisbon{STOP}" in question.snippet


def test_every_word_typed_must_be_in_the_message(services):
    ada = conversation_for(ADA)
    said(ada, "The parcel arrived broken")
    said(ada, "The parcel arrived on time")
    assert found("parcel broken") == ["The parcel arrived broken"]
    assert found("parcel missing") == []


def test_case_does_not_matter(services):
    said(conversation_for(ADA), "My PARCEL is late")
    assert found("parcel") == found("Parcel") == ["My PARCEL is late"]


def test_an_inflected_word_is_found_on_sqlite_only(services):
    # SQLite's index stems with porter; Postgres's 'simple' configuration keeps every word as written.
    said(conversation_for(ADA), "Both parcels were delivered")
    assert found("parcels") == ["Both parcels were delivered"]
    assert found("parcel delivering") == ([] if on_postgres() else ["Both parcels were delivered"])


def test_the_best_match_comes_first(services):
    ada = conversation_for(ADA)
    said(ada, "Refund: I asked for a refund, where is my refund?")
    said(ada, "I bought shoes, a hat, two shirts and a coat last week, and I may want a refund for the coat")
    assert found("refund") == ["Refund: I asked for a refund, where is my refund?",
                               "I bought shoes, a hat, two shirts and a coat last week, and I may want a refund for "
                               "the coat"]


# What each query finds in "The parcel arrived broken": its words, every one of them needed, whatever the
# characters around them.
SYNTAX = [('parcel OR', False), ('parcel OR broken', False), ('"parcel', True), ('parcel"', True),
          ('NEAR(parcel broken, 2)', False), ('parcel*', True), ('-parcel', True), ('parcel NOT broken', False),
          ('content:parcel', False), ('^parcel', True), ("parcel'", True), ('parcel & !broken | x', False),
          ('(parcel', True), ('parcel:*', True), ('{parcel broken}', True), ('* OR -', False), ('AND', False),
          ('"" OR ""', False), ("parcel' OR 1=1 --", False)]


@pytest.mark.parametrize("query, matches", SYNTAX)
def test_query_syntax_typed_is_never_an_error(services, query, matches):
    said(conversation_for(ADA), "The parcel arrived broken")
    assert found(query) == (["The parcel arrived broken"] if matches else [])


def test_an_operators_word_is_a_plain_word_not_an_operator(services):
    ada = conversation_for(ADA)
    said(ada, "The parcel arrived broken")
    said(ada, "Parcel or refund, I do not mind")
    # "OR" is a word to look for like any other, never FTS5's OR.
    assert found("parcel OR") == ["Parcel or refund, I do not mind"]
    # "-" and "*" are not NOT and prefix: "-parcel" is the word "parcel".
    assert sorted(found("-parcel")) == ["Parcel or refund, I do not mind", "The parcel arrived broken"]
    assert found("parc*") == []


@pytest.mark.parametrize("query, hint", [("", NOTHING_TYPED), ("   ", NOTHING_TYPED), ("?! -- ** \"\" ()", NO_WORDS),
                                         ("___", NO_WORDS)])
def test_a_query_without_a_word_searches_nothing_and_says_why(services, query, hint):
    said(conversation_for(ADA), "Anything at all")
    results = search_messages(query)
    assert (results.hits, results.more, results.hint) == ([], False, hint)


def test_playground_and_console_messages_are_not_found(services):
    said(conversation_for(ADA), "parcel from WhatsApp")
    trial = conversation_for("playground:ops")
    said(trial, "parcel in the playground", origin=Origin.PLAYGROUND.value)
    # As an earlier release stored an operator's reply in the playground: marked as from WhatsApp.
    said(trial, "parcel reply by hand", role="assistant", origin=Origin.WHATSAPP.value, operator="ops")
    said(conversation_for("console:dev"), "parcel in the console", origin=Origin.CONSOLE.value)
    assert found("parcel") == ["parcel from WhatsApp"]


def test_a_message_forgotten_with_forget_is_not_found_any_more(post_webhook, run_jobs):
    post_webhook.message("My parcel number is 42", sender=ADA)
    run_jobs()
    assert found("parcel")
    for text in ("/forget", "YES"):
        post_webhook.message(text, sender=ADA)
        run_jobs()
    assert Message.select().count() == 0, "the /forget erased nothing"
    assert found("parcel") == []


def test_a_deleted_conversations_messages_are_not_found(services):
    ada, bob = conversation_for(ADA), conversation_for(BOB)
    said(ada, "Ada's parcel")
    said(bob, "Bob's parcel")
    Conversation.delete_with_history([ada.id], services.context)
    assert found("parcel") == ["Bob's parcel"]


def test_an_edited_message_is_found_by_its_new_words_only(services):
    message = said(conversation_for(ADA), "The parcel arrived broken")
    Message.update(content="The umbrella arrived intact").where(Message.id == message.id).execute()
    assert found("parcel") == [] and found("broken") == []
    assert found("umbrella intact") == ["The umbrella arrived intact"]


def test_a_number_narrows_the_search_to_its_conversations(services):
    said(conversation_for(ADA), "parcel to the default number")
    sales = Conversation.get_by_id(Conversation.resume_or_start_id(ADA, number=SALES))
    said(sales, "parcel to sales")
    assert found("parcel", number=SALES) == ["parcel to sales"]
    assert found("parcel", number="") == ["parcel to the default number"]
    assert len(found("parcel")) == 2


def test_results_come_a_page_at_a_time(services):
    ada = conversation_for(ADA)
    for number in range(5):
        said(ada, f"parcel number {number}")
    first, second, third = (search_messages("parcel", limit=2, page=page) for page in (1, 2, 3))
    assert (len(first.hits), first.more, len(second.hits), second.more, len(third.hits), third.more) == (
        2, True, 2, True, 1, False)
    pages = [hit.message.id for results in (first, second, third) for hit in results.hits]
    assert sorted(pages) == sorted(message.id for message in Message.select())


def test_a_long_message_is_shown_around_its_first_match(services):
    words = [f"w{number}" for number in range(100)]
    words[60] = "parcel"
    said(conversation_for(ADA), " ".join(words))
    snippet = search_messages("parcel").hits[0].snippet
    shown = snippet.removeprefix("… ").removesuffix(" …").split()
    assert snippet.startswith("… ") and snippet.endswith(" …")
    assert len(shown) == SNIPPET_WORDS and shown[WORDS_BEFORE] == f"{START}parcel{STOP}"


def test_an_excerpt_keeps_a_short_message_whole_and_ends_a_long_one_where_it_ends():
    assert excerpt(f"Where is my {START}parcel{STOP}?\nCall me") == f"Where is my {START}parcel{STOP}? Call me"
    ending = " ".join([f"w{number}" for number in range(40)] + [f"{START}last{STOP}"])
    assert excerpt(ending) == "… " + " ".join([f"w{number}" for number in range(17, 40)] + [f"{START}last{STOP}"])


# --- the snippet as HTML ------------------------------------------------------------------------------

def test_a_snippet_is_escaped_and_masked_with_the_matched_words_marked():
    snippet = f"<script>alert(1)</script> my {START}parcel{STOP}, call +{START}447700900123{STOP} or 15550001111"
    html = str(highlighted(snippet, mask_phones_in))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "my <mark>parcel</mark>," in html
    assert "447700900123" not in html and "15550001111" not in html
    assert "+4477•••0123" in html and "1555•••1111" in html


def test_every_occurrence_of_a_matched_word_is_marked_whatever_its_case():
    html = str(highlighted(f"{START}Parcel{STOP} and parcel and PARCELS", lambda text: text))
    assert html == "<mark>Parcel</mark> and <mark>parcel</mark> and PARCELS"
