"""An operator's tool, checked once: the rules the admin page and `flask tools add` both apply, and the
form the model is offered it in."""
from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from chatbot.crypto import FieldCipher
from chatbot.models import Tool, ToolAuth, ToolRisk, utcnow
from chatbot.outbound import AddressRefused, OutboundGuard

NAME_SHAPE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# The built-in tools' names: an operator's tool may not take one.
BUILT_IN_NAMES = frozenset({"request_human", "schedule_follow_up"})
METHODS = ("GET", "POST")
MAX_TIMEOUT = 60.0
MAX_DESCRIPTION_CHARS = 1024
# A model is offered at most this many of the operator's tools (more confuse it and fill the prompt).
MAX_TOOLS = 15
# A parameter's name in braces: {order_id}.
PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")
HEADER_NAME_SHAPE = re.compile(r"^[A-Za-z0-9-]{1,100}$")


class ToolProblem(ValueError):
    """A tool definition that cannot be saved, and why, in one line for the operator."""


@dataclass(frozen=True)
class ToolDefinition:
    """What an operator asks for; `secret` is the plain secret (None keeps the stored one)."""

    name: str
    description: str
    url_template: str
    method: str = "GET"
    parameters: dict | None = None
    body_template: str = ""
    auth: str = ToolAuth.NONE.value
    auth_header: str = ""
    secret: str | None = None
    timeout: float = 10.0
    risk: str = ToolRisk.READ.value
    ai_configurations: tuple[int, ...] = ()


def placeholders(template: str) -> list[str]:
    """The {names} a template fills in, in order (JSON's own braces are left alone)."""
    return PLACEHOLDER.findall(template)


def fill_url(template: str, arguments: dict) -> str:
    """The URL with each placeholder replaced by its argument, URL-encoded (a value cannot add a path or a query)."""
    return _fill(template, lambda value: quote(value if isinstance(value, str) else json.dumps(value), safe=""),
                 arguments)


def fill_body(template: str, arguments: dict) -> str:
    """The body with each placeholder replaced by its argument as JSON (a string arrives quoted and escaped)."""
    return _fill(template, lambda value: json.dumps(value, ensure_ascii=False), arguments)


def _fill(template: str, encode, arguments: dict) -> str:
    # One pass: a value that itself looks like {name} is never filled again.
    return PLACEHOLDER.sub(lambda match: encode(arguments.get(match.group(1))), template)


def parameters_problem(schema) -> str | None:
    """Say what is wrong with a tool's parameters schema, or None."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return 'the parameters must be a JSON Schema object: {"type": "object", "properties": {...}}'
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        return f"the parameters are not a valid JSON Schema: {error.message}"
    return None


def check(definition: ToolDefinition, guard: OutboundGuard, own_host: str = "") -> dict:
    """Return the fields to store for `definition`; raise ToolProblem naming the first thing wrong.

    The URL's host is fixed (no placeholder in it) and resolved now: a host that can only reach
    loopback, private or metadata addresses is refused here with the reason, as it would be at every call.
    """
    name = definition.name.strip()
    if not NAME_SHAPE.match(name):
        raise ToolProblem("the name must be 1 to 64 letters, digits or _ (the model calls the tool by it)")
    if name in BUILT_IN_NAMES:
        raise ToolProblem(f"{name} is a built-in tool's name: choose another")
    description = definition.description.strip()
    if not description or len(description) > MAX_DESCRIPTION_CHARS:
        raise ToolProblem(f"the description is required (at most {MAX_DESCRIPTION_CHARS} characters): "
                          "the model reads it to know when to call the tool")
    method = definition.method.upper()
    if method not in METHODS:
        raise ToolProblem("the method must be GET or POST")
    schema = definition.parameters if definition.parameters is not None else {"type": "object", "properties": {}}
    problem = parameters_problem(schema)
    if problem:
        raise ToolProblem(problem)
    declared = set(schema.get("properties") or {})
    url = definition.url_template.strip()
    url_names = placeholders(url)
    body_names = placeholders(definition.body_template) if definition.body_template.strip() else []
    undeclared = [name for name in url_names + body_names if name not in declared]
    if undeclared:
        raise ToolProblem(f"the template uses {{{undeclared[0]}}}, which the parameters do not declare")
    if body_names and method == "GET":
        raise ToolProblem("a GET tool sends no body: make it POST, or put the values in the URL")
    if definition.body_template.strip():
        try:
            json.loads(fill_body(definition.body_template, {}))
        except ValueError as error:
            raise ToolProblem(f"the body template is not JSON once filled: {error}") from error
    _check_url(url, guard, own_host)
    auth = definition.auth or ToolAuth.NONE.value
    if auth not in {kind.value for kind in ToolAuth}:
        raise ToolProblem("authentication must be none, bearer, basic or header")
    if auth == ToolAuth.HEADER.value and not HEADER_NAME_SHAPE.match(definition.auth_header or ""):
        raise ToolProblem("a header authentication needs the header's name (letters, digits and -)")
    if auth == ToolAuth.BASIC.value and definition.secret is not None and ":" not in definition.secret:
        raise ToolProblem("basic authentication takes user:password")
    if not 0 < definition.timeout <= MAX_TIMEOUT:
        raise ToolProblem(f"the timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds")
    if definition.risk not in {risk.value for risk in ToolRisk}:
        raise ToolProblem("the risk must be read or confirm")
    return {"name": name, "description": description, "method": method, "url_template": url,
            "body_template": definition.body_template.strip(), "parameters": schema, "auth": auth,
            "auth_header": definition.auth_header.strip() if auth == ToolAuth.HEADER.value else "",
            "timeout": float(definition.timeout), "risk": definition.risk,
            "ai_configurations": sorted(set(definition.ai_configurations))}


def _check_url(url: str, guard: OutboundGuard, own_host: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolProblem("the URL must start with http:// or https:// and name a host")
    if "{" in parts.netloc or "}" in parts.netloc:
        raise ToolProblem("the URL's host must be fixed: placeholders go in its path or query")
    if parts.username or parts.password:
        raise ToolProblem("put credentials in the authentication, not in the URL")
    if own_host and parts.hostname.lower() == own_host.lower():
        raise ToolProblem(f"{parts.hostname} is this service's own host: a tool may not call the assistant itself")
    try:
        guard.addresses(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except AddressRefused as refused:
        raise ToolProblem(f"refused: {refused}") from refused
    except (socket.gaierror, UnicodeError) as error:
        raise ToolProblem(f"{parts.hostname} does not resolve ({error})") from error


def save(definition: ToolDefinition, cipher: FieldCipher, guard: OutboundGuard, own_host: str = "") -> Tool:
    """Create or replace the tool of that name; raise ToolProblem when it cannot be saved."""
    fields = check(definition, guard, own_host)
    tool = Tool.get_or_none(Tool.name == fields["name"])
    if tool is None and Tool.select().count() >= MAX_TOOLS:
        raise ToolProblem(f"at most {MAX_TOOLS} tools: remove one first")
    secret = definition.secret
    if fields["auth"] == ToolAuth.NONE.value:
        fields["secret_encrypted"] = None
    elif secret:
        fields["secret_encrypted"] = cipher.encrypt(secret)
    elif tool is None or not tool.secret_encrypted:
        raise ToolProblem(f"{fields['auth']} authentication needs its secret")
    if tool is None:
        return Tool.create(**fields)
    for name, value in fields.items():
        setattr(tool, name, value)
    tool.updated_at = utcnow()
    tool.save()
    return tool


def offered_form(tool: Tool) -> dict:
    """The tool as OpenRouter's (OpenAI's) `tools` list takes it."""
    return {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                             "parameters": tool.parameters}}


def tools_for(ai_configuration_id: int | None) -> list[Tool]:
    """The operator's tools offered to that AI configuration (None: the environment's), by name."""
    return [tool for tool in Tool.select().order_by(Tool.name) if tool.offered_to(ai_configuration_id)]
