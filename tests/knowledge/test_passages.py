"""Splitting text into passages: by headings, then within a long section at its natural boundaries."""
from __future__ import annotations

from chatbot.knowledge.passages import Passage, estimate_tokens, split_passages


def sentences(count: int, start: int = 0) -> str:
    return " ".join(f"Sentence number {number} is here." for number in range(start, start + count))


def test_tokens_are_estimated_from_length_and_never_zero_for_text():
    assert [estimate_tokens(text) for text in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]


def test_each_section_is_a_passage_headed_by_its_heading_path():
    text = "Welcome.\n\n# Menu\n## Drinks\nTea is 2 EUR.\n\n### Hot\nCocoa.\n## Food\nCake.\n# Contact\nCall us."
    assert [(passage.heading, passage.text) for passage in split_passages(text)] == [
        ("", "Welcome."),
        ("Menu › Drinks", "Tea is 2 EUR."),
        ("Menu › Drinks › Hot", "Cocoa."),
        ("Menu › Food", "Cake."),
        ("Contact", "Call us."),
    ]


def test_the_embedding_text_carries_the_heading():
    assert Passage("Menu › Drinks", "Tea.", 1).embedding_text == "Menu › Drinks\nTea."
    assert Passage("", "Tea.", 1).embedding_text == "Tea."


def test_whitespace_is_normalised_and_empty_sections_make_no_passage():
    text = "# Empty\n\n\n# Prices ##\r\n  Tea\t is   2.  \r\n\r\n\r\n\r\nCoffee is 3.\n#\tNote  \n   \n"
    assert split_passages(text) == [Passage("Prices", "Tea is 2.\n\nCoffee is 3.", 6)]


def test_a_hash_inside_a_code_block_is_not_a_heading():
    text = "# Setup\n```\n# install it\npip install cafe\n```"
    assert [passage.heading for passage in split_passages(text)] == ["Setup"]


def test_a_long_section_is_cut_at_paragraphs_with_the_previous_end_repeated():
    paragraphs = [f"Paragraph {number}: " + "word " * 25 for number in range(3)]
    passages = split_passages("# Long\n" + "\n\n".join(paragraphs), max_tokens=60, overlap_tokens=10)
    repeated = "word " * 7 + "word\n\n"
    assert passages == [Passage("Long", paragraphs[0].strip(), 35),
                        Passage("Long", repeated + paragraphs[1].strip(), 45),
                        Passage("Long", repeated + paragraphs[2].strip(), 45)]


def test_a_long_paragraph_is_cut_at_sentences_and_the_overlap_starts_at_a_sentence():
    passages = split_passages(sentences(30), max_tokens=60, overlap_tokens=10)
    assert [passage.text for passage in passages] == [
        sentences(8), sentences(8, start=7), sentences(8, start=14), sentences(8, start=21), sentences(2, start=28)]
    assert [passage.tokens for passage in passages] == [54, 55, 56, 56, 14]


def test_a_sentence_longer_than_a_passage_is_cut_at_words():
    words = " ".join(f"w{number:03d}" for number in range(200))
    passages = split_passages(words, max_tokens=50, overlap_tokens=5)
    assert all(len(passage.text) <= 200 for passage in passages)
    assert passages[0].text.startswith("w000 w001") and passages[-1].text.endswith("w199")
    rebuilt = passages[0].text.split()
    for passage in passages[1:]:
        repeated = passage.text.split()
        assert repeated[:4] == rebuilt[-4:]
        rebuilt += repeated[4:]
    assert rebuilt == words.split()


def test_a_word_longer_than_a_passage_is_sliced():
    blob = "x" * 500
    passages = split_passages(f"Key: {blob}", max_tokens=50, overlap_tokens=0)
    assert [passage.text for passage in passages] == ["Key:", "x" * 198, "x" * 198, "x" * 104]


def test_the_same_text_always_gives_the_same_passages():
    text = "# A\n" + sentences(50) + "\n\n## B\n" + sentences(5)
    assert split_passages(text, 40, 8) == split_passages(text, 40, 8)


def test_no_text_gives_no_passages():
    assert split_passages("") == []
    assert split_passages("# Only a heading\n\n## And another\n") == []
