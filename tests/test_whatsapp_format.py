"""to_whatsapp: the model's Markdown shown in WhatsApp's own formatting; code kept; splits keep fences."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot.whatsapp import split_message, utf16_length
from chatbot.whatsapp_format import to_whatsapp

GOLDEN = {
    "recipe_with_heading_and_numbered_steps": (
        "# Classic pancakes\n\n"
        "**Serves:** 4\n\n"
        "## Ingredients\n"
        "- 2 eggs\n"
        "- 300 ml *whole* milk\n"
        "- 200 g flour\n\n"
        "## Steps\n"
        "1. Whisk the eggs and milk.\n"
        "2. Fold in the flour — **don't overmix**.\n"
        "3. Cook each side for ~1 minute.\n\n"
        "Enjoy! 🥞",
        "*Classic pancakes*\n\n"
        "*Serves:* 4\n\n"
        "*Ingredients*\n"
        "• 2 eggs\n"
        "• 300 ml _whole_ milk\n"
        "• 200 g flour\n\n"
        "*Steps*\n"
        "1. Whisk the eggs and milk.\n"
        "2. Fold in the flour — *don't overmix*.\n"
        "3. Cook each side for ~1 minute.\n\n"
        "Enjoy! 🥞",
    ),
    "comparison_table": (
        "Here's a quick comparison:\n\n"
        "| Plan | Price | Storage |\n"
        "|:-----|------:|:-------:|\n"
        "| Basic | $5/month | 10 GB |\n"
        "| **Pro** | $12/month | 1 TB |\n\n"
        "For most people, *Basic* is enough.",
        "Here's a quick comparison:\n\n"
        "*Basic*\nPrice: $5/month\nStorage: 10 GB\n\n"
        "*Pro*\nPrice: $12/month\nStorage: 1 TB\n\n"
        "For most people, _Basic_ is enough.",
    ),
    "two_column_table": (
        "| Language | Typing |\n| --- | --- |\n| Python | dynamic |\n| Rust | `static` |",
        "*Python*\nTyping: dynamic\n\n*Rust*\nTyping: `static`",
    ),
    "code_with_stars_inside": (
        "In Python, `**` is the power operator:\n\n"
        "```python\n"
        "def square(x):\n"
        "    return x ** 2  # **not** bold\n"
        "\n"
        "print(square(4))  # _16_\n"
        "```\n\n"
        "So `2 ** 3` gives **8**.",
        "In Python, `**` is the power operator:\n\n"
        "```\n"
        "def square(x):\n"
        "    return x ** 2  # **not** bold\n"
        "\n"
        "print(square(4))  # _16_\n"
        "```\n\n"
        "So `2 ** 3` gives *8*.",
    ),
    "nested_bullets": (
        "Packing list:\n\n"
        "* Clothes\n"
        "    * 3 shirts\n"
        "    * 2 pairs of *comfortable* shoes\n"
        "* Documents\n"
        "    + Passport\n"
        "        - valid 6 months ahead\n"
        "* Snacks",
        "Packing list:\n\n"
        "• Clothes\n"
        "   • 3 shirts\n"
        "   • 2 pairs of _comfortable_ shoes\n"
        "• Documents\n"
        "   • Passport\n"
        "      • valid 6 months ahead\n"
        "• Snacks",
    ),
    "links": (
        "See [the Python tutorial](https://docs.python.org/3/tutorial/) and <https://example.org/guide>. "
        "The site [https://example.com](https://example.com) has more, "
        "and ![a diagram](https://example.com/flow.png \"Flow\") shows it.",
        "See the Python tutorial (https://docs.python.org/3/tutorial/) and https://example.org/guide. "
        "The site https://example.com has more, and a diagram (https://example.com/flow.png) shows it.",
    ),
    "bold_inside_italics": (
        "That is *really **very** important*, and ***this*** is both.",
        "That is _really *very* important_, and *_this_* is both.",
    ),
    "underscores_strike_and_arithmetic": (
        "__Note:__ the ~~old~~ price is gone; _new_ rules apply to snake_case_names and 2 * 3 * 4.",
        "*Note:* the ~old~ price is gone; _new_ rules apply to snake_case_names and 2 * 3 * 4.",
    ),
    "heading_with_bold_and_closing_hashes": (
        "## **Step 1:** install `pip` ##\nThen run it.",
        "*Step 1: install `pip`*\nThen run it.",
    ),
    "blockquote_and_rule": (
        "> Be *kind*,\n> always.\n\n---\n\nThat's the motto.",
        "> Be _kind_,\n> always.\n\nThat's the motto.",
    ),
    "numbered_list_with_parentheses": (
        "Options:\n1) Train\n2) **Bus**\n10) Walk",
        "Options:\n1) Train\n2) *Bus*\n10) Walk",
    ),
    "unclosed_code_fence_is_closed": (
        "Try this:\n```bash\necho \"**hi**\" | tr a-z A-Z\n",
        "Try this:\n```\necho \"**hi**\" | tr a-z A-Z\n```",
    ),
    "plain_answer_unchanged": (
        "The capital of France is Paris. It has about 2.1 million people!",
        "The capital of France is Paris. It has about 2.1 million people!",
    ),
}


@pytest.mark.parametrize("markdown, expected", GOLDEN.values(), ids=GOLDEN.keys())
def test_model_markdown_reads_as_whatsapp_formatting(markdown, expected):
    assert to_whatsapp(markdown) == expected


def test_long_answer_with_a_code_block_is_split_with_each_half_fenced():
    lines = [f"    total += price[{i}] * qty[{i}]  # **line {i}**" for i in range(45)]
    answer = ("Here is the **full** script. It adds up every order line.\n\n"
              "```python\ndef total_of(price, qty):\n    total = 0\n" + "\n".join(lines)
              + "\n    return total\n```\n\nRun it with *python3 total.py*.")
    assert split_message(to_whatsapp(answer)) == [
        "Here is the *full* script. It adds up every order line.\n\n"
        "```\ndef total_of(price, qty):\n    total = 0\n" + "\n".join(lines[:31]) + "\n```",
        "```\n" + "\n".join(lines[31:]) + "\n    return total\n```\n\nRun it with _python3 total.py_.",
    ]


def test_code_block_that_fits_a_part_is_moved_whole_to_the_next_part():
    prose = "Some background first. " * 40
    code = "\n".join(f"step_{i}()" for i in range(100))
    parts = split_message(f"{prose}\n\n```\n{code}\n```", 1600)
    assert parts == [prose.strip(), f"```\n{code}\n```"]


# No table cells ("|"): a table is reordered into lines, which the golden tests pin down.
# Words of letters and digits: what a reader must find in the answer, whatever the formatting.
WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzÀé中0123456789", min_size=1, max_size=8)
CODE_TEXT = st.text(alphabet="abc xyz*_~#[]()|->=+.\t", min_size=1, max_size=40)


@st.composite
def markdown_token(draw):
    word = draw(WORD)
    return draw(st.sampled_from([
        word, f"**{word}**", f"__{word}__", f"*{word}*", f"_{word}_", f"~~{word}~~", f"***{word}***",
        f"[{word}](https://{word}.example/)", f"`{draw(CODE_TEXT).strip() or word}`", "*", "_", "-", "#",
        "~", f"{word}_{word}",
    ]))


@st.composite
def markdown_line(draw):
    prefix = draw(st.sampled_from(["", "", "# ", "### ", "- ", "* ", "+ ", "  - ", "    * ", "1. ", "2) ",
                                   "> "]))
    return prefix + " ".join(draw(st.lists(markdown_token(), min_size=1, max_size=8)))


@st.composite
def code_block(draw):
    lines = draw(st.lists(CODE_TEXT, min_size=1, max_size=6))
    return "\n".join(line.rstrip("\n") for line in lines).rstrip("\n") or "x"


@st.composite
def markdown_answer(draw):
    blocks = draw(st.lists(st.one_of(markdown_line(), code_block().map(lambda code: ("code", code))),
                           min_size=1, max_size=12))
    lines = [f"```python\n{block[1]}\n```" if isinstance(block, tuple) else block for block in blocks]
    return "\n".join(lines), [block[1] for block in blocks if isinstance(block, tuple)]


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text)


def is_subsequence(needles: list[str], haystack: list[str]) -> bool:
    remaining = iter(haystack)
    return all(any(needle == straw for straw in remaining) for needle in needles)


FENCED = re.compile(r"^```\n(.*?)\n```$", re.MULTILINE | re.DOTALL)
LANGUAGE_TAG = re.compile(r"^```\w+$", re.MULTILINE)
FENCE_LINE = re.compile(r"^[ \t]*```[^`\n]*$", re.MULTILINE)


@settings(max_examples=100, deadline=None)
@given(markdown_answer())
def test_formatting_keeps_every_word_in_order(answer):
    markdown, _ = answer
    # A fence's language tag is Markdown, not part of the answer: WhatsApp would show it as code.
    answer_words = words(LANGUAGE_TAG.sub("```", markdown))
    assert is_subsequence(answer_words, words(to_whatsapp(markdown)))


@settings(max_examples=100, deadline=None)
@given(markdown_answer())
def test_formatting_never_changes_code(answer):
    markdown, code_blocks = answer
    formatted = to_whatsapp(markdown)
    assert [block.strip() for block in FENCED.findall(formatted)] == [block.strip() for block in code_blocks]
    inline_code = re.findall(r"`[^`\n]+`", FENCED.sub("", markdown))
    assert is_subsequence(inline_code, re.findall(r"`[^`\n]+`", FENCED.sub("", formatted)))


@settings(max_examples=100, deadline=None)
@given(st.lists(markdown_answer(), min_size=1, max_size=6), st.integers(min_value=60, max_value=400))
def test_split_parts_never_leave_a_code_fence_open(answers, limit):
    formatted = to_whatsapp("\n\n".join(markdown for markdown, _ in answers))
    for part in split_message(formatted, limit):
        assert utf16_length(part) <= limit
        assert len(FENCE_LINE.findall(part)) % 2 == 0, part
