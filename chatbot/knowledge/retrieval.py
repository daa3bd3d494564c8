"""Find the passages for a question: dense similarity and a lexical ranking, fused.

Each worker holds one float32 matrix of unit vectors per number it answers for (passages for every
number plus the number's own), loaded on first use and reloaded when the stored passages change
(a count, the newest id and the newest indexing time, read with every question, say so). A
question's vector against the matrix is one matrix-vector product. The lexical ranking comes from
the database (FTS5 on SQLite, a tsvector on Postgres), so a product code or a name the embedding
blurs still finds its passage. The two rankings are fused by Reciprocal Rank Fusion; the passages
are then taken best first until KNOWLEDGE_MAX_TOKENS are used.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from chatbot.ai import AIAdapter
from chatbot.models import ApprovedAnswer, KnowledgeSource, Passage

# Reciprocal Rank Fusion's constant (score = sum of 1 / (RRF_K + rank)), as in the paper and its users.
RRF_K = 60
# How deep each ranking is read before fusing.
CANDIDATES = 50
# Passages found only by the lexical ranking are kept from its top this many, whatever their similarity.
LEXICAL_KEEP = 3
# A word in this share of the passages or more is left out of the lexical ranking: it would have
# many of them ranked, for little (the dense ranking weighs it anyway).
COMMON_WORD_SHARE = 0.02
# ... and in this many passages at least: in a small knowledge every word is in a large share.
COMMON_WORD_PASSAGES = 200
# Passages read from the database at a time while the matrix is loaded.
LOAD_PAGE = 1000
# Distinct words of a question given to the lexical ranking; one or two letters say little.
MAX_QUERY_WORDS = 30
MIN_WORD_LENGTH = 3
# Words too common to say what a question is about: a passage that shares only these with it is kept
# by the lexical ranking's top for no reason. English, the language of the defaults.
STOP_WORDS = frozenset("""
about after again all also and any are because been before but can could did does doing don for
from had has have her here him his how into its just more most not now off once only other our out
over own same she should some such than that the their them then there these they this those too
under until very was were what when where which while who whom why will with would you your yours
""".split())
# Question vectors kept per process: a job run twice, or the approved-answer check and retrieval of
# one question, pay for one embedding.
QUERY_MEMO_SIZE = 256


def embedding_key(model: str, dimensions: int) -> str:
    """Name the vectors a model makes at a length: stored beside every vector, so two never mix."""
    return f"{model}@{dimensions}" if dimensions else model


def as_vector(stored) -> np.ndarray:
    """Read a stored vector (float32 bytes; Postgres hands back a memoryview)."""
    return np.frombuffer(bytes(stored), dtype=np.float32)


def to_stored(vector) -> bytes:
    """Store a vector as float32 bytes at unit length, so a dot product is the cosine similarity."""
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    return (array / norm if norm else array).astype(np.float32).tobytes()


def query_words(text: str) -> list[str]:
    """Return the distinct words of `text` worth a lexical look-up, in order."""
    found = dict.fromkeys(word for word in re.findall(r"\w+", text.lower())
                          if len(word) >= MIN_WORD_LENGTH and word not in STOP_WORDS)
    return list(found)[:MAX_QUERY_WORDS]


@dataclass(frozen=True)
class Found:
    """A passage given with a question, and how similar it is to it (cosine, -1 to 1)."""

    passage_id: int
    source_id: int
    title: str
    heading: str
    text: str
    tokens: int
    score: float


@dataclass
class Retrieval:
    """What the knowledge gave one question."""

    passages: list[Found] = field(default_factory=list)
    # The best similarity of any passage to the question; None when there was no knowledge to search.
    best_score: float | None = None
    # What embedding the question cost (USD); None when the provider did not say.
    cost: float | None = 0.0

    def covered(self, min_score: float) -> bool:
        return self.best_score is not None and self.best_score >= min_score


@dataclass(frozen=True)
class _Loaded:
    version: tuple
    ids: np.ndarray
    matrix: np.ndarray
    # passage id -> (source id, title, heading, tokens); the texts stay in the database.
    details: dict
    # passage id -> its row in `matrix`
    rows: dict
    # Words in so many passages that ranking by them costs more than it tells (Postgres's statistics).
    common: frozenset = frozenset()


class Retriever:
    """Embeds questions and finds their passages and approved answers; one per process."""

    def __init__(self, embedding_model: str, dimensions: int = 0, max_tokens: int = 800, min_score: float = 0.3,
                 approved_min_score: float = 0.85):
        self.embedding_model = embedding_model
        self.dimensions = dimensions
        self.key = embedding_key(embedding_model, dimensions)
        self.max_tokens = max_tokens
        self.min_score = min_score
        self.approved_min_score = approved_min_score
        self._loaded: dict[str | None, _Loaded] = {}
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, adapter: AIAdapter, texts: list[str], until: float | None = None):
        """Return the Embeddings of `texts` (passages being indexed): one request."""
        return adapter.embed(texts, self.embedding_model, dimensions=self.dimensions, until=until)

    def question_vector(self, adapter: AIAdapter, text: str,
                        until: float | None = None) -> tuple[np.ndarray, float | None]:
        """Return the unit vector of a question and what computing it cost (0 when it was known)."""
        with self._lock:
            known = self._memo.get(text)
            if known is not None:
                self._memo.move_to_end(text)
                return known, 0.0
        embeddings = self.embed(adapter, [text], until)
        vector = as_vector(to_stored(embeddings.vectors[0]))
        with self._lock:
            self._memo[text] = vector
            while len(self._memo) > QUERY_MEMO_SIZE:
                self._memo.popitem(last=False)
        return vector, embeddings.cost

    def has_knowledge(self, number: str | None) -> bool:
        return bool(Passage.version(number, self.key)[0])

    def search(self, adapter: AIAdapter, question: str, number: str | None, until: float | None = None,
               max_tokens: int | None = None) -> Retrieval:
        """Return the passages for `question` (the newest message with the turns it needs to be
        understood) asked of `number`, best first, within the token budget."""
        version = Passage.version(number, self.key)
        if not version or not version[0]:
            return Retrieval()
        loaded = self._matrix(number, version)
        if not loaded.ids.size:
            return Retrieval()
        vector, cost = self.question_vector(adapter, question, until)
        if loaded.matrix.shape[1] != vector.shape[0]:
            # Vectors of one model name but another length: the model changed under its name.
            return Retrieval(cost=cost)
        similarities = loaded.matrix @ vector
        depth = min(CANDIDATES, len(similarities))
        dense_top = np.argpartition(-similarities, depth - 1)[:depth]
        dense_ranked = [int(loaded.ids[index]) for index in dense_top[np.argsort(-similarities[dense_top])]]
        lexical_ranked = [passage_id for passage_id in
                          Passage.lexical_ranking([word for word in query_words(question) if word not in loaded.common],
                                                  number, self.key, CANDIDATES)
                          if passage_id in loaded.details]
        fused: dict[int, float] = {}
        for ranking in (dense_ranked, lexical_ranked):
            for rank, passage_id in enumerate(ranking, start=1):
                fused[passage_id] = fused.get(passage_id, 0.0) + 1.0 / (RRF_K + rank)
        score_of = {passage_id: float(similarities[loaded.rows[passage_id]]) for passage_id in fused}
        lexical_top = set(lexical_ranked[:LEXICAL_KEEP])
        chosen, budget = [], self.max_tokens if max_tokens is None else max_tokens
        for passage_id in sorted(fused, key=lambda passage_id: (-fused[passage_id], passage_id)):
            if score_of[passage_id] < self.min_score and passage_id not in lexical_top:
                continue
            tokens = loaded.details[passage_id][3]
            if tokens > budget:
                continue
            budget -= tokens
            chosen.append(passage_id)
        texts = dict(Passage.select(Passage.id, Passage.text).where(Passage.id.in_(chosen)).tuples()) if chosen else {}
        found = [Found(passage_id, *loaded.details[passage_id][:3], texts.get(passage_id, ""),
                       loaded.details[passage_id][3], round(score_of[passage_id], 4))
                 for passage_id in chosen if passage_id in texts]
        return Retrieval(passages=found, best_score=round(float(similarities.max()), 4), cost=cost)

    def approved_answer(self, adapter: AIAdapter, question: str, number: str | None,
                        until: float | None = None) -> tuple[ApprovedAnswer | None, float | None, float | None]:
        """Return the approved answer whose question matches `question` best when it matches above
        the threshold (else None), its similarity, and what embedding the question cost."""
        candidates = list(ApprovedAnswer.serving(number, self.key))
        if not candidates:
            return None, None, 0.0
        vector, cost = self.question_vector(adapter, question, until)
        best, best_score = None, -1.0
        for candidate in candidates:
            stored = as_vector(candidate.vector)
            if stored.shape != vector.shape:
                continue
            score = float(stored @ vector)
            # The newest of equals wins: an operator's correction replaces what it corrects.
            if score > best_score or (score == best_score and best is not None and candidate.id > best.id):
                best, best_score = candidate, score
        if best is None or best_score < self.approved_min_score:
            return None, (round(best_score, 4) if best is not None else None), cost
        return best, round(best_score, 4), cost

    def _serving_rows(self, number: str | None):
        """Yield the serving passages' rows a page at a time: a driver that fetches a whole result at
        once (psycopg2) then holds one page of vectors besides the matrix, not all of them twice."""
        last = 0
        while True:
            page = list(Passage.serving(number, self.key)
                        .select(Passage.id, Passage.source, Passage.heading, Passage.tokens, Passage.vector,
                                KnowledgeSource.title)
                        .where(Passage.id > last)
                        .order_by(Passage.id)
                        .limit(LOAD_PAGE)
                        .tuples())
            yield from page
            if len(page) < LOAD_PAGE:
                return
            last = page[-1][0]

    def _matrix(self, number: str | None, version: tuple) -> _Loaded:
        with self._lock:
            loaded = self._loaded.get(number)
            if loaded is not None and loaded.version == version:
                return loaded
        ids, details, matrix = [], {}, None
        for index, (passage_id, source_id, heading, tokens, stored, title) in enumerate(self._serving_rows(number)):
            vector = as_vector(stored)
            if matrix is None:
                matrix = np.zeros((version[0], vector.shape[0]), dtype=np.float32)
            if index >= matrix.shape[0]:
                break  # a passage added since the version was read: the next question reloads
            if vector.shape[0] == matrix.shape[1]:
                matrix[index] = vector  # a stray length stays zero, matching nothing
            ids.append(passage_id)
            details[passage_id] = (source_id, title, heading, tokens)
        matrix = np.zeros((0, 0), dtype=np.float32) if matrix is None else matrix[:len(ids)]
        loaded = _Loaded(version, np.array(ids, dtype=np.int64), matrix, details,
                         {passage_id: index for index, passage_id in enumerate(ids)},
                         Passage.common_words(max(COMMON_WORD_SHARE, COMMON_WORD_PASSAGES / max(1, len(ids)))))
        with self._lock:
            self._loaded[number] = loaded
        return loaded
