"""Finding a question's passages: dense and lexical rankings fused, scoped by number, within a token
budget; approved answers above their threshold."""
from __future__ import annotations

import pytest

from chatbot.knowledge import sources
from chatbot.knowledge.retrieval import Retriever, query_words
from chatbot.models import Passage

SALES = "whatsapp:+15550007777"
FANS = """# Fans

## Breeze desk fan

The Breeze desk fan (product code BRZ-204) costs 49 euros and has three speeds.

## Gale tower fan

The Gale tower fan costs 89 euros and oscillates through 90 degrees.
"""
HOURS = """# Opening hours

The shop opens Monday to Saturday from 9:00 to 18:00 and is closed on Sundays.
"""


@pytest.fixture
def indexed(services, run_jobs):
    """Index pasted texts: {title: (text, number)} -> {title: source id}."""

    def index(texts: dict[str, tuple[str, str | None]]) -> dict[str, int]:
        made = {title: sources.add_text(services.queue, text, title, number).id
                for title, (text, number) in texts.items()}
        run_jobs()
        return made

    return index


def retriever_like(services, **changes) -> Retriever:
    settings = {"dimensions": services.retriever.dimensions, "max_tokens": 800, "min_score": 0.3,
                "approved_min_score": 0.85, **changes}
    return Retriever(services.retriever.embedding_model, **settings)


@pytest.mark.postgres
def test_the_closest_passage_comes_first_with_its_source_heading_and_score(services, indexed):
    made = indexed({"Fans": (FANS, None), "Opening hours": (HOURS, None)})
    found = services.retriever.search(services.ai_factory.current(), "How much does the Gale tower fan cost?", "")
    first = found.passages[0]
    assert (first.source_id, first.title) == (made["Fans"], "Fans")
    assert "Gale tower fan" in first.heading and "89 euros" in first.text
    assert first.score == found.best_score > 0.3


@pytest.mark.postgres
def test_a_product_code_is_found_by_the_lexical_ranking_even_when_the_vectors_score_it_low(services, indexed):
    indexed({"Fans": (FANS, None), "Opening hours": (HOURS, None)})
    strict = retriever_like(services, min_score=0.99)
    found = strict.search(services.ai_factory.current(), "BRZ-204 stock?", "")
    assert found.passages and "BRZ-204" in found.passages[0].text
    assert found.best_score < 0.99


def test_the_passages_given_stay_within_the_token_budget(services, indexed):
    indexed({"Fans": (FANS, None), "Opening hours": (HOURS, None)})
    question = "fan costs euros shop opens"
    everything = retriever_like(services).search(services.ai_factory.current(), question, "")
    assert len(everything.passages) >= 2
    budget = everything.passages[0].tokens
    tight = retriever_like(services, max_tokens=budget).search(services.ai_factory.current(), question, "")
    assert sum(passage.tokens for passage in tight.passages) <= budget
    assert len(tight.passages) < len(everything.passages)


@pytest.mark.postgres
def test_a_numbers_own_sources_serve_only_it_and_sources_for_every_number_serve_all(services, indexed):
    made = indexed({"Fans": (FANS, SALES), "Opening hours": (HOURS, None)})
    adapter = services.ai_factory.current()
    question = "Gale tower fan price and opening hours"
    on_sales = {passage.source_id for passage in services.retriever.search(adapter, question, SALES).passages}
    on_default = {passage.source_id for passage in services.retriever.search(adapter, question, "").passages}
    assert on_sales == {made["Fans"], made["Opening hours"]}
    assert on_default == {made["Opening hours"]}


def test_newly_indexed_passages_are_found_without_a_restart_and_a_repeated_question_is_embedded_once(
        services, indexed, fake_openrouter):
    indexed({"Opening hours": (HOURS, None)})
    adapter = services.ai_factory.current()
    before = services.retriever.search(adapter, "Gale tower fan price", "")
    assert before.passages == [] and before.best_score < 0.3
    asked = len(fake_openrouter.embedding_requests)
    indexed({"Fans": (FANS, None)})
    indexing = len(fake_openrouter.embedding_requests) - asked
    found = services.retriever.search(adapter, "Gale tower fan price", "")
    assert found.passages[0].title == "Fans"
    # The question's vector was remembered: only the indexing asked for embeddings.
    assert len(fake_openrouter.embedding_requests) == asked + indexing


def test_no_knowledge_means_no_search_and_no_cost(services, fake_openrouter):
    found = services.retriever.search(services.ai_factory.current(), "anything", "")
    assert (found.passages, found.best_score, found.cost) == ([], None, 0.0)
    assert fake_openrouter.embedding_requests == []


@pytest.mark.postgres
def test_an_approved_answer_wins_only_above_its_threshold_and_only_for_its_number(services, run_jobs):
    sources.approve(services.queue, "What are your opening hours?", "9 to 6, Monday to Saturday.")
    sources.approve(services.queue, "Do you ship abroad?", "Sales ships to the EU.", number=SALES)
    run_jobs()
    adapter = services.ai_factory.current()
    match, score, _ = services.retriever.approved_answer(adapter, "What are your opening hours", "")
    assert match.answer == "9 to 6, Monday to Saturday." and score >= 0.85
    assert services.retriever.approved_answer(adapter, "What are your prices?", "")[0] is None
    assert services.retriever.approved_answer(adapter, "Do you ship abroad?", "")[0] is None
    assert services.retriever.approved_answer(adapter, "Do you ship abroad?", SALES)[0].answer == \
        "Sales ships to the EU."


def test_the_lexical_query_keeps_distinct_words_of_three_letters_or_more_that_say_something():
    assert query_words("Is the BRZ-204 in stock? Is it? Can you check the stock") == ["brz", "204", "stock", "check"]


@pytest.mark.postgres
def test_words_in_most_passages_leave_postgres_lexical_ranking_and_rare_ones_still_rank(services, indexed,
                                                                                       database_url):
    catalogue = "# Catalogue\n\n" + "\n\n".join(
        f"## Fan model {number}\n\nThe fan model {number} has product code FX{number:03d} and blows air quietly."
        for number in range(120))
    indexed({"Catalogue": (catalogue, None)})
    common = Passage.common_words(0.02)
    if database_url.startswith("postgres"):
        assert {"fan", "model", "quietly"} <= common and "fx007" not in common
    else:
        assert common == frozenset()  # FTS5 ranks common words in milliseconds: nothing left out
    strict = retriever_like(services, min_score=0.99)
    found = strict.search(services.ai_factory.current(), "fan FX007", "")
    assert "FX007" in found.passages[0].text
