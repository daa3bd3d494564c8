"""Index a knowledge source in the worker: read it, split it, embed the passages, swap them in.

A source's old passages serve until its new ones are stored, and both change in one transaction:
no question is ever given half a source. A source whose passages would be the same text, embedded
by the same model, is not embedded again. Whatever goes wrong ends as a status and a one-line
reason on the source; the other sources keep serving.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import requests

from chatbot.ai import AIAdapter
from chatbot.errors import AIError
from chatbot.knowledge.extract import Document, ExtractionError, extract, file_too_large
from chatbot.knowledge.pages import fetch_pages
from chatbot.knowledge.passages import Passage as TextPassage
from chatbot.knowledge.passages import split_passages
from chatbot.knowledge.retrieval import Retriever, to_stored
from chatbot.models import (
    ApprovedAnswer,
    KnowledgeSource,
    KnowledgeSpend,
    Passage,
    SourceKind,
    SourceStatus,
    utcnow,
)
from chatbot.models.db import database
from chatbot.models.knowledge import content_hash

log = logging.getLogger(__name__)

# Texts per embeddings request: large enough to amortise a round trip, small enough to retry cheaply.
EMBED_BATCH = 64
PASSAGE_TOKENS = 300
OVERLAP_TOKENS = 40


@dataclass(frozen=True)
class IndexLimits:
    max_bytes: int
    max_pages: int
    fetch_timeout: float


class Indexer:
    """Reads sources and stores their passages; `session` fetches pages (the outbound guard's)."""

    def __init__(self, retriever: Retriever, session: requests.Session, limits: IndexLimits):
        self.retriever = retriever
        self.session = session
        self.limits = limits

    def index(self, source_id: int, adapter: AIAdapter, final_attempt: bool = True) -> str | None:
        """Index one source; return its status, or None when it is gone. A transient embeddings
        failure raises (the job runs again) unless this is the final attempt."""
        source = KnowledgeSource.get_or_none(KnowledgeSource.id == source_id)
        if source is None:
            return None
        KnowledgeSource.mark(source.id, SourceStatus.INDEXING)
        try:
            documents, skipped = self._read(source)
            passages = [passage for title, document in documents
                        for passage in titled(title, split_passages(document.text, PASSAGE_TOKENS, OVERLAP_TOKENS))]
            if not passages:
                raise ExtractionError("empty document: no text found")
        except ExtractionError as error:
            KnowledgeSource.mark(source.id, SourceStatus.FAILED, str(error))
            log.warning("knowledge source=%s failed: %s", source.id, error)
            return SourceStatus.FAILED.value
        note = skipped_note(skipped)
        title = source.title if source.title != source.location or len(documents) != 1 else documents[0][1].title
        digest = content_hash("\n\0".join(passage.embedding_text for passage in passages).encode())
        if (digest == source.content_hash and source.embedding_model == self.retriever.key
                and source.passage_count == len(passages)):
            KnowledgeSource.mark(source.id, SourceStatus.READY, note, title=title[:200])
            return SourceStatus.READY.value
        try:
            vectors, tokens, cost = self._embed(adapter, [passage.embedding_text for passage in passages])
        except AIError as error:
            if error.retryable and not final_attempt:
                KnowledgeSource.mark(source.id, SourceStatus.WAITING, f"embeddings failed, trying again: {error}")
                raise
            KnowledgeSource.mark(source.id, SourceStatus.FAILED, f"embeddings failed: {error}")
            log.warning("knowledge source=%s embeddings failed: %s", source.id, error)
            return SourceStatus.FAILED.value
        with database.atomic():
            Passage.remove_of(source.id)
            rows = [{"source": source.id, "position": position, "heading": passage.heading[:500],
                     "text": passage.text, "tokens": passage.tokens, "vector": to_stored(vector),
                     "embedding_model": self.retriever.key}
                    for position, (passage, vector) in enumerate(zip(passages, vectors, strict=True))]
            for start in range(0, len(rows), 100):
                Passage.insert_many(rows[start:start + 100]).execute()
            Passage.add_lexical([passage_id for (passage_id,) in
                                 Passage.select(Passage.id).where(Passage.source == source.id).tuples()])
            KnowledgeSpend.create(source_id=source.id, number=source.number, model=self.retriever.embedding_model,
                                  tokens=tokens, cost=cost)
            KnowledgeSource.mark(source.id, SourceStatus.READY, note, title=title[:200], content_hash=digest,
                                 embedding_model=self.retriever.key, passage_count=len(passages),
                                 indexed_at=utcnow())
        Passage.refresh_statistics()
        log.info("knowledge source=%s ready passages=%d tokens=%d", source.id, len(passages), tokens)
        return SourceStatus.READY.value

    def embed_approved(self, adapter: AIAdapter) -> int:
        """Embed the approved answers' questions not yet embedded with the current model; return how many."""
        waiting = list(ApprovedAnswer.unembedded(self.retriever.key))
        if not waiting:
            return 0
        vectors, tokens, cost = self._embed(adapter, [answer.question for answer in waiting])
        with database.atomic():
            for answer, vector in zip(waiting, vectors, strict=True):
                (ApprovedAnswer.update(vector=to_stored(vector), embedding_model=self.retriever.key)
                 .where(ApprovedAnswer.id == answer.id).execute())
            KnowledgeSpend.create(model=self.retriever.embedding_model, tokens=tokens, cost=cost)
        return len(waiting)

    def _read(self, source: KnowledgeSource) -> tuple[list[tuple[str, Document]], list[tuple[str, str]]]:
        """Return the source's documents (with the page title each passage is headed by, for a
        sitemap) and the pages it skipped."""
        kind = source.kind
        if kind in (SourceKind.FILE.value, SourceKind.TEXT.value):
            data = bytes(source.content or b"")
            if len(data) > self.limits.max_bytes:
                raise ExtractionError(file_too_large(self.limits.max_bytes))
            name = source.location if kind == SourceKind.FILE.value else "pasted.md"
            return [("", extract(data, name, source.content_type))], []
        fetched = fetch_pages(self.session, source.location, sitemap=kind == SourceKind.SITEMAP.value,
                              max_pages=self.limits.max_pages if kind == SourceKind.SITEMAP.value else 1,
                              max_bytes=self.limits.max_bytes, timeout=self.limits.fetch_timeout)
        several = len(fetched.pages) > 1
        return [(page.document.title if several else "", page.document) for page in fetched.pages], fetched.skipped

    def _embed(self, adapter: AIAdapter, texts: list[str]) -> tuple[list[list[float]], int, float | None]:
        vectors, tokens, cost = [], 0, 0.0
        for start in range(0, len(texts), EMBED_BATCH):
            embeddings = self.retriever.embed(adapter, texts[start:start + EMBED_BATCH])
            vectors += embeddings.vectors
            tokens += embeddings.tokens
            cost = None if cost is None or embeddings.cost is None else cost + embeddings.cost
        return vectors, tokens, cost


def titled(title: str, passages: list[TextPassage]) -> list[TextPassage]:
    """Head each passage of one page of several with the page's title."""
    if not title:
        return passages
    return [TextPassage(f"{title} › {passage.heading}" if passage.heading else title, passage.text, passage.tokens)
            for passage in passages]


def skipped_note(skipped: list[tuple[str, str]]) -> str:
    """Say in one line which pages a sitemap skipped, and why."""
    if not skipped:
        return ""
    first_url, first_reason = skipped[0]
    more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
    return f"skipped {len(skipped)} page(s): {first_url} ({first_reason}){more}"
