"""split_message and utf16_length: parts fit the limit, cut at natural boundaries, keep graphemes whole."""
from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot import sanitizer
from chatbot.sanitizer import MAX_COMBINING_RUN, MAX_GRAPHEME_CHARS, clean_text
from chatbot.whatsapp import SHORTENED_NOTE, WHATSAPP_LIMIT, split_message, utf16_length

FAMILY = "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466"  # man, woman, girl, boy (ZWJ)
RAINBOW_FLAG = "\U0001F3F3\uFE0F\u200D\U0001F308"
FRANCE, GERMANY, JAPAN = "\U0001F1EB\U0001F1F7", "\U0001F1E9\U0001F1EA", "\U0001F1EF\U0001F1F5"
WAVE_MEDIUM = "\U0001F44B\U0001F3FD"  # waving hand, medium skin tone
E_ACUTE = "e\u0301"  # e + combining acute accent
KEYCAP_ONE = "1\uFE0F\u20E3"
SCOTLAND = "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"

# Whole graphemes: what a reader sees as one character, however many code points it takes.
GRAPHEMES = [
    "a", "b", "z", "Q", "7", "é", E_ACUTE, "n\u0303\u0323", "中", "文", "字", "😀", "🎉",
    FAMILY, RAINBOW_FLAG, FRANCE, GERMANY, JAPAN, WAVE_MEDIUM, KEYCAP_ONE, SCOTLAND, "❤\uFE0F",
]
COMBINING_MARKS = ["\u0301", "\u0308", "\u0323", "\u20E3"]


def test_utf16_length_counts_astral_characters_twice():
    assert utf16_length("") == 0
    assert utf16_length("abc") == 3
    assert utf16_length("中文") == 2
    assert utf16_length("😀") == 2
    assert utf16_length(E_ACUTE) == 2
    assert utf16_length(FAMILY) == 11
    assert utf16_length(FRANCE) == 4


def test_short_text_is_one_part():
    assert split_message("Hello there!", 20) == ["Hello there!"]


def test_text_exactly_at_the_limit_is_one_part():
    text = "word " * 319 + "words"
    assert utf16_length(text) == WHATSAPP_LIMIT
    assert split_message(text) == [text]


def test_surrounding_whitespace_is_dropped_and_blank_text_has_no_parts():
    assert split_message("  \n Hello \n\n ", 20) == ["Hello"]
    assert split_message(" \n\t ", 20) == []


def test_paragraph_boundary_is_preferred_over_a_later_sentence_end():
    text = "Alpha beta gamma.\n\nDelta epsilon. Zeta eta theta iota"
    assert split_message(text, 40) == ["Alpha beta gamma.", "Delta epsilon. Zeta eta theta iota"]


def test_sentence_end_is_preferred_over_a_later_word_boundary():
    text = "One two three. Four five six seven"
    assert split_message(text, 25) == ["One two three.", "Four five six seven"]


def test_sentence_end_with_closing_quote_is_a_sentence_boundary():
    text = 'He said "go home." Then we left the old town'
    assert split_message(text, 30)[0] == 'He said "go home."'


@pytest.mark.parametrize("limit", [21, 22])
def test_last_sentence_end_that_fits_is_chosen_even_at_the_window_edge(limit):
    # The second sentence ends exactly at the limit (its trailing space inside or just outside).
    text = "aaaa bbbb. cccc dddd. eeee ffff"
    assert split_message(text, limit) == ["aaaa bbbb. cccc dddd.", "eeee ffff"]


def test_word_boundary_is_used_when_no_sentence_ends():
    text = "alpha beta gamma delta epsilon zeta eta theta"
    parts = split_message(text, 12)
    assert parts == ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]


def test_words_are_never_cut_when_they_fit():
    text = "The quick brown fox jumps over the lazy dog and keeps running far away"
    for limit in range(9, 40):
        parts = split_message(text, limit)
        assert [word for part in parts for word in part.split()] == text.split(), limit


def test_token_longer_than_the_limit_is_hard_cut():
    assert split_message("a" * 50, 20) == ["a" * 20, "a" * 20, "a" * 10]


def test_hard_cut_backs_off_to_keep_a_combining_accent_with_its_letter():
    text = "x" * 9 + E_ACUTE + "y" * 9
    parts = split_message(text, 10)
    assert parts == ["x" * 9, E_ACUTE + "y" * 8, "y"]


def test_combining_accents_stay_with_their_letters():
    parts = split_message(E_ACUTE * 10, 5)
    assert parts == [E_ACUTE * 2] * 5


def test_zwj_family_emoji_is_never_broken():
    text = "x" * 10 + FAMILY + "y" * 10
    for limit in range(11, 30):
        parts = split_message(text, limit)
        assert "".join(parts) == text
        assert sum(FAMILY in part for part in parts) == 1, (limit, parts)


def test_flags_are_cut_between_regional_indicator_pairs():
    text = "xx" + FRANCE + GERMANY + JAPAN + FRANCE
    parts = split_message(text, 8)
    assert parts == ["xx" + FRANCE, GERMANY + JAPAN, FRANCE]


def test_skin_tone_modifier_stays_with_its_emoji():
    assert split_message(WAVE_MEDIUM * 3, 6) == [WAVE_MEDIUM] * 3


def test_limit_is_counted_in_utf16_units_not_code_points():
    assert split_message("😀" * 10, 10) == ["😀" * 5, "😀" * 5]


def grapheme_boundaries(graphemes: list[str]) -> set[int]:
    positions, total = {0}, 0
    for grapheme in graphemes:
        total += len(grapheme)
        positions.add(total)
    return positions


def part_spans(text: str, parts: list[str]) -> list[tuple[int, int]]:
    """Locate each part in `text`, in order (parts only lose surrounding whitespace)."""
    spans, position = [], 0
    for part in parts:
        start = text.index(part, position)
        assert text[position:start].strip() == ""
        spans.append((start, start + len(part)))
        position = start + len(part)
    assert text[position:].strip() == ""
    return spans


characters = st.characters(codec="utf-8")
pieces = st.one_of(
    characters,
    characters,
    st.sampled_from(GRAPHEMES),
    st.sampled_from(COMBINING_MARKS),
    st.sampled_from([" ", " ", "\n", "\n\n", ". ", "! ", "\t", "\u00A0", "\u3000"]),
    st.text(alphabet="abcdefghij", min_size=1, max_size=12),
    st.text(alphabet="中文字漢語日本", min_size=1, max_size=8),
)
texts = st.lists(pieces, max_size=80).map("".join)
limits = st.integers(min_value=20, max_value=80)


@settings(max_examples=100, deadline=None)
@given(text=texts, limit=limits)
def test_every_part_is_non_empty_and_within_the_limit(text, limit):
    for part in split_message(text, limit):
        assert part.strip()
        assert utf16_length(part) <= limit


@settings(max_examples=100, deadline=None)
@given(text=texts, limit=limits)
def test_parts_keep_the_non_whitespace_content_in_order(text, limit):
    parts = split_message(text, limit)
    assert "".join("".join(parts).split()) == "".join(text.split())


word_graphemes = st.sampled_from(GRAPHEMES + list("abcdefghijklmnop"))


@st.composite
def words_and_limit(draw):
    limit = draw(limits)
    # A separator may add "." or "?" to the word before it: leave one unit of room for it.
    word = st.lists(word_graphemes, min_size=1, max_size=12).map("".join).filter(
        lambda candidate: utf16_length(candidate) < limit
    )
    words = draw(st.lists(word, min_size=1, max_size=40))
    separators = draw(st.lists(st.sampled_from([" ", "  ", "\n", "\n\n", ". ", "? ", "\t"]),
                               min_size=len(words), max_size=len(words)))
    text = "".join(w + s for w, s in zip(words, separators, strict=True))
    return text, limit


@settings(max_examples=100, deadline=None)
@given(case=words_and_limit())
def test_words_that_fit_are_never_cut(case):
    text, limit = case
    parts = split_message(text, limit)
    assert [word for part in parts for word in part.split()] == text.split()


@settings(max_examples=100, deadline=None)
@given(graphemes=st.lists(st.one_of(st.sampled_from(GRAPHEMES), st.just(" ")), max_size=60),
       limit=limits)
def test_cuts_fall_on_grapheme_boundaries(graphemes, limit):
    text = "".join(graphemes)
    boundaries = grapheme_boundaries(graphemes)
    for start, end in part_spans(text, split_message(text, limit)):
        assert start in boundaries and end in boundaries, (text[start:end], limit)


# --- one rule for every cut: the inbound trim and the reply splitter ------------------------------

GRAPHEMES = {
    "flag": "\U0001F1F3\U0001F1F1",  # 🇳🇱, two regional indicators
    "zwj family": "\U0001F469\u200D\U0001F469\u200D\U0001F467",  # 👩‍👩‍👧
    "skin tone": "\U0001F44D\U0001F3FD",  # 👍🏽
    "combining marks": "q\u0301\u0302",  # q with two combining accents: NFC has no precomposed form
    "subdivision flag": "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F",
}


@pytest.mark.parametrize("name", sorted(GRAPHEMES))
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_the_inbound_trim_never_splits_a_grapheme(name, offset):
    grapheme = GRAPHEMES[name]
    text = "a" * offset + grapheme * 6
    for limit in range(offset + 1, len(text)):
        kept = clean_text(text, max_chars=limit).text
        rest = kept[offset:]
        assert rest == grapheme * (len(rest) // len(grapheme)), (name, limit, kept)


@pytest.mark.parametrize("name", sorted(GRAPHEMES))
def test_the_reply_splitter_never_splits_a_grapheme(name):
    grapheme = GRAPHEMES[name]
    for limit in range(utf16_length(grapheme), utf16_length(grapheme) * 3 + 2):
        parts = split_message(grapheme * 7, limit=limit)
        assert "".join(parts) == grapheme * 7
        assert all(part == grapheme * (len(part) // len(grapheme)) for part in parts), (name, limit, parts)


# --- storms: text with nowhere natural to cut -------------------------------------------------------

STORMS = {
    "thumbs and joiners": "\U0001F44D\u200D" * 10_000,  # one "grapheme" of 20,000 code points
    "one joiner chain": "\U0001F44D" + "\u200D" * 20_000,
    "combining marks": "a" + "\u0301" * 20_000,
    "mixed combining marks": "a" + "\u0301\u0323" * 10_000,
    "no spaces": "x" * 20_000,
    "astral, no spaces": "\U0001F600" * 20_000,
    "flag run": "\U0001F1F3\U0001F1F1" * 10_000,
    "a word, then no spaces": "Hi " + "y" * 20_000,
}
MAX_REPLY_PARTS = 10
# A hard cut backs off at most one grapheme of MAX_GRAPHEME_CHARS code points, two units each at most.
FULL_PART = WHATSAPP_LIMIT - 2 * MAX_GRAPHEME_CHARS


@pytest.fixture
def grapheme_checks(monkeypatch):
    """Count how often the one grapheme rule is asked, as a measure of the work a cut takes."""
    calls = []
    rule = sanitizer.keeps_graphemes_whole

    def counted(text, index):
        calls.append(index)
        return rule(text, index)

    monkeypatch.setattr(sanitizer, "keeps_graphemes_whole", counted)
    return calls


@pytest.mark.parametrize("name", sorted(STORMS))
def test_a_storm_becomes_at_most_max_reply_parts_full_parts_the_last_saying_so(name, grapheme_checks):
    parts = split_message(STORMS[name], max_parts=MAX_REPLY_PARTS)
    assert len(parts) == MAX_REPLY_PARTS
    assert all(FULL_PART <= utf16_length(part) <= WHATSAPP_LIMIT for part in parts), [utf16_length(p) for p in parts]
    assert parts[-1].endswith(" " + SHORTENED_NOTE)
    kept = "".join(parts).removesuffix(" " + SHORTENED_NOTE)
    assert "".join(STORMS[name].split()).startswith("".join(kept.split()))
    assert len(grapheme_checks) <= MAX_REPLY_PARTS * (MAX_GRAPHEME_CHARS + 1)


@pytest.mark.parametrize("name", sorted(STORMS))
def test_an_uncapped_storm_is_cut_into_full_parts_with_bounded_work(name, grapheme_checks):
    text = STORMS[name]
    parts = split_message(text)
    assert all(FULL_PART <= utf16_length(part) <= WHATSAPP_LIMIT for part in parts[:-1])
    assert len(parts) <= -(-utf16_length(text) // FULL_PART)
    assert "".join("".join(parts).split()) == "".join(text.split())
    assert len(grapheme_checks) <= len(parts) * (MAX_GRAPHEME_CHARS + 1)


def test_a_reply_that_fills_the_cap_exactly_is_not_marked_shortened():
    text = "\n\n".join(["word " * 300] * 3)
    parts = split_message(text, max_parts=3)
    assert parts == split_message(text) and len(parts) == 3
    assert not parts[-1].endswith(SHORTENED_NOTE)


def test_a_one_part_cap_keeps_the_first_sentences_and_the_note():
    text = "First sentence here. " * 200
    [part] = split_message(text, max_parts=1)
    assert part.startswith("First sentence here.") and part.endswith("here. " + SHORTENED_NOTE)
    assert utf16_length(part) <= WHATSAPP_LIMIT


def test_a_normal_sized_grapheme_at_the_edge_of_a_storm_part_is_kept_whole():
    text = ("x" * 1595 + FAMILY) * 3
    parts = split_message(text)
    assert parts[0] == "x" * 1595 and parts[1].startswith(FAMILY)


@settings(max_examples=200, deadline=None)
@given(text=texts, limit=st.integers(min_value=40, max_value=80), max_parts=st.integers(min_value=1, max_value=4))
def test_a_capped_split_is_the_uncapped_one_shortened(text, limit, max_parts):
    whole = split_message(text, limit)
    capped = split_message(text, limit, max_parts=max_parts)
    assert all(utf16_length(part) <= limit for part in capped)
    if len(whole) <= max_parts:
        assert capped == whole
    else:
        assert len(capped) == max_parts
        assert capped[:-1] == whole[:max_parts - 1]
        assert capped[-1].endswith(" " + SHORTENED_NOTE)


@pytest.mark.parametrize("name", sorted(STORMS))
def test_a_storm_inbound_is_trimmed_to_something_within_bounded_work(name, grapheme_checks):
    text = (STORMS[name] * 2)[:32_000]
    cleaned = clean_text(text, max_chars=4096)
    assert cleaned.text.strip() and len(cleaned.text) <= 4096
    assert len(grapheme_checks) <= MAX_GRAPHEME_CHARS + 1
    assert clean_text(cleaned.text).text == cleaned.text


def test_combining_marks_past_the_stream_safe_run_are_dropped():
    cleaned = clean_text("Z" + "\u0301\u0323" * 10_000 + " ok").text
    assert cleaned == unicodedata.normalize("NFC", "Z" + "\u0301\u0323" * (MAX_COMBINING_RUN // 2)) + " ok"


def test_blank_padding_does_not_push_a_long_message_out():
    assert clean_text(" " * 5000 + "hello", max_chars=4096).text == "hello"
