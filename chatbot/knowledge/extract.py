"""Read a knowledge file (PDF, DOCX, Markdown, plain text, HTML) into a title and Markdown-like text.

Headings come out as `#` lines whatever the format, so passages.py splits every document the same
way. The files are an operator's uploads or pages from the web, and a parser given a broken or
hostile file can raise almost anything: each reader turns whatever goes wrong into one
ExtractionError whose message is the one line the operator reads beside the source.
"""
from __future__ import annotations

import codecs
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import docx
import lxml.html
import pypdf
import trafilatura
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml.etree import ParserError
from pypdf.errors import FileNotDecryptedError
from trafilatura.metadata import extract_metadata

from chatbot.media import megabytes

KNOWN_TYPES = "give a PDF, DOCX, Markdown, text or HTML file"
# The kind of file each extension or content type names; the extension wins (browsers guess types).
SUFFIXES = {".pdf": "pdf", ".docx": "docx", ".md": "text", ".markdown": "text", ".txt": "text", ".text": "text",
            ".html": "html", ".htm": "html"}
CONTENT_TYPES = {
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "text/markdown": "text", "text/x-markdown": "text", "text/plain": "text",
    "text/html": "html", "application/xhtml+xml": "html",
}
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# Word's built-in heading styles are "Heading 1" to "Heading 9"; Markdown stops at six levels.
DOCX_HEADING = re.compile(r"^Heading ([1-9])$")
LIST_STYLE = re.compile(r"^List (Bullet|Number)")
# lxml refuses a str that still declares its encoding; the text was decoded already.
XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
HTML_BLOCKS = ("p", "div", "section", "article", "main", "header", "footer", "aside", "nav", "li", "tr", "br",
               "table", "ul", "ol", "dl", "dt", "dd", "blockquote", "pre", "form", "figure", "figcaption")
HTML_HEADINGS = {f"h{level}": level for level in range(1, 7)}
SHORT_REASON = 80


class ExtractionError(Exception):
    """A source could not be read; str() is the one-line reason an operator reads in the admin."""


@dataclass(frozen=True)
class Document:
    title: str
    text: str


def extract(data: bytes, name: str, content_type: str = "") -> Document:
    """Read a file of the kind its name's extension says (else its content type says)."""
    suffix = PurePosixPath(name).suffix.lower()
    bare_type = content_type.split(";", 1)[0].strip().lower()
    kind = SUFFIXES.get(suffix) or CONTENT_TYPES.get(bare_type)
    if kind is None:
        named = suffix or bare_type or "(no extension)"
        raise ExtractionError(f"unknown file type {named}: {KNOWN_TYPES}")
    if kind == "pdf":
        document = read_pdf(data)
    elif kind == "docx":
        document = read_docx(data)
    elif kind == "html":
        document = extract_html(data)
    else:
        text = decode_text(data)
        document = Document("", text)
    text = document.text.strip()
    if not text:
        raise ExtractionError("empty document: no text found")
    title = document.title.strip() or first_heading(text) or PurePosixPath(name).stem
    return Document(one_line(title), text)


def extract_html(html: bytes | str, url: str = "") -> Document:
    """Read a web page's main text (headings, lists and tables kept; menus, footers and comments left out)."""
    if isinstance(html, str):
        html = XML_DECLARATION.sub("", html, count=1)
    try:
        text = trafilatura.extract(html, url=url or None, output_format="markdown", include_tables=True,
                                   include_comments=False, include_images=False, favor_recall=True) or ""
        metadata = extract_metadata(html, default_url=url or None)
    except (ValueError, TypeError, ParserError) as error:
        raise ExtractionError(f"broken HTML: {short(error)}") from error
    if not text.strip():
        # trafilatura drops pages it sees as boilerplate only (a footer with the phone number, say);
        # for a knowledge source that text may be the very point of the page.
        text = plain_html_text(html)
    if not text.strip():
        raise ExtractionError("no readable text on the page")
    title = (metadata.title if metadata and metadata.title else "") or first_heading(text) or url_title(url)
    return Document(one_line(title), text.strip())


def plain_html_text(html: bytes | str) -> str:
    """Return every visible text of a page, block by block, headings as `#` lines."""
    try:
        root = lxml.html.document_fromstring(html)
    except (ValueError, ParserError):
        return ""
    for invisible in root.xpath("//script|//style|//noscript|//template|//head"):
        invisible.drop_tree()
    for element in root.iter(*HTML_BLOCKS, *HTML_HEADINGS):
        marker = "#" * HTML_HEADINGS[element.tag] + " " if element.tag in HTML_HEADINGS else ""
        element.text = f"\n\n{marker}{element.text or ''}"
        element.tail = f"\n\n{element.tail or ''}"
    lines = (" ".join(line.split()) for line in root.text_content().splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def read_pdf(data: bytes) -> Document:
    """Read a PDF's text layer, a blank line between pages."""
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        # Many PDFs are encrypted only to restrict printing, and open with the empty password.
        opened = not reader.is_encrypted or bool(reader.decrypt(""))
        pages = [page.extract_text() or "" for page in reader.pages] if opened else []
        title = (reader.metadata.title or "") if opened and reader.metadata else ""
    except FileNotDecryptedError as error:
        raise ExtractionError("password-protected PDF") from error
    except Exception as error:
        # pypdf raises almost anything on a broken file (KeyError, ValueError, RecursionError...).
        raise ExtractionError(f"broken PDF: {short(error)}") from error
    if not opened:
        raise ExtractionError("password-protected PDF")
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise ExtractionError("no text layer: scanned PDF?")
    return Document(str(title), text)


def read_docx(data: bytes) -> Document:
    """Read a Word document's paragraphs and tables in order, its heading styles as `#` lines."""
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = [docx_block(block) for block in document.iter_inner_content()]
        title = document.core_properties.title or ""
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError) as error:
        raise ExtractionError("broken DOCX file") from error
    except Exception as error:
        # A zip of broken XML raises from deep inside lxml or python-docx.
        raise ExtractionError(f"broken DOCX file: {short(error)}") from error
    return Document(title, "\n\n".join(block for block in blocks if block))


def docx_block(block: Paragraph | Table) -> str:
    if isinstance(block, Table):
        rows = (" | ".join(" ".join(cell.text.split()) for cell in row.cells) for row in block.rows)
        return "\n".join(row for row in rows if row.strip(" |"))
    text = " ".join(block.text.split())
    style = block.style.name if block.style is not None else ""
    if not text:
        return ""
    if style == "Title":
        return f"# {text}"
    if heading := DOCX_HEADING.match(style):
        return f"{'#' * min(int(heading.group(1)), 6)} {text}"
    if LIST_STYLE.match(style):
        return f"- {text}"
    return text


def decode_text(data: bytes) -> str:
    """Decode a Markdown or text file: UTF-8 (with or without a BOM), UTF-16 with a BOM, else cp1252."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16").replace("\r\n", "\n")
        except UnicodeDecodeError as error:
            raise ExtractionError("not a text file") from error
    if b"\0" in data:
        raise ExtractionError("not a text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Windows' editors still save cp1252; its five unassigned bytes become U+FFFD, not a failure.
        text = data.decode("cp1252", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def first_heading(text: str) -> str:
    heading = HEADING.search(text)
    return heading.group(1).strip() if heading else ""


def url_title(url: str) -> str:
    """Name a page by its URL's last path segment, else its host."""
    parts = urlsplit(url)
    segment = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    return PurePosixPath(segment).stem or parts.hostname or ""


def one_line(text: str) -> str:
    return " ".join(text.split())


def short(error: Exception) -> str:
    """Return an exception's first line, cut to fit a status line."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else error.__class__.__name__
    return text if len(text) <= SHORT_REASON else text[:SHORT_REASON - 1] + "…"


def file_too_large(max_bytes: int) -> str:
    """The reason a file (or page) over the knowledge's size limit is not read."""
    return f"file over {megabytes(max_bytes)} MB (KNOWLEDGE_MAX_FILE_BYTES)"
