"""flask tools: define, list, try and remove the HTTP tools the assistant may call.

The rules a tool must meet live in chatbot/tools/definitions.py (the admin page applies the same ones);
this module only reads options, says the outcome in a line, and writes the audit row.
"""
from __future__ import annotations

import sys
from urllib.parse import urlsplit

import click
from flask.cli import with_appcontext
from peewee import IntegrityError

from chatbot import audit
from chatbot.cli.shared import JsonObject, operator_errors, services
from chatbot.models import AIConfiguration, Tool, ToolAuth, ToolRisk, ToolUseStatus
from chatbot.outbound import OutboundGuard
from chatbot.services import own_host
from chatbot.tools.definitions import METHODS, ToolDefinition, ToolProblem, save
from chatbot.users import CLI

EXAMPLE_PARAMS = '{"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}'


def _tool(name: str) -> Tool:
    tool = Tool.get_or_none(Tool.name == name.strip())
    if tool is None:
        raise click.ClickException(f"no tool named {name.strip()!r} (see: flask tools list)")
    return tool


def _configuration_ids(names: tuple[str, ...]) -> tuple[int, ...]:
    """The ids of the AI configurations named; an unknown name is refused before anything is stored."""
    ids = []
    for name in names:
        configuration = AIConfiguration.get_or_none(AIConfiguration.name == name)
        if configuration is None:
            raise click.ClickException(f"no AI configuration named {name!r} (see: flask ai-config list)")
        ids.append(configuration.id)
    return tuple(ids)


def _secret_from_stdin(option: str) -> str:
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise click.UsageError(f"{option}: stdin held no secret")
    return secret


def _authentication(auth_header: str | None, bearer_stdin: bool, basic_stdin: bool) -> tuple[str, str, str | None]:
    """Return (auth kind, header name, secret) from the one authentication option given, if any."""
    if sum((auth_header is not None, bearer_stdin, basic_stdin)) > 1:
        raise click.UsageError("use one of --auth-header, --bearer-stdin and --basic-stdin")
    if bearer_stdin:
        return ToolAuth.BEARER.value, "", _secret_from_stdin("--bearer-stdin")
    if basic_stdin:
        return ToolAuth.BASIC.value, "", _secret_from_stdin("--basic-stdin")
    if auth_header is not None:
        header, _, value = auth_header.partition(":")
        if not header.strip() or not value.strip():
            # The value itself is never repeated back: it is the secret.
            raise click.UsageError('--auth-header takes "Name: value", e.g. "X-Api-Key: ..."')
        return ToolAuth.HEADER.value, header.strip(), value.strip()
    return ToolAuth.NONE.value, "", None


def _offered_to(tool: Tool, names_by_id: dict[int, str]) -> str:
    if not tool.ai_configurations:
        return "all"
    # A configuration deleted since is shown, not hidden: the tool is offered to nobody through it.
    return ",".join(names_by_id.get(id_, f"deleted#{id_}") for id_ in tool.ai_configurations)


def _auth_shown(tool: Tool) -> str:
    return f"header:{tool.auth_header}" if tool.auth == ToolAuth.HEADER.value else tool.auth


def _audit_detail(tool: Tool) -> str:
    # The host only: an operator may have put a key in the URL's query, and the audit log holds no secret.
    return (f"{tool.method} {urlsplit(tool.url_template).hostname} risk={tool.risk} auth={tool.auth} "
            f"ai_configurations={tool.ai_configurations or 'all'}")


@click.group("tools")
def tools_group():
    """HTTP endpoints of the business the assistant may call (order status, bookings, ...).

    A read tool runs when the model calls it; a --confirm tool runs only after the customer says yes.
    """


@tools_group.command("add")
@click.argument("name")
@click.option("--url", "url_template", required=True,
              help="The endpoint, with {parameter} placeholders in its path or query (URL-encoded when filled).")
@click.option("--method", type=click.Choice(METHODS, case_sensitive=False), default="GET", show_default=True)
@click.option("--description", required=True, help="What the tool does and when to call it: the model reads it.")
@click.option("--params", "parameters", type=JsonObject(EXAMPLE_PARAMS),
              help="The JSON Schema of the arguments (default: none).")
@click.option("--body", "body_template", default="",
              help="POST only: a JSON body with {parameter} placeholders, each filled as JSON.")
@click.option("--auth-header", metavar='"NAME: VALUE"',
              help="Send this header; the value shows in shell history, so prefer the -stdin options.")
@click.option("--bearer-stdin", is_flag=True, help="Read a bearer token from the first line of stdin.")
@click.option("--basic-stdin", is_flag=True, help='Read basic authentication "user:password" from stdin.')
@click.option("--confirm", is_flag=True, help="Run only after the customer's explicit yes (bookings, payments).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for an answer.")
@click.option("--ai-config", "ai_config_names", multiple=True, metavar="NAME",
              help="Offer it only to this AI configuration (repeatable; default: every one).")
@with_appcontext
@operator_errors
def tools_add(name, url_template, method, description, parameters, body_template, auth_header, bearer_stdin,
              basic_stdin, confirm, timeout, ai_config_names):
    """Add the tool NAME, or replace the one of that name; its URL's host is checked now, as at every call."""
    auth, header, secret = _authentication(auth_header, bearer_stdin, basic_stdin)
    definition = ToolDefinition(
        name=name, description=description, url_template=url_template, method=method, parameters=parameters,
        body_template=body_template, auth=auth, auth_header=header, secret=secret, timeout=timeout,
        risk=ToolRisk.CONFIRM.value if confirm else ToolRisk.READ.value,
        ai_configurations=_configuration_ids(ai_config_names))
    built = services()
    guard = OutboundGuard(built.config.allow_private_hosts)
    existed = Tool.select().where(Tool.name == name.strip()).exists()
    try:
        # No transaction around it: the check resolves the URL's host, and SQLite would hold its write lock
        # for as long as that takes. Each write is one statement.
        tool = save(definition, built.cipher, guard, own_host(built.config))
    except ToolProblem as problem:
        raise click.ClickException(f"tool {name.strip()!r} not saved: {problem}") from problem
    except IntegrityError as error:
        raise click.ClickException(f"tool {name.strip()!r} was added meanwhile by someone else: "
                                   "run the command again to replace it") from error
    verb = "updated" if existed else "added"
    audit.record(f"tool_{verb}", CLI, tool.name, _audit_detail(tool), CLI)
    click.echo(f"{verb.capitalize()} tool {tool.name!r}: {tool.method} {tool.url_template} ({tool.risk}, "
               f"auth {_auth_shown(tool)}). Try it: flask tools test {tool.name} --args '{{...}}'")


@tools_group.command("list")
@with_appcontext
@operator_errors
def tools_list():
    """One line per tool: name, method, URL, risk, authentication kind, timeout, AI configurations."""
    tools = list(Tool.select().order_by(Tool.name))
    if not tools:
        click.echo("No tools yet: add one with flask tools add NAME --url URL --description TEXT "
                   f"--params '{EXAMPLE_PARAMS}'")
        return
    names_by_id = dict(AIConfiguration.select(AIConfiguration.id, AIConfiguration.name).tuples())
    rows = [("NAME", "METHOD", "URL", "RISK", "AUTH", "TIMEOUT", "AI CONFIGURATIONS")]
    rows += [(tool.name, tool.method, tool.url_template, tool.risk, _auth_shown(tool), f"{tool.timeout:g}s",
              _offered_to(tool, names_by_id)) for tool in tools]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@tools_group.command("test")
@click.argument("name")
@click.option("--args", "arguments", type=JsonObject('{"order_id": "A-1001"}'), default="{}",
              help="The arguments, as the model would give them.")
@with_appcontext
@operator_errors
def tools_test(name, arguments):
    """Call NAME once, as the assistant would (this really calls the endpoint), and show what the model reads."""
    tool = _tool(name)
    caller = services().processor.toolbox.caller
    if caller is None:
        raise click.ClickException("this deployment calls no operator tools")
    result = caller.call(tool, arguments, seconds_left=tool.timeout)
    # Who fired a request at the business's API, and how it went; the arguments may hold personal data.
    audit.record("tool_tested", CLI, tool.name, f"status={result.status.value}", CLI)
    size = f"{result.size} bytes" if result.size is not None else "no answer"
    click.echo(f"status: {result.status.value}  duration: {result.duration_ms:.0f} ms  size: {size}")
    click.echo(result.content)
    if result.status != ToolUseStatus.OK:
        sys.exit(1)


@tools_group.command("remove")
@click.argument("name")
@with_appcontext
@operator_errors
def tools_remove(name):
    """Remove the tool NAME: no model is offered it any more (its past calls stay in the transcripts)."""
    tool = _tool(name)
    tool.delete_instance()
    audit.record("tool_removed", CLI, tool.name, _audit_detail(tool), CLI)
    click.echo(f"Removed tool {tool.name!r}.")
