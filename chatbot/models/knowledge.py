"""The business's knowledge: its sources, their passages with vectors, approved answers, and the
questions the knowledge did not cover."""
from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from peewee import (
    BlobField,
    CharField,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    PostgresqlDatabase,
    TextField,
    fn,
)

from chatbot.models.base import BaseModel, utcnow
from chatbot.models.conversation import Message
from chatbot.models.db import database

# The lexical index of passages: an FTS5 table on SQLite (rowid = passage id); on Postgres a stored
# tsvector column the database computes itself, GIN-indexed (`simple`: no language's stemming assumed).
SQLITE_FTS_TABLE = "passage_fts"
POSTGRES_TEXT_SEARCH = "to_tsvector('simple', heading || ' ' || text)"
POSTGRES_SEARCH_COLUMN = "search"
# How many of the text search's best matches are read for each one asked for, before the scope filters them.
LEXICAL_DEPTH = 4


class SourceKind(StrEnum):
    FILE = "file"
    URL = "url"  # one web page
    SITEMAP = "sitemap"  # the pages a sitemap lists, bounded
    TEXT = "text"  # pasted by the operator


class SourceStatus(StrEnum):
    WAITING = "waiting"
    INDEXING = "indexing"
    READY = "ready"
    FAILED = "failed"


class GapReason(StrEnum):
    LOW_SCORE = "low_score"  # the best passage found was a poor match
    NOT_COVERED = "not_covered"  # the model said the sources do not cover the question


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def in_scope(field, number: str | None):
    """Match rows for every number (NULL) and, when `number` is given, that number's own."""
    return field.is_null() if number is None else (field.is_null() | (field == number))


class KnowledgeSource(BaseModel):
    """A document, web page, sitemap or pasted text the assistant answers from."""

    # The number it serves, as conversations store it ("" the default number); None: every number.
    number = CharField(max_length=64, null=True, index=True)
    kind = CharField(max_length=16)
    title = CharField(max_length=200)
    # The file's name or the page's URL.
    location = CharField(max_length=2048, default="")
    # An uploaded file's bytes or the pasted text: kept in the database, so any worker can index it.
    content = BlobField(null=True)
    content_type = CharField(max_length=128, default="")
    status = CharField(max_length=16, default=SourceStatus.WAITING.value, index=True)
    # Why it failed, in one line; for a ready sitemap, the pages it skipped.
    reason = TextField(default="")
    # Of the text its passages were made from: an unchanged source is not embedded again.
    content_hash = CharField(max_length=64, default="")
    embedding_model = CharField(max_length=200, default="")
    passage_count = IntegerField(default=0)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    indexed_at = DateTimeField(null=True)

    class Meta:
        table_name = "knowledge_source"

    @classmethod
    def listed(cls):
        """Select every source, newest first."""
        return cls.select().order_by(cls.created_at.desc(), cls.id.desc())

    @classmethod
    def mark(cls, source_id: int, status: SourceStatus, reason: str = "", **changes) -> None:
        """Move a source to `status`, saying why in one line."""
        (cls.update(status=status.value, reason=reason[:1000], updated_at=utcnow(), **changes)
         .where(cls.id == source_id)
         .execute())

    @classmethod
    def needing_index(cls, embedding_model: str):
        """Select the sources to index: ready ones whose vectors came from another embedding model,
        and waiting ones (their job may have been lost with Redis)."""
        return cls.select().where(
            ((cls.status == SourceStatus.READY.value) & (cls.embedding_model != embedding_model))
            | (cls.status == SourceStatus.WAITING.value))


class Passage(BaseModel):
    """A few hundred tokens of a source, under its heading path, with its vector."""

    source = ForeignKeyField(KnowledgeSource, backref="passages", on_delete="CASCADE", index=True)
    position = IntegerField()
    heading = CharField(max_length=500, default="")
    text = TextField()
    tokens = IntegerField()
    # float32, unit length: a dot product is the cosine similarity.
    vector = BlobField()
    embedding_model = CharField(max_length=200)

    class Meta:
        table_name = "passage"

    @classmethod
    def serving(cls, number: str | None, embedding_model: str):
        """Select the passages a question to `number` may be given: of ready sources for it or for
        every number, embedded with `embedding_model` (never a mix of models)."""
        return (
            cls.select(cls, KnowledgeSource.title)
            .join(KnowledgeSource)
            .where(KnowledgeSource.status == SourceStatus.READY.value,
                   in_scope(KnowledgeSource.number, number),
                   cls.embedding_model == embedding_model)
        )

    @classmethod
    def version(cls, number: str | None, embedding_model: str) -> tuple:
        """A stamp that changes whenever the passages `serving` selects change, read from the
        sources alone (a handful of rows, not every passage: it is read with every question). A
        source's passages change only with its indexing, which sets its count and time anew."""
        source = KnowledgeSource
        row = (source.select(fn.COALESCE(fn.SUM(source.passage_count), 0), fn.COUNT(source.id), fn.MAX(source.id),
                             fn.MAX(source.indexed_at))
               .where(source.status == SourceStatus.READY.value, in_scope(source.number, number),
                      source.embedding_model == embedding_model)
               .tuples().first())
        return tuple(row or (0,))

    @classmethod
    def lexical_ranking(cls, words: list[str], number: str | None, embedding_model: str, limit: int) -> list[int]:
        """Return the ids of the passages `serving` selects that contain any of `words` (letters and
        digits only), best first."""
        if not words:
            return []
        postgres = isinstance(database.obj, PostgresqlDatabase)
        mark = "%s" if postgres else "?"
        scope = (f"s.status = {mark} AND p.embedding_model = {mark} AND "
                 + (f"(s.number IS NULL OR s.number = {mark})" if number is not None else "s.number IS NULL"))
        scope_params = [SourceStatus.READY.value, embedding_model] + ([number] if number is not None else [])
        # The text search's own ranking first, the scope after: joining every match to its source
        # costs more than the ranking when a word is in most passages. The caller keeps only the
        # passages it serves, so the look-up reads deeper than it is asked to.
        if postgres:
            query, search = " | ".join(words), POSTGRES_SEARCH_COLUMN
            sql = (f"SELECT p.id FROM (SELECT id, ts_rank({search}, to_tsquery('simple', %s)) AS rank FROM passage "
                   f"WHERE {search} @@ to_tsquery('simple', %s) ORDER BY rank DESC LIMIT %s) f "
                   f"JOIN passage p ON p.id = f.id JOIN knowledge_source s ON s.id = p.source_id "
                   f"WHERE {scope} ORDER BY f.rank DESC, p.id LIMIT %s")
            params = [query, query, limit * LEXICAL_DEPTH, *scope_params, limit]
        else:
            query = " OR ".join(f'"{word}"' for word in words)
            sql = (f"SELECT p.id FROM (SELECT rowid, rank FROM {SQLITE_FTS_TABLE} WHERE {SQLITE_FTS_TABLE} MATCH ? "
                   f"ORDER BY rank LIMIT ?) f JOIN passage p ON p.id = f.rowid "
                   f"JOIN knowledge_source s ON s.id = p.source_id WHERE {scope} ORDER BY f.rank, p.id LIMIT ?")
            params = [query, limit * LEXICAL_DEPTH, *scope_params, limit]
        return [row[0] for row in database.execute_sql(sql, params).fetchall()]

    @classmethod
    def common_words(cls, min_share: float) -> frozenset[str]:
        """Return the words Postgres's statistics say are in `min_share` of the passages or more (its
        text search ranks every match, so such a word costs ~0.1 s over 20,000 passages); nothing on
        SQLite, whose FTS5 ranks them in milliseconds."""
        if not isinstance(database.obj, PostgresqlDatabase):
            return frozenset()
        row = database.execute_sql(
            "SELECT most_common_elems::text::text[], most_common_elem_freqs FROM pg_stats "
            f"WHERE tablename = 'passage' AND attname = '{POSTGRES_SEARCH_COLUMN}'").fetchone()
        if not row or not row[0]:
            return frozenset()
        return frozenset(word for word, share in zip(row[0], row[1], strict=False) if share >= min_share)

    @classmethod
    def refresh_statistics(cls) -> None:
        """Have Postgres count the passages' words again (common_words reads them) after an indexing."""
        if isinstance(database.obj, PostgresqlDatabase):
            database.execute_sql("ANALYZE passage")

    @classmethod
    def add_lexical(cls, passage_ids: list[int]) -> None:
        """Put passages in the lexical index (Postgres indexes them by itself)."""
        if passage_ids and not isinstance(database.obj, PostgresqlDatabase):
            database.execute_sql(
                f"INSERT INTO {SQLITE_FTS_TABLE}(rowid, text) "
                f"SELECT id, heading || ' ' || text FROM passage WHERE id IN ({', '.join('?' * len(passage_ids))})",
                passage_ids)

    @classmethod
    def remove_of(cls, source_id: int) -> None:
        """Delete a source's passages, from the lexical index too."""
        if not isinstance(database.obj, PostgresqlDatabase):
            database.execute_sql(f"DELETE FROM {SQLITE_FTS_TABLE} WHERE rowid IN "
                                 "(SELECT id FROM passage WHERE source_id = ?)", [source_id])
        cls.delete().where(cls.source == source_id).execute()


class ApprovedAnswer(BaseModel):
    """A question and the answer the business wrote for it: sent as written, with no model call."""

    number = CharField(max_length=64, null=True, index=True)
    question = TextField()
    answer = TextField()
    # Of the question; None until the worker has embedded it.
    vector = BlobField(null=True)
    embedding_model = CharField(max_length=200, default="")
    created_by = CharField(max_length=64, default="")
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "approved_answer"

    @classmethod
    def serving(cls, number: str | None, embedding_model: str):
        """Select the approved answers for `number` (or every number) embedded with `embedding_model`."""
        return cls.select().where(in_scope(cls.number, number), cls.embedding_model == embedding_model,
                                  cls.vector.is_null(False))

    @classmethod
    def unembedded(cls, embedding_model: str):
        """Select the approved answers still to be embedded with `embedding_model`."""
        return cls.select().where(cls.vector.is_null() | (cls.embedding_model != embedding_model))


class KnowledgeGap(BaseModel):
    """A question the knowledge did not cover: for the operator to write an approved answer to."""

    message = ForeignKeyField(Message, on_delete="CASCADE", index=True)
    number = CharField(max_length=64, default="")
    question = TextField()
    reason = CharField(max_length=16)
    # The best passage's similarity to the question; None when there was no knowledge at all.
    best_score = FloatField(null=True)
    created_at = DateTimeField(default=utcnow, index=True)
    # Set once an approved answer is written for it.
    answered_at = DateTimeField(null=True)

    class Meta:
        table_name = "knowledge_gap"

    @classmethod
    def open_gaps(cls):
        """Select the gaps no approved answer has closed, newest first."""
        return cls.select().where(cls.answered_at.is_null()).order_by(cls.created_at.desc(), cls.id.desc())


class KnowledgeSpend(BaseModel):
    """What embedding a source's passages cost: money spent outside any answer, counted in spend."""

    source_id = IntegerField(null=True)
    # As the source's number: "" the default number, None every number.
    number = CharField(max_length=64, null=True)
    model = CharField(max_length=200)
    tokens = IntegerField(default=0)
    cost = FloatField(null=True)
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "knowledge_spend"

    @classmethod
    def since(cls, start: datetime, number: str | None = None) -> float:
        """Return what indexing cost in USD since `start`: for every number's sources, or for `number`'s own."""
        query = cls.select(fn.COALESCE(fn.SUM(cls.cost), 0)).where(cls.created_at >= start)
        if number is not None:
            query = query.where(cls.number == number)
        return float(query.scalar() or 0)
