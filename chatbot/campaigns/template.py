"""A campaign's template variables: each {{n}} filled with a fixed value or a column of the audience
file, checked before anything is stored; and the approved text with them in, as the recipient reads it."""
from __future__ import annotations

import re

from config import CONTENT_SID_SHAPE

PLACEHOLDER = re.compile(r"\{\{\s*(\d{1,2})\s*\}\}")
VARIABLE_NAME = re.compile(r"^[1-9][0-9]?$")
# WhatsApp caps a template's body at 1,024 characters.
MAX_TEXT_CHARS = 1024
EXAMPLE = '{"1": {"column": "first_name"}, "2": "20% off"}'


class TemplateProblem(ValueError):
    """The template or its variables cannot be used as given; the message says how to fix it."""


def check_content_sid(content_sid: str) -> str:
    """Return the template's ContentSid stripped; raise TemplateProblem unless it is one."""
    content_sid = (content_sid or "").strip()
    if not CONTENT_SID_SHAPE.match(content_sid):
        raise TemplateProblem(f"{content_sid!r} is not a Twilio Content SID: HX and 32 hex characters, as the "
                              "Content Template Builder shows it")
    return content_sid


def placeholders(text: str) -> list[str]:
    """The variables `text` names, each once, in number order."""
    return sorted({match.group(1) for match in PLACEHOLDER.finditer(text)}, key=int)


def mapping(spec: dict | None, header: tuple[str, ...], columns: int, text: str = "") -> dict:
    """Check how each variable is filled and return it with every column as a position: {"1": "fixed"}
    or {"1": {"column": 2}} (column 1 is the number). No `spec`: the file's other columns fill {{1}},
    {{2}} … in order. A column is named by its header or its position; `text` (the approved text),
    when given, must name exactly the variables filled."""
    if not spec:
        spec = {str(position - 1): {"column": position} for position in range(2, columns + 1)}
    filled = {}
    for name, how in spec.items():
        name = str(name).strip()
        if not VARIABLE_NAME.match(name):
            raise TemplateProblem(f"variable {name!r} is not a number from 1 to 99 (as in {{{{1}}}}); e.g. {EXAMPLE}")
        if isinstance(how, str):
            if not how.strip():
                raise TemplateProblem(f"variable {{{{{name}}}}} is empty: WhatsApp refuses an empty variable")
            filled[name] = how.strip()
        elif isinstance(how, dict) and set(how) == {"column"}:
            filled[name] = {"column": _column(how["column"], header, columns, name)}
        else:
            raise TemplateProblem(f"variable {{{{{name}}}}} must be a text or {{\"column\": NAME_OR_NUMBER}}; "
                                  f"e.g. {EXAMPLE}")
    if text:
        named, given = set(placeholders(text)), set(filled)
        if named - given:
            missing = ", ".join(f"{{{{{name}}}}}" for name in sorted(named - given, key=int))
            raise TemplateProblem(f"the text has {missing} but no variable fills it: give it in --variables "
                                  "(a value, or a column of the file)")
        if given - named:
            extra = ", ".join(f"{{{{{name}}}}}" for name in sorted(given - named, key=int))
            raise TemplateProblem(f"the text has no {extra}: check the text is the template's as approved, or "
                                  "leave that variable out")
    return dict(sorted(filled.items(), key=lambda item: int(item[0])))


def values_for(variables: dict, cells: tuple[str, ...]) -> dict[str, str]:
    """One recipient's variables: the fixed values, and its cells in the columns named (column 2 is
    `cells[0]`). A column the line has no value in gives ""."""
    values = {}
    for name, how in variables.items():
        if isinstance(how, str):
            values[name] = how
        else:
            position = how["column"] - 2
            values[name] = cells[position] if position < len(cells) else ""
    return values


def render(text: str, values: dict[str, str], content_sid: str) -> str:
    """The message the recipient reads: the approved text with its variables in; without the text, the
    template's sid and the values (all a reply can then be read against)."""
    if not text:
        shown = ", ".join(f"{{{{{name}}}}}={value}" for name, value in values.items())
        return f"[template {content_sid}{': ' + shown if shown else ''}]"
    return PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), text)


def describe(variables: dict, header: tuple[str, ...]) -> str:
    """Say in a line how the variables are filled: `{{1}} = column first_name, {{2}} = "20% off"`."""
    if not variables:
        return "no variables"
    parts = []
    for name, how in variables.items():
        if isinstance(how, str):
            parts.append(f"{{{{{name}}}}} = {how!r}")
        else:
            position = how["column"]
            label = header[position - 1] if position - 1 < len(header) and header[position - 1] else position
            parts.append(f"{{{{{name}}}}} = column {label}")
    return ", ".join(parts)


def _column(named, header: tuple[str, ...], columns: int, variable: str) -> int:
    """The position of the column a variable names (by header or number); the number's own column never."""
    if isinstance(named, int) and not isinstance(named, bool):
        position = named
    elif isinstance(named, str) and named.strip().isdigit():
        position = int(named.strip())
    elif isinstance(named, str) and named.strip() in header:
        position = header.index(named.strip()) + 1
    else:
        known = ", ".join(repr(name) for name in header[1:] if name) or "none: the file has no header row"
        raise TemplateProblem(f"variable {{{{{variable}}}}}: the file has no column {named!r} (its columns: {known})")
    if position < 2 or position > columns:
        raise TemplateProblem(f"variable {{{{{variable}}}}}: column {position} is not one of the file's columns 2 to "
                              f"{columns} (column 1 is the number)" if columns > 1 else
                              f"variable {{{{{variable}}}}}: the audience has no columns besides the number; give a "
                              "fixed value instead")
    return position
