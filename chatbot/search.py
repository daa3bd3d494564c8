"""Find messages by their words: the admin's search over the full-text index of the messages' text.

The index is the database's own, kept in step with every insert, edit and delete (migrations.py): on
SQLite an FTS5 table with the porter stemmer ("parcels" finds "parcel"), ranked by bm25; on Postgres
the stored tsvector `message.search` in the 'simple' configuration (case folded, never stemmed),
ranked by ts_rank. The operator's words never reach either as query syntax: each run of letters and
digits becomes one quoted FTS5 term, or one word given to plainto_tsquery, and a message matches when
it holds every one of them. A page is ranked first, and only its own messages are marked, the
costly part: the matched words in the whole text (FTS5's highlight(), ts_headline's HighlightAll), cut
to an excerpt by one rule for both. Only WhatsApp conversations are searched: the playground's and
the console's are trials, left out as they are from every figure.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from markupsafe import Markup
from peewee import SQL, Column, NodeList, PostgresqlDatabase, Table, fn

from chatbot.models import Conversation, Message
from chatbot.models.conversation import MESSAGE_FTS_TABLE, MESSAGE_SEARCH_COLUMN
from chatbot.models.db import database

PAGE_SIZE = 50
# A search term: letters and digits. Everything else (quotes, *, -, parentheses, NEAR's commas) only
# separates terms, so nothing the operator types is FTS5 or tsquery syntax. (Not the knowledge's
# query_words: it drops short and common words, and an operator may be looking for "no" or "42".)
TERM = re.compile(r"[^\W_]+")
# More words than this narrow a search no further; the rest are left out.
MAX_TERMS = 16
# Where a snippet marks a matched word: control characters the sanitizer drops from every stored
# message, so no message text carries them itself.
START, STOP = "\x02", "\x03"
MARKED = re.compile(f"{START}(.*?){STOP}", re.S)
# A hit shows about this many words of its message, from a few before its first matched word.
SNIPPET_WORDS = 24
WORDS_BEFORE = 6
NOTHING_TYPED = "Type a word or a number that the messages you are looking for contain."
NO_WORDS = "Nothing to search for: only letters and digits are searched, and the query has none."


@dataclass(frozen=True)
class Hit:
    """A message found, its conversation loaded with it."""

    message: Message
    # Its words around the first match, each matched word between START and STOP: raw text, for `highlighted`.
    snippet: str


@dataclass(frozen=True)
class Results:
    """One page of a search, best match first."""

    hits: list[Hit] = field(default_factory=list)
    # Whether another page follows.
    more: bool = False
    # Why nothing was searched ("" when it was).
    hint: str = ""


def search_terms(query: str) -> list[str]:
    """Return the distinct words of the operator's query, lower case, in order."""
    return list(dict.fromkeys(term.lower() for term in TERM.findall(query)))[:MAX_TERMS]


def search_messages(query: str, limit: int = PAGE_SIZE, page: int = 1, number: str | None = None) -> Results:
    """Return page `page` (from 1) of the WhatsApp messages holding every word of `query`, `limit` a
    page, best first; only those of conversations with `number` (a conversation key, "" the default
    number) when it is given. A query without a word searches nothing and says why in `hint`."""
    terms = search_terms(query)
    if not terms:
        return Results(hint=NO_WORDS if query.strip() else NOTHING_TYPED)
    backend = POSTGRES if isinstance(database.obj, PostgresqlDatabase) else SQLITE
    ranked = (
        backend.matching(terms, Message.select(Message.id).join(Conversation))
        .where(Message.from_whatsapp(), Conversation.on_whatsapp())
        .limit(limit + 1)
        .offset((max(page, 1) - 1) * limit)
    )
    if number is not None:
        ranked = ranked.where(Conversation.number == number)
    ids = [message_id for (message_id,) in ranked.tuples()]
    if not ids:
        return Results()
    page_ids = ids[:limit]
    marked = backend.marked(terms, page_ids)
    messages = {message.id: message
                for message in Message.select(Message, Conversation).join(Conversation).where(Message.id.in_(page_ids))}
    # A message deleted between the two reads is left out.
    hits = [Hit(messages[message_id], excerpt(marked.get(message_id, messages[message_id].content)))
            for message_id in page_ids if message_id in messages]
    return Results(hits=hits, more=len(ids) > limit)


def excerpt(marked: str, words: int = SNIPPET_WORDS) -> str:
    """Return about `words` words of a marked message on one line, from a few before its first matched
    word, with … where words were left out."""
    split = marked.split()
    first = next((index for index, word in enumerate(split) if START in word), 0)
    start = max(0, min(first - WORDS_BEFORE, len(split) - words))
    shown = " ".join(split[start:start + words])
    return f"{'… ' if start else ''}{shown}{' …' if start + words < len(split) else ''}"


def highlighted(snippet: str, mask: Callable[[str], str]) -> Markup:
    """Return a hit's snippet as HTML: its text masked by `mask` and escaped, each matched word in
    <mark>. A matched word the mask changed (a phone number's digits) is not marked."""
    matched = {word.lower() for marked in MARKED.findall(snippet) for word in TERM.findall(marked)}
    text = mask(snippet.replace(START, "").replace(STOP, ""))
    # Split around the words: the odd pieces are words, the even ones what lies between them.
    return Markup("").join(Markup("<mark>{}</mark>").format(piece) if piece.lower() in matched else piece
                           for piece in re.split(f"({TERM.pattern})", text))


class _Sqlite:
    """FTS5's MATCH, bm25() and highlight() over the external-content table `message_fts`."""

    fts = Table(MESSAGE_FTS_TABLE)
    # MATCH, bm25() and highlight() take the FTS table's hidden column of its own name, whatever its alias.
    hidden = SQL(MESSAGE_FTS_TABLE)

    @staticmethod
    def query(terms: list[str]) -> str:
        # Quoted, a term is a string to FTS5, never an operator (OR, NOT, NEAR) or a column filter;
        # strings side by side must all match.
        return " ".join(f'"{term}"' for term in terms)

    def matching(self, terms: list[str], messages):
        """Narrow `messages` to those holding every term, best (lowest bm25) first."""
        return (messages.switch(Message)
                .join(self.fts, on=(self.fts.c.rowid == Message.id))
                .where(NodeList((self.hidden, SQL("MATCH ?", [self.query(terms)]))))
                .order_by(fn.bm25(self.hidden), Message.id.desc()))

    def marked(self, terms: list[str], message_ids: list[int]) -> dict[int, str]:
        """Return each message's text with its matched words marked, by its id."""
        rows = (self.fts.select(self.fts.c.rowid, fn.highlight(self.hidden, 0, START, STOP))
                .where(NodeList((self.hidden, SQL("MATCH ?", [self.query(terms)]))), self.fts.c.rowid.in_(message_ids))
                .tuples()
                .execute(database))
        return dict(rows)


class _Postgres:
    """The stored tsvector `message.search` against plainto_tsquery, ranked by ts_rank, marked by ts_headline."""

    search = Column(Message, MESSAGE_SEARCH_COLUMN)

    @staticmethod
    def query(terms: list[str]):
        # plainto_tsquery reads no operators at all: the words, and'ed.
        return fn.plainto_tsquery("simple", " ".join(terms))

    def matching(self, terms: list[str], messages):
        """Narrow `messages` to those holding every term, best (highest ts_rank) first."""
        query = self.query(terms)
        return (messages.where(NodeList((self.search, SQL("@@"), query)))
                .order_by(fn.ts_rank(self.search, query).desc(), Message.id.desc()))

    def marked(self, terms: list[str], message_ids: list[int]) -> dict[int, str]:
        """Return each message's text with its matched words marked, by its id."""
        # The whole text, cut by `excerpt` as SQLite's is: ts_headline's own fragments end early, before a
        # number or a short word.
        headline = fn.ts_headline("simple", Message.content, self.query(terms),
                                  f"HighlightAll=true, StartSel={START}, StopSel={STOP}")
        return dict(Message.select(Message.id, headline).where(Message.id.in_(message_ids)).tuples())


SQLITE, POSTGRES = _Sqlite(), _Postgres()
