"""What an operator does with knowledge, shared by the admin and the CLI: add a source, sync it,
remove it, write an approved answer, try a question. Indexing itself runs in the worker."""
from __future__ import annotations

from pathlib import PurePath
from urllib.parse import urlsplit

from rq import Queue

from chatbot.ai import AIAdapter
from chatbot.jobs.queueing import enqueue_approved_embedding, enqueue_knowledge_index
from chatbot.knowledge.extract import file_too_large
from chatbot.knowledge.retrieval import Retrieval, Retriever
from chatbot.models import (
    ApprovedAnswer,
    KnowledgeGap,
    KnowledgeSource,
    Passage,
    SourceKind,
    SourceStatus,
    utcnow,
)
from chatbot.models.db import database

MAX_TITLE = 200


class KnowledgeInputError(ValueError):
    """What an operator gave cannot become knowledge; the message says what to change."""


def add_file(queue: Queue, data: bytes, filename: str, max_bytes: int, number: str | None = None,
             title: str = "", content_type: str = "") -> KnowledgeSource:
    """Store an uploaded file as a source and queue its indexing. A file over `max_bytes` is
    listed as failed with the reason, its bytes not kept."""
    name = PurePath(filename or "document").name[:200]
    too_large = len(data) > max_bytes
    source = KnowledgeSource.create(
        number=number, kind=SourceKind.FILE.value, title=(title.strip() or name)[:MAX_TITLE], location=name,
        content=None if too_large else data, content_type=content_type[:128],
        status=SourceStatus.FAILED.value if too_large else SourceStatus.WAITING.value,
        reason=file_too_large(max_bytes) if too_large else "")
    if not too_large:
        enqueue_knowledge_index(queue, source.id)
    return source


def add_url(queue: Queue, url: str, number: str | None = None, title: str = "",
            sitemap: bool = False) -> KnowledgeSource:
    """Store a web page (or the pages its site's sitemap lists) as a source and queue its indexing."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KnowledgeInputError(f"not a web address: {url[:100]!r} (give an http:// or https:// URL)")
    source = KnowledgeSource.create(number=number, kind=(SourceKind.SITEMAP if sitemap else SourceKind.URL).value,
                                    title=(title.strip() or url)[:MAX_TITLE], location=url[:2048])
    enqueue_knowledge_index(queue, source.id)
    return source


def add_text(queue: Queue, text: str, title: str, number: str | None = None) -> KnowledgeSource:
    """Store pasted text (Markdown headings welcome) as a source and queue its indexing."""
    if not text.strip():
        raise KnowledgeInputError("the text is empty")
    if not title.strip():
        raise KnowledgeInputError("give the text a title: answers name it as their source")
    source = KnowledgeSource.create(number=number, kind=SourceKind.TEXT.value, title=title.strip()[:MAX_TITLE],
                                    location="", content=text.encode(), content_type="text/markdown")
    enqueue_knowledge_index(queue, source.id)
    return source


def sync(queue: Queue, source_id: int | None = None) -> int:
    """Queue one source (or every source) to be read again; return how many were queued. An
    unchanged source is not embedded again; a changed one replaces its passages once indexed."""
    sources = KnowledgeSource.select().where(KnowledgeSource.content.is_null(False)
                                             | (KnowledgeSource.kind != SourceKind.FILE.value))
    if source_id is not None:
        sources = sources.where(KnowledgeSource.id == source_id)
    queued = 0
    for source in sources:
        KnowledgeSource.mark(source.id, SourceStatus.WAITING, source.reason if source.status == "ready" else "")
        enqueue_knowledge_index(queue, source.id)  # a job already queued reads the source as it is now
        queued += 1
    return queued


def remove(source_id: int) -> bool:
    """Delete a source and its passages; say whether it existed."""
    with database.atomic():
        Passage.remove_of(source_id)
        return bool(KnowledgeSource.delete().where(KnowledgeSource.id == source_id).execute())


def approve(queue: Queue, question: str, answer: str, number: str | None = None, created_by: str = "",
            gap_id: int | None = None) -> ApprovedAnswer:
    """Store an approved answer (closing the gap it answers, if any) and queue its embedding."""
    check_approved(question, answer)
    with database.atomic():
        approved = ApprovedAnswer.create(number=number, question=question.strip(), answer=answer.strip(),
                                         created_by=created_by[:64])
        if gap_id is not None:
            KnowledgeGap.update(answered_at=utcnow()).where(KnowledgeGap.id == gap_id).execute()
    enqueue_approved_embedding(queue)
    return approved


def edit_approved(queue: Queue, answer_id: int, question: str, answer: str, number: str | None) -> None:
    """Change an approved answer (LookupError when it is gone); a changed question answers only once
    the worker has embedded it again."""
    check_approved(question, answer)
    with database.atomic():
        approved = ApprovedAnswer.get_or_none(ApprovedAnswer.id == answer_id)
        if approved is None:
            raise LookupError(answer_id)
        changed_question = approved.question != question.strip()
        approved.question, approved.answer, approved.number = question.strip(), answer.strip(), number
        if changed_question:
            approved.vector, approved.embedding_model = None, ""
        approved.save()
    if changed_question:
        enqueue_approved_embedding(queue)


def check_approved(question: str, answer: str) -> None:
    if not question.strip() or not answer.strip():
        raise KnowledgeInputError("an approved answer needs both a question and its answer")


def try_question(retriever: Retriever, adapter: AIAdapter, question: str,
                 number: str | None = None) -> tuple[Retrieval, ApprovedAnswer | None, float | None]:
    """Return what a question would be given: its passages, and the approved answer that would
    answer it instead (with its similarity)."""
    approved, score, _ = retriever.approved_answer(adapter, question, number)
    return retriever.search(adapter, question, number), approved, score
