"""Reading files into a title and Markdown-like text, and the one-line reason when one cannot be read."""
from __future__ import annotations

import pytest

from chatbot.knowledge.extract import Document, ExtractionError, extract, extract_html
from tests.knowledge.documents import blank_pdf, encrypted_pdf, pdf_with_text, word_document

PAGE = b"""<html><head><meta charset="utf-8"><title>Opening hours | Cafe Rosa</title></head><body>
<nav><a href="/">Home</a> <a href="/menu">Menu</a></nav>
<main><h1>Opening hours</h1>
<p>We open at eight every weekday and close at six in the evening, except on public holidays.</p>
<h2>Weekends</h2><p>On Saturdays we open at nine and close at four. Caf\xc3\xa9 au lait is our special.</p>
<table><tr><th>Day</th><th>Hours</th></tr><tr><td>Mon</td><td>8-18</td></tr></table>
</main><footer>Copyright 2024</footer><script>var tracking = 1;</script></body></html>"""


def reason(data: bytes, name: str, content_type: str = "") -> str:
    with pytest.raises(ExtractionError) as raised:
        extract(data, name, content_type)
    return str(raised.value)


def test_a_pdf_gives_its_pages_text_a_blank_line_apart_and_its_metadata_title():
    data = pdf_with_text(["Opening hours", "We open at eight."], ["Closed on Sundays."], title="Cafe Rosa menu")
    assert extract(data, "menu.pdf") == Document("Cafe Rosa menu", "Opening hours\nWe open at eight.\n\n"
                                                                   "Closed on Sundays.")


def test_a_pdf_without_a_title_is_named_by_its_file():
    assert extract(pdf_with_text(["Hello"]), "price list.pdf").title == "price list"


def test_a_pdf_of_blank_pages_has_no_text_layer():
    assert reason(blank_pdf(), "scan.pdf") == "no text layer: scanned PDF?"


def test_a_pdf_locked_with_a_password_is_refused_as_such():
    assert reason(encrypted_pdf("secret"), "locked.pdf") == "password-protected PDF"


def test_a_pdf_encrypted_only_against_printing_is_read():
    assert extract(encrypted_pdf(""), "rights.pdf").text == "Members only"


def test_a_truncated_pdf_is_broken_with_a_short_reason():
    assert reason(pdf_with_text(["Hello"])[:200], "cut.pdf") == "broken PDF: Stream has ended unexpectedly"


def test_a_word_document_keeps_its_headings_lists_and_tables():
    document = extract(word_document(), "cafe.docx")
    assert document == Document("Cafe Rosa", "# Cafe Rosa\n\nA small cafe by the harbour.\n\n# Opening hours\n\n"
                                              "Weekdays from eight.\n\n- Closed on Sundays\n\n## Prices\n\n"
                                              "Tea | 2 EUR\nCake | 4 EUR")


def test_a_word_documents_own_title_comes_first():
    assert extract(word_document(title="Harbour cafe"), "cafe.docx").title == "Harbour cafe"


@pytest.mark.parametrize("data", [b"PK\x03\x04 not really a zip", b"just some text"])
def test_a_broken_word_document_says_so(data):
    assert reason(data, "cafe.docx") == "broken DOCX file"


def test_markdown_is_read_as_it_is_titled_by_its_first_heading():
    text = "Intro line.\r\n\r\n## Prices\r\nTea is 2 EUR.\r\n"
    assert extract(text.encode("utf-8-sig"), "notes.md") == Document("Prices", "Intro line.\n\n## Prices\n"
                                                                               "Tea is 2 EUR.")


def test_a_text_file_from_windows_falls_back_to_cp1252():
    assert extract("Café – open “daily”".encode("cp1252"), "notes.txt") == Document("notes", "Café – open “daily”")


def test_a_file_with_nul_bytes_is_not_a_text_file():
    assert reason(b"MZ\x00\x00binary", "program.txt") == "not a text file"


def test_utf16_with_a_bom_is_text_despite_its_nul_bytes():
    assert extract("# Menu\nTea".encode("utf-16"), "menu.txt") == Document("Menu", "# Menu\nTea")


def test_the_content_type_decides_when_the_name_has_no_known_extension():
    assert extract(b"# Menu\nTea", "pasted", "text/markdown; charset=utf-8").text == "# Menu\nTea"


def test_an_unknown_file_type_names_the_types_that_are_read():
    assert reason(b"data", "sheet.xyz") == "unknown file type .xyz: give a PDF, DOCX, Markdown, text or HTML file"


def test_a_whitespace_only_file_is_an_empty_document():
    assert reason(b" \n\t\n", "empty.md") == "empty document: no text found"


def test_an_html_file_keeps_the_main_text_with_headings_and_tables_and_drops_menus_and_scripts():
    document = extract(PAGE, "hours.html")
    assert document.title == "Opening hours"
    assert document.text == (
        "# Opening hours\n\nWe open at eight every weekday and close at six in the evening, except on public "
        "holidays.\n\n## Weekends\n\nOn Saturdays we open at nine and close at four. Café au lait is our special."
        "\n\n| Day | Hours | \n|---|---|\n| Mon | 8-18 |")


def test_a_page_of_boilerplate_only_still_gives_its_text():
    page = b"<html><head><title>Contact</title></head><body><footer>Call us on <b>555 0100</b></footer></body></html>"
    assert extract_html(page) == Document("Contact", "Call us on 555 0100")


def test_a_page_without_a_title_is_named_by_its_heading_then_its_url():
    assert extract_html("<html><body><h1>Our team</h1><p>Ana and Bo.</p></body></html>").title == "Our team"
    assert extract_html("<p>Ana and Bo run the cafe.</p>", "https://cafe.example/about-us/").title == "about-us"


def test_a_page_declaring_its_encoding_is_read_once_decoded():
    page = "<?xml version='1.0' encoding='iso-8859-1'?><html><body><p>Crème brûlée</p></body></html>"
    assert extract_html(page).text == "Crème brûlée"


def test_a_page_with_no_text_says_so():
    with pytest.raises(ExtractionError, match=r"^no readable text on the page$"):
        extract_html(b"<html><body><script>var x = 1;</script><img src='a.png'></body></html>")
