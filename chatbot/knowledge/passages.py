"""Split a document's Markdown-like text into passages: the pieces that are embedded and retrieved.

A passage is one section under its heading path ("Prices › Drinks"), so a question about drinks finds
the section that names them. A section too long for one passage is cut where its text allows, at
paragraphs first, then sentences, then words, and each piece after the first repeats the end of
the one before it: a sentence that runs across a cut is still whole in one of the two. The same
text always gives the same passages, which lets the indexer skip embedding an unchanged source.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

# A rough figure for English and most European languages; embeddings models' limits are far above
# the passage size, so being out by a fraction only changes how much text a passage holds.
CHARS_PER_TOKEN = 4
HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t#]*$")
FENCE = re.compile(r"^\s*(```|~~~)")
PATH_SEPARATOR = " › "
PARAGRAPH_BREAK = "\n\n"
SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+|(?<=[.!?…][\"'”’)\]])\s+")


@dataclass(frozen=True)
class Passage:
    heading: str
    text: str
    tokens: int

    @property
    def embedding_text(self) -> str:
        return f"{self.heading}\n{self.text}" if self.heading else self.text


def estimate_tokens(text: str) -> int:
    """Estimate how many tokens `text` is, without a tokenizer."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def split_passages(text: str, max_tokens: int = 300, overlap_tokens: int = 40) -> list[Passage]:
    """Split `text` by its headings into passages of at most about `max_tokens`, overlapping by about
    `overlap_tokens` where a section had to be cut."""
    limit = max(1, max_tokens) * CHARS_PER_TOKEN
    # The overlap is kept well under the limit, so every piece still adds text of its own.
    overlap = min(max(0, overlap_tokens) * CHARS_PER_TOKEN, limit // 2)
    passages = []
    for heading, paragraphs in sections(text):
        for piece in cut(paragraphs, limit, overlap):
            passages.append(Passage(heading, piece, estimate_tokens(piece)))
    return passages


def sections(text: str) -> list[tuple[str, list[str]]]:
    """Return each section's heading path and its paragraphs, whitespace normalised, in order."""
    found: list[tuple[str, list[str]]] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    in_fence = False

    def close_section() -> None:
        paragraphs = [paragraph for paragraph in paragraphs_of(lines) if paragraph]
        if paragraphs:
            found.append((PATH_SEPARATOR.join(title for _, title in path), paragraphs))
        lines.clear()

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else HEADING.match(line)
        title = " ".join(heading.group(2).split()) if heading else ""
        if not title:
            lines.append(line)
            continue
        close_section()
        level = len(heading.group(1))
        path = [(depth, name) for depth, name in path if depth < level] + [(level, title)]
    close_section()
    return found


def paragraphs_of(lines: list[str]) -> list[str]:
    """Join lines into paragraphs at blank lines; runs of spaces inside a line become one."""
    paragraphs, current = [], []
    for line in lines:
        tidy = " ".join(line.split())
        if tidy:
            current.append(tidy)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


def cut(paragraphs: list[str], limit: int, overlap: int) -> list[str]:
    """Pack a section's paragraphs into pieces of at most `limit` characters, overlapping by about `overlap`."""
    whole = PARAGRAPH_BREAK.join(paragraphs)
    if len(whole) <= limit:
        return [whole]
    # Each unit is (what joins it to the text before, the unit); none is so long that, after an
    # overlap and its joint, it would not fit a piece.
    room = max(1, limit - overlap - len(PARAGRAPH_BREAK))
    units = [unit for paragraph in paragraphs for unit in units_of(paragraph, room)]
    pieces: list[str] = []
    current = ""
    for joint, unit in units:
        if current and len(current) + len(joint) + len(unit) > limit:
            pieces.append(current)
            current = tail(current, overlap)
        current = f"{current}{joint}{unit}" if current else unit
    pieces.append(current)
    return pieces


def units_of(paragraph: str, room: int) -> list[tuple[str, str]]:
    """Return a paragraph as one unit when it fits `room`, else as its sentences, words, or slices of a word."""
    if len(paragraph) <= room:
        return [(PARAGRAPH_BREAK, paragraph)]
    units = []
    for sentence in SENTENCE_END.split(paragraph):
        sentence = " ".join(sentence.split())
        if len(sentence) <= room:
            units.append((" ", sentence))
            continue
        for word in sentence.split(" "):
            # A word longer than a piece (a long URL, an encoded blob) is the one place text is cut mid-run.
            units += [(" ", word[start:start + room]) for start in range(0, len(word), room)]
    first_joint, first = units[0]
    return [(PARAGRAPH_BREAK, first), *units[1:]] if first_joint != PARAGRAPH_BREAK else units


def tail(text: str, size: int) -> str:
    """Return about the last `size` characters of `text`, starting at a sentence when one starts in
    its first half, else at a word."""
    if size <= 0:
        return ""
    if len(text) <= size:
        return text
    start = len(text) - size
    sentence = SENTENCE_END.search(text, start, start + size // 2)
    if sentence is not None:
        return text[sentence.end():]
    if not text[start - 1].isspace():
        space = re.search(r"\s", text[start:])
        if space is None:
            return text[start:]
        start += space.end()
    return text[start:].lstrip()
