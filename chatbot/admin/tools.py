"""The Tools page: the business's HTTP endpoints the model may call, each checked and saved by
chatbot.tools.definitions (the rules `flask tools add` applies too), and a Try that calls one once
and records nothing. Admins only: a tool sends requests with the business's credentials."""
from __future__ import annotations

import json
import logging
from datetime import timedelta

from flask import flash, make_response, redirect, request
from flask_admin import BaseView, expose
from flask_admin.form import SecureForm

from chatbot.admin.audit_log import record_here
from chatbot.admin.panel import LoginRequired, services
from chatbot.models import AIConfiguration, Tool, ToolAuth, ToolRisk, ToolUse, utcnow
from chatbot.outbound import OutboundGuard
from chatbot.roles import Role
from chatbot.sanitizer import whole_number
from chatbot.services import own_host
from chatbot.tools.definitions import MAX_TOOLS, METHODS, ToolDefinition, ToolProblem, save
from chatbot.web.security import DASHBOARD_CSP

log = logging.getLogger(__name__)

EXPIRED = "The request expired; please try again."
# The list counts each tool's calls over this much of the recent past.
RECENT = timedelta(hours=24)
NO_PARAMETERS = '{"type": "object", "properties": {}}'
# Shown before the first save: a tool answering in time is the common case.
DEFAULT_TIMEOUT = "10"


def blank_form() -> dict:
    return {"id": None, "name": "", "description": "", "method": "GET", "url_template": "", "body_template": "",
            "parameters": NO_PARAMETERS, "auth": ToolAuth.NONE.value, "auth_header": "", "timeout": DEFAULT_TIMEOUT,
            "risk": ToolRisk.READ.value, "ai_configurations": set()}


def form_of(tool: Tool) -> dict:
    """The form filled with a stored tool (its secret never: the page does not show it)."""
    return {"id": tool.id, "name": tool.name, "description": tool.description, "method": tool.method,
            "url_template": tool.url_template, "body_template": tool.body_template,
            "parameters": json.dumps(tool.parameters, indent=2, ensure_ascii=False), "auth": tool.auth,
            "auth_header": tool.auth_header, "timeout": f"{tool.timeout:g}", "risk": tool.risk,
            "ai_configurations": set(tool.ai_configurations)}


def typed_form(form) -> dict:
    """The form as the admin typed it, to be shown again when it cannot be saved (the secret never)."""
    chosen = {whole_number(value) for value in form.getlist("ai_configurations")} - {None}
    return {"id": whole_number(form.get("id", "")), "name": form.get("name", ""),
            "description": form.get("description", ""), "method": form.get("method", "GET"),
            "url_template": form.get("url_template", ""), "body_template": form.get("body_template", ""),
            "parameters": form.get("parameters", ""), "auth": form.get("auth", ToolAuth.NONE.value),
            "auth_header": form.get("auth_header", ""), "timeout": form.get("timeout", ""),
            "risk": form.get("risk", ToolRisk.READ.value), "ai_configurations": chosen}


def definition_of(typed: dict, secret: str) -> ToolDefinition:
    """The definition the form asks for; raise ToolProblem for what the form itself gets wrong."""
    try:
        parameters = json.loads(typed["parameters"]) if typed["parameters"].strip() else None
    except ValueError as error:
        raise ToolProblem(f"the parameters are not JSON: {error}") from error
    try:
        timeout = float(typed["timeout"])
    except ValueError as error:
        raise ToolProblem("the timeout must be a number of seconds") from error
    # Only configurations that exist: a stale page's removed one would hide the tool from every other.
    chosen = (AIConfiguration.select(AIConfiguration.id)
              .where(AIConfiguration.id.in_(list(typed["ai_configurations"]))))
    return ToolDefinition(name=typed["name"], description=typed["description"], url_template=typed["url_template"],
                          method=typed["method"], parameters=parameters, body_template=typed["body_template"],
                          auth=typed["auth"], auth_header=typed["auth_header"], secret=secret or None,
                          timeout=timeout, risk=typed["risk"],
                          ai_configurations=tuple(configuration.id for configuration in chosen))


def save_tool(definition: ToolDefinition) -> Tool:
    """Save through the rules every way in applies: the outbound guard and this service's own host."""
    built = services()
    return save(definition, built.cipher, OutboundGuard(built.config.allow_private_hosts), own_host(built.config))


class ToolsView(LoginRequired, BaseView):
    """The operator's tools: listed with their recent calls, added, edited, removed and tried."""

    role_needed = Role.ADMIN

    @expose("/")
    def index(self):
        editing = whole_number(request.args.get("edit", ""))
        tool = Tool.get_or_none(Tool.id == editing) if editing else None
        if editing and tool is None:
            flash("That tool is gone.", "error")
        return self._page(form_of(tool) if tool else blank_form())

    @expose("/save/", methods=("POST",))
    def save_view(self):
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
            return redirect(self.get_url(".index"))
        typed = typed_form(request.form)
        stored = Tool.get_or_none(Tool.id == typed["id"]) if typed["id"] else None
        if typed["id"] and stored is None:
            flash("That tool is gone: nothing was saved.", "error")
            return redirect(self.get_url(".index"))
        if stored is not None:
            # A tool is saved by its name, which past calls name too: editing keeps it.
            typed["name"] = stored.name
        try:
            if stored is None and Tool.get_or_none(Tool.name == typed["name"].strip()) is not None:
                raise ToolProblem(f"a tool named {typed['name'].strip()} exists already: edit it, or choose "
                                  "another name")
            tool = save_tool(definition_of(typed, request.form.get("secret", "").strip()))
        except ToolProblem as problem:
            # Refused, nothing stored: not a 2xx, so the audit log records no change either.
            return self._page(typed, problem=str(problem), status=422)
        record_here("tool_saved", target=tool.name, detail="edited" if stored else "added")
        flash(f"{tool.name}: saved. The model is offered it from its next answer.", "success")
        return redirect(self.get_url(".index") + f"#tool-{tool.id}")

    @expose("/<row_id:tool_id>/remove/", methods=("POST",))
    def remove_view(self, tool_id):
        tool = Tool.get_or_none(Tool.id == tool_id)
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
        elif tool is None:
            flash("That tool is gone already.", "error")
        else:
            tool.delete_instance()
            record_here("tool_removed", target=tool.name)
            flash(f"{tool.name}: removed. Its past calls stay in the transcripts.", "success")
        return redirect(self.get_url(".index"))

    @expose("/<row_id:tool_id>/try/", methods=("POST",))
    def try_view(self, tool_id):
        tool = Tool.get_or_none(Tool.id == tool_id)
        if not SecureForm(request.form).validate():
            flash(EXPIRED, "error")
            return redirect(self.get_url(".index"))
        if tool is None:
            flash("That tool is gone.", "error")
            return redirect(self.get_url(".index"))
        typed = request.form.get("arguments", "")
        tried = {"tool_id": tool.id, "arguments": typed}
        caller = services().processor.toolbox.caller
        try:
            arguments = json.loads(typed or "{}")
        except ValueError as error:
            tried["problem"] = f"The arguments are not JSON: {error}"
        else:
            if not isinstance(arguments, dict):
                tried["problem"] = 'The arguments must be a JSON object, e.g. {"order_id": "A123"}.'
            elif caller is None:
                tried["problem"] = "This process calls no tools (its toolbox has no caller)."
            else:
                # Once, as the model's call would run, with the tool's whole timeout; no ToolUse is written.
                tried["result"] = caller.call(tool, arguments, tool.timeout)
                log.info("tool=%s tried from the admin: %s", tool.name, tried["result"].status)
        return self._page(blank_form(), tried=tried)

    def _page(self, filled: dict, problem: str | None = None, tried: dict | None = None, status: int = 200):
        configurations = list(AIConfiguration.select(AIConfiguration.id, AIConfiguration.name)
                              .order_by(AIConfiguration.name))
        stored = Tool.get_or_none(Tool.id == filled["id"]) if filled["id"] else None
        page = self.render(
            "chatbot_admin/tools.html",
            tools=list(Tool.select().order_by(Tool.name)),
            calls=ToolUse.counts_since(utcnow() - RECENT),
            configuration_names={configuration.id: configuration.name for configuration in configurations},
            configurations=configurations,
            filled=filled,
            secret_stored=bool(stored and stored.secret_encrypted),
            problem=problem,
            tried=tried,
            methods=METHODS,
            auths=[kind.value for kind in ToolAuth],
            max_tools=MAX_TOOLS,
        )
        response = make_response(page, status)
        # A page of ours that runs no script of its own: the dashboard's policy.
        response.headers["Content-Security-Policy"] = DASHBOARD_CSP
        return response
