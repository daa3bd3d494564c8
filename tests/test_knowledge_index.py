"""Indexing knowledge in the worker: statuses and reasons, nothing half-served, no needless embedding,
never two embedding models mixed, and what it costs counted."""
from __future__ import annotations

from datetime import timedelta

import pytest

from chatbot.jobs import tasks
from chatbot.knowledge import sources
from chatbot.knowledge.retrieval import Retriever
from chatbot.models import KnowledgeSource, KnowledgeSpend, Passage, utcnow
from chatbot.reports import spend_since
from chatbot.stages.budget import MONTHLY_NOTICE, MONTHLY_SETTING
from tests.fakes import FakeOpenRouter

RETURNS = """# Returns policy

You can return any item within 30 days of delivery for a full refund.

## Damaged items

Damaged items are replaced free of charge: send a photo of the damage.
"""

HOURS = """# Opening hours

The shop opens Monday to Saturday from 9:00 to 18:00 and is closed on Sundays.
"""


def source_row(source_id: int) -> KnowledgeSource:
    return KnowledgeSource.get_by_id(source_id)


@pytest.mark.postgres
def test_pasted_text_becomes_ready_passages_with_vectors_of_the_configured_model(services, run_jobs,
                                                                                  fake_openrouter):
    source = sources.add_text(services.queue, RETURNS, "Returns policy")
    assert source_row(source.id).status == "waiting"
    run_jobs()
    stored = source_row(source.id)
    assert (stored.status, stored.reason) == ("ready", "")
    passages = list(Passage.select().where(Passage.source == source.id).order_by(Passage.position))
    assert stored.passage_count == len(passages) >= 2
    assert {passage.embedding_model for passage in passages} == {services.retriever.key}
    assert any("30 days" in passage.text and "Returns policy" in passage.heading for passage in passages)
    assert any("Damaged items" in passage.heading for passage in passages)
    # One batch for all of them, asked of the configured model.
    [request] = fake_openrouter.embedding_requests
    assert request.body["model"] == services.config.embedding_model
    assert len(request.body["input"]) == len(passages)


def test_an_unchanged_source_is_not_embedded_again_and_a_changed_one_replaces_its_passages(
        services, run_jobs, fake_openrouter):
    source = sources.add_text(services.queue, RETURNS, "Returns policy")
    run_jobs()
    first_ids = {passage.id for passage in Passage.select().where(Passage.source == source.id)}
    assert sources.sync(services.queue, source.id) == 1
    run_jobs()
    assert len(fake_openrouter.embedding_requests) == 1
    assert source_row(source.id).status == "ready"
    assert {passage.id for passage in Passage.select().where(Passage.source == source.id)} == first_ids

    KnowledgeSource.update(content=(RETURNS + "\nRefunds reach your card within 5 working days.\n").encode()).where(
        KnowledgeSource.id == source.id).execute()
    sources.sync(services.queue, source.id)
    run_jobs()
    assert len(fake_openrouter.embedding_requests) == 2
    texts = " ".join(passage.text for passage in Passage.select().where(Passage.source == source.id))
    assert "5 working days" in texts
    assert Passage.select().where(Passage.source == source.id).count() == source_row(source.id).passage_count


def test_a_broken_file_fails_with_its_reason_while_the_other_sources_serve(services, run_jobs, fake_openrouter):
    good = sources.add_text(services.queue, HOURS, "Opening hours")
    broken = sources.add_file(services.queue, b"%PDF-1.7\nthis is not a PDF at all", "catalogue.pdf",
                              services.config.knowledge_max_file_bytes)
    unknown = sources.add_file(services.queue, b"\x00\x01binary", "photo.xyz", services.config.knowledge_max_file_bytes)
    run_jobs()
    assert source_row(good.id).status == "ready"
    assert source_row(broken.id).status == "failed"
    assert "PDF" in source_row(broken.id).reason
    assert source_row(unknown.id).status == "failed"
    assert source_row(unknown.id).reason.startswith("unknown file type .xyz")
    assert Passage.select().where(Passage.source << [broken.id, unknown.id]).count() == 0
    found = services.retriever.search(services.ai_factory.current(), "When does the shop open on Monday?", "")
    assert [passage.source_id for passage in found.passages] == [good.id]


def test_a_file_over_the_limit_is_listed_as_failed_and_its_bytes_not_kept(services, run_jobs):
    source = sources.add_file(services.queue, b"x" * (1024 * 1024 + 1), "big.txt", max_bytes=1024 * 1024)
    stored = source_row(source.id)
    assert (stored.status, stored.content) == ("failed", None)
    assert stored.reason == "file over 1 MB (KNOWLEDGE_MAX_FILE_BYTES)"
    assert services.queue.count == 0


def test_a_failing_embeddings_api_fails_the_source_on_the_last_attempt_and_keeps_its_old_passages(
        services, fake_openrouter):
    source = sources.add_text(services.queue, RETURNS, "Returns policy")
    adapter = services.ai_factory.current()
    assert services.indexer.index(source.id, adapter) == "ready"
    before = {passage.id for passage in Passage.select().where(Passage.source == source.id)}
    KnowledgeSource.update(content=HOURS.encode()).where(KnowledgeSource.id == source.id).execute()
    fake_openrouter.embedding_error = FakeOpenRouter.error(503, "embeddings upstream down")

    with pytest.raises(Exception) as raised:
        services.indexer.index(source.id, adapter, final_attempt=False)
    assert getattr(raised.value, "retryable", False)
    assert source_row(source.id).status == "waiting"
    assert "trying again" in source_row(source.id).reason

    assert services.indexer.index(source.id, adapter, final_attempt=True) == "failed"
    stored = source_row(source.id)
    assert stored.reason.startswith("embeddings failed:")
    # Nothing half-indexed: the old passages are still there, and a failed source serves none of them.
    assert {passage.id for passage in Passage.select().where(Passage.source == source.id)} == before
    assert not services.retriever.has_knowledge("")


def test_changing_the_embedding_model_reembeds_everything_and_never_mixes_models(services, run_jobs,
                                                                                fake_openrouter):
    source = sources.add_text(services.queue, HOURS, "Opening hours")
    sources.approve(services.queue, "Do you deliver to Porto?", "Yes, in two days.")
    run_jobs()
    adapter = services.ai_factory.current()
    assert services.retriever.search(adapter, "opening hours Monday", "").passages

    other = Retriever("another/embedder", 0, services.config.knowledge_max_tokens)
    # Until the new model has embedded them, the old model's passages serve nobody asking with the new one.
    assert not other.has_knowledge("")
    assert other.search(adapter, "opening hours Monday", "").passages == []
    assert other.approved_answer(adapter, "Do you deliver to Porto?", "")[0] is None

    services.retriever = other
    services.indexer.retriever = other
    assert tasks.refresh_knowledge() == 1
    run_jobs()
    assert {passage.embedding_model for passage in Passage.select()} == {"another/embedder"}
    assert source_row(source.id).embedding_model == "another/embedder"
    assert fake_openrouter.embedding_requests[-1].body["model"] == "another/embedder"
    assert other.search(adapter, "opening hours Monday", "").passages
    assert other.approved_answer(adapter, "Do you deliver to Porto?", "")[0].answer == "Yes, in two days."


def test_a_waiting_source_whose_job_was_lost_is_queued_again_by_the_sweep(services, run_jobs, redis):
    source = sources.add_text(services.queue, HOURS, "Opening hours")
    services.queue.empty()
    assert tasks.refresh_knowledge() == 1
    run_jobs()
    assert source_row(source.id).status == "ready"
    assert tasks.refresh_knowledge() == 0


@pytest.mark.postgres
def test_what_embedding_costs_counts_in_spend_and_against_the_monthly_budget(services, run_jobs, fake_openrouter):
    fake_openrouter.embedding_token_cost = 0.001
    start = utcnow() - timedelta(seconds=1)
    source = sources.add_text(services.queue, RETURNS, "Returns policy", number="")
    run_jobs()
    [spent] = KnowledgeSpend.select()
    assert spent.tokens > 0 and spent.source_id == source.id
    assert spent.cost == pytest.approx(spent.tokens * 0.001)
    assert spend_since(start).usd == pytest.approx(spent.cost)
    assert spend_since(start, "").usd == pytest.approx(spent.cost)
    assert spend_since(start, "whatsapp:+15550009999").usd == 0


def test_embedding_the_knowledge_uses_up_the_monthly_budget_like_answers_do(services, run_jobs, post_webhook,
                                                                           fake_openrouter, fake_twilio):
    fake_openrouter.embedding_token_cost = 0.001
    sources.add_text(services.queue, RETURNS, "Returns policy")
    run_jobs()
    spent = KnowledgeSpend.select().first().cost
    services.budgets.override(MONTHLY_SETTING, round(spent * 0.9, 6))
    post_webhook.message("What is your returns policy?")
    run_jobs()
    assert fake_openrouter.completions == []
    assert [sent["Body"] for sent in fake_twilio.sent] == [MONTHLY_NOTICE]


def test_removing_a_source_deletes_its_passages_and_it_serves_no_more(services, run_jobs):
    source = sources.add_text(services.queue, HOURS, "Opening hours")
    run_jobs()
    adapter = services.ai_factory.current()
    assert services.retriever.search(adapter, "opening hours", "").passages
    assert sources.remove(source.id) is True
    assert Passage.select().count() == 0
    assert services.retriever.search(adapter, "opening hours", "").passages == []
    assert sources.remove(source.id) is False
