"""Rewrite a model's Markdown in WhatsApp's own formatting, leaving code untouched."""
from __future__ import annotations

import re
from itertools import zip_longest

BULLET = "• "
# One level of list nesting, as shown on the phone.
INDENT = "   "

_FENCE = re.compile(r"^[ \t]*```[^\n`]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
# Inline code is set aside behind these markers while the rest is rewritten: nothing in it changes.
_CODE_MARK = "\x00"
_CODE_PLACEHOLDER = re.compile(_CODE_MARK + r"(\d+)" + _CODE_MARK)
# Bold is set aside as this mark, so the italic rule cannot mistake WhatsApp's bold for Markdown's italic.
_BOLD_MARK = "\x01"

_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_RULE = re.compile(r"^[ \t]*(?:-[ \t]*){3,}$|^[ \t]*(?:\*[ \t]*){3,}$|^[ \t]*(?:_[ \t]*){3,}$")
_BULLET_ITEM = re.compile(r"^([ \t]*)[-*+][ \t]+(.*)$")
_NUMBERED_ITEM = re.compile(r"^([ \t]*)(\d{1,9}[.)])[ \t]+(.*)$")
_TABLE_SEPARATOR = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")

_IMAGE = re.compile(r"!\[([^\]\n]*)\]\(([^)\s]+)(?:[ \t]+\"[^\"\n]*\")?\)")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)(?:[ \t]+\"[^\"\n]*\")?\)")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_BOLD_ITALIC = re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_STAR_ITALIC = re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")


def to_whatsapp(text: str) -> str:
    """Return `text` with its Markdown rewritten in WhatsApp's formatting; code stays as written."""
    pieces = []
    position = 0
    for fence in _FENCE.finditer(text):
        pieces.append(_format_prose(text[position:fence.start()]))
        pieces.append("```\n" + fence.group(1).rstrip("\n") + "\n```")
        position = fence.end()
    pieces.append(_format_prose(text[position:]))
    return "".join(pieces).strip()


def _format_prose(text: str) -> str:
    """Rewrite text that holds no fenced code block."""
    codes: list[str] = []

    def set_aside(match: re.Match) -> str:
        codes.append(match.group(0))
        return f"{_CODE_MARK}{len(codes) - 1}{_CODE_MARK}"

    prose = _INLINE_CODE.sub(set_aside, text)
    prose = "\n".join(_format_lines(prose.split("\n")))
    prose = re.sub(r"\n{3,}", "\n\n", prose)  # a dropped rule or table line leaves no gap behind
    return _CODE_PLACEHOLDER.sub(lambda match: codes[int(match.group(1))], prose)


def _format_lines(lines: list[str]) -> list[str]:
    formatted: list[str] = []
    list_indents: list[int] = []  # the indentation of each open list level
    index = 0
    while index < len(lines):
        line = lines[index]
        if _is_table_start(lines, index):
            end = index + 2
            while end < len(lines) and "|" in lines[end] and lines[end].strip():
                end += 1
            formatted.extend(_format_table(lines[index], lines[index + 2:end]))
            index = end
            continue
        index += 1
        heading = _HEADING.match(line)
        item = _BULLET_ITEM.match(line) or _NUMBERED_ITEM.match(line)
        if _RULE.match(line):
            formatted.append("")
        elif heading:
            formatted.append(_bold_line(heading.group(1)))
        elif item:
            level = _list_level(list_indents, len(item.group(1).expandtabs(4)))
            marker = BULLET if item.re is _BULLET_ITEM else item.group(2) + " "
            formatted.append(INDENT * level + marker + _format_inline(item.group(item.lastindex)))
        else:
            if line.strip() and not line[:1].isspace():
                list_indents.clear()
            formatted.append(_format_inline(line))
    return formatted


def _list_level(list_indents: list[int], indent: int) -> int:
    """Return how deep a list item indented by `indent` spaces sits among the open levels."""
    while list_indents and indent < list_indents[-1]:
        list_indents.pop()
    if not list_indents or indent > list_indents[-1]:
        list_indents.append(indent)
    return len(list_indents) - 1


def _is_table_start(lines: list[str], index: int) -> bool:
    """True when a header row and its delimiter row (as many cells, two or more) start here."""
    if index + 1 >= len(lines) or "|" not in lines[index] or "|" not in lines[index + 1]:
        return False
    columns = len(_cells(lines[index]))
    return bool(_TABLE_SEPARATOR.match(lines[index + 1])) and columns == len(_cells(lines[index + 1])) > 1


def _cells(row: str) -> list[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") else row
    return [cell.strip() for cell in row.split("|")]


def _format_table(header_row: str, rows: list[str]) -> list[str]:
    """Show each row as a bold title (its first cell) over one "Header: value" line per other cell:
    columns do not fit a phone's width."""
    headers = _cells(header_row)
    lines: list[str] = []
    for row in rows:
        cells = _cells(row)
        if lines:
            lines.append("")
        lines.append(_bold_line(cells[0]) if cells[0] else "")
        for header, cell in zip_longest(headers[1:], cells[1:], fillvalue=""):
            if cell:
                lines.append(f"{_format_inline(header)}: {_format_inline(cell)}" if header else _format_inline(cell))
    return lines


def _bold_line(text: str) -> str:
    """Make a whole line bold; its own bold markers go, as WhatsApp cannot nest bold in bold."""
    text = _format_inline(text).replace(_BOLD_MARK, "").replace("*", "").strip()
    return f"*{text}*" if text else ""


def _format_inline(text: str) -> str:
    text = _IMAGE.sub(lambda match: _link_text(match.group(1), match.group(2)), text)
    text = _LINK.sub(lambda match: _link_text(match.group(1), match.group(2)), text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _BOLD_ITALIC.sub(_BOLD_MARK + r"_\1_" + _BOLD_MARK, text)
    text = _BOLD.sub(lambda match: _BOLD_MARK + (match.group(1) or match.group(2)) + _BOLD_MARK, text)
    text = _STAR_ITALIC.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    return text.replace(_BOLD_MARK, "*")


def _link_text(label: str, url: str) -> str:
    label = label.strip()
    return url if not label or label == url else f"{label} ({url})"
