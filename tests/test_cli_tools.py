"""flask tools: operator HTTP tools defined, listed, tried against a real loopback API and removed from a shell."""
from __future__ import annotations

import json

import pytest

from chatbot.models import AIConfiguration, AuditEvent, Tool, ToolUse
from tests.fakes import FakeServer, Scripted, basic_auth

TOKEN = "tok-s3cret-bearer"
ORDER_PARAMS = json.dumps({"type": "object", "properties": {"order_id": {"type": "string"}},
                           "required": ["order_id"]})


@pytest.fixture
def business_api():
    """The business's own API: a loopback server that records each request and answers as scripted."""
    server = FakeServer().start()
    yield server
    server.stop()


def add_order_status(cli, url: str, *options: str, input: str | None = None):
    return cli("tools", "add", "order_status", "--url", url, "--description", "Where an order is, by its id.",
               "--params", ORDER_PARAMS, *options, input=input)


def audit_rows() -> list[tuple]:
    return list(AuditEvent.select(AuditEvent.action, AuditEvent.actor, AuditEvent.target)
                .order_by(AuditEvent.id)
                .tuples())


# --- add, list and test ----------------------------------------------------------------------------

@pytest.mark.postgres
def test_added_tool_is_listed_without_its_secret_and_test_calls_the_api_with_it(cli, services, business_api):
    url = f"{business_api.url}/orders/{{order_id}}"

    added = add_order_status(cli, url, "--bearer-stdin", input=f"{TOKEN}\n")

    assert added.exit_code == 0, added.output
    assert added.output.startswith("Added tool 'order_status': GET ")
    assert TOKEN not in added.output
    tool = Tool.get()
    assert tool.auth == "bearer" and TOKEN not in tool.secret_encrypted
    assert services.cipher.decrypt(tool.secret_encrypted) == TOKEN
    header, line = cli("tools", "list").output.splitlines()
    assert header.split() == ["NAME", "METHOD", "URL", "RISK", "AUTH", "TIMEOUT", "AI", "CONFIGURATIONS"]
    assert line.split() == ["order_status", "GET", url, "read", "bearer", "10s", "all"]

    answer = {"order": "A 1/2", "status": "shipped"}
    business_api.then(Scripted(200, answer))
    tested = cli("tools", "test", "order_status", "--args", '{"order_id": "A 1/2"}')

    assert tested.exit_code == 0, tested.output
    [request] = business_api.requests
    assert (request.method, request.path) == ("GET", "/orders/A%201%2F2")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    status_line, result = tested.output.splitlines()
    assert status_line.startswith("status: ok  duration: ")
    assert status_line.endswith(f" ms  size: {len(json.dumps(answer))} bytes")
    assert json.loads(result) == answer
    assert TOKEN not in tested.output
    assert ToolUse.select().count() == 0
    assert audit_rows() == [("tool_added", "cli", "order_status"), ("tool_tested", "cli", "order_status")]
    assert not any(TOKEN in detail for (detail,) in AuditEvent.select(AuditEvent.detail).tuples())


def test_add_with_an_existing_name_replaces_that_tool(cli, services, business_api):
    assert add_order_status(cli, f"{business_api.url}/orders/{{order_id}}").exit_code == 0

    replaced = add_order_status(cli, f"{business_api.url}/v2/orders?id={{order_id}}", "--method", "post",
                                "--confirm", "--timeout", "4.5", "--auth-header", "X-Api-Key: k-123-secret")

    assert replaced.exit_code == 0, replaced.output
    assert replaced.output.startswith("Updated tool 'order_status': POST ")
    assert "k-123-secret" not in replaced.output
    tool = Tool.get()
    assert Tool.select().count() == 1
    assert (tool.method, tool.url_template, tool.risk, tool.timeout) == (
        "POST", f"{business_api.url}/v2/orders?id={{order_id}}", "confirm", 4.5)
    assert (tool.auth, tool.auth_header) == ("header", "X-Api-Key")
    assert services.cipher.decrypt(tool.secret_encrypted) == "k-123-secret"
    [line] = cli("tools", "list").output.splitlines()[1:]
    assert line.split()[3:6] == ["confirm", "header:X-Api-Key", "4.5s"]
    assert "k-123-secret" not in line
    assert [row[0] for row in audit_rows()] == ["tool_added", "tool_updated"]


def test_basic_authentication_read_from_stdin_reaches_the_api(cli, services, business_api):
    added = add_order_status(cli, f"{business_api.url}/orders/{{order_id}}", "--basic-stdin",
                             input="shop:pass word\n")
    assert added.exit_code == 0, added.output
    business_api.then(Scripted(200, "in transit"))

    tested = cli("tools", "test", "order_status", "--args", '{"order_id": "7"}')

    assert tested.exit_code == 0, tested.output
    assert tested.output.splitlines()[1] == "in transit"
    assert business_api.requests[0].headers["Authorization"] == basic_auth("shop", "pass word")


def test_a_tool_is_offered_only_to_the_ai_configurations_named(cli, services, business_api):
    sales = AIConfiguration.create(name="sales", model_name="openai/gpt-4o-mini")
    AIConfiguration.create(name="support", model_name="openai/gpt-4o-mini")

    added = add_order_status(cli, f"{business_api.url}/orders/{{order_id}}", "--ai-config", "sales")

    assert added.exit_code == 0, added.output
    assert Tool.get().ai_configurations == [sales.id]
    assert cli("tools", "list").output.splitlines()[1].split()[-1] == "sales"


def test_an_unknown_ai_configuration_is_named_and_nothing_is_stored(cli, services, business_api):
    result = add_order_status(cli, f"{business_api.url}/orders/{{order_id}}", "--ai-config", "sales")

    assert result.exit_code == 1
    assert result.output.strip() == "Error: no AI configuration named 'sales' (see: flask ai-config list)"
    assert Tool.select().count() == 0


def test_list_of_no_tools_says_how_to_add_one(cli, services):
    result = cli("tools", "list")
    assert result.exit_code == 0
    assert result.output.startswith("No tools yet: add one with flask tools add NAME --url URL")


# --- refused at add --------------------------------------------------------------------------------

def refused_in_one_line(result, reason: str) -> None:
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: tool 'order_status' not saved: ") and reason in line
    assert Tool.select().count() == 0
    assert AuditEvent.select().count() == 0


def test_the_metadata_address_is_refused_even_with_private_hosts_allowed(cli, services):
    assert services.config.allow_private_hosts
    result = add_order_status(cli, "http://169.254.169.254/latest/meta-data/{order_id}")
    refused_in_one_line(result, "169.254.169.254: a link-local or cloud metadata address, never fetched")


def test_a_loopback_url_is_refused_when_private_hosts_are_not_allowed(app_with, services, business_api):
    cli = app_with(allow_private_hosts=False).test_cli_runner()
    result = cli.invoke(args=["tools", "add", "order_status", "--url", f"{business_api.url}/orders/{{order_id}}",
                              "--description", "Where an order is.", "--params", ORDER_PARAMS])
    refused_in_one_line(result, "resolves to 127.0.0.1: not a public address (ALLOW_PRIVATE_HOSTS=1 allows")


def test_a_placeholder_the_parameters_do_not_declare_is_refused(cli, services, business_api):
    result = add_order_status(cli, f"{business_api.url}/customers/{{customer_id}}/orders/{{order_id}}")
    refused_in_one_line(result, "the template uses {customer_id}, which the parameters do not declare")


@pytest.mark.parametrize("params", ['{"type": "object", ', "[1, 2]"])
def test_params_that_are_not_a_json_object_are_bad_usage(cli, services, business_api, params):
    result = cli("tools", "add", "order_status", "--url", f"{business_api.url}/orders",
                 "--description", "Where an order is.", "--params", params)

    assert result.exit_code == 2
    assert "Invalid value for '--params'" in result.output
    assert Tool.select().count() == 0


def test_two_kinds_of_authentication_at_once_are_bad_usage(cli, services, business_api):
    result = add_order_status(cli, f"{business_api.url}/orders/{{order_id}}", "--bearer-stdin",
                              "--auth-header", "X-Api-Key: k", input=f"{TOKEN}\n")
    assert result.exit_code == 2
    assert "use one of --auth-header, --bearer-stdin and --basic-stdin" in result.output
    assert Tool.select().count() == 0


# --- test against an API that fails, or with arguments that do not fit ------------------------------

def test_an_api_answering_500_fails_the_test_and_says_so(cli, services, business_api):
    add_order_status(cli, f"{business_api.url}/orders/{{order_id}}")
    business_api.then(Scripted(500, {"error": "database down"}))

    result = cli("tools", "test", "order_status", "--args", '{"order_id": "7"}')

    assert result.exit_code == 1
    assert result.output.startswith("status: failed  ")
    assert "error: the tool answered HTTP 500" in result.output
    assert len(business_api.requests) == 1


def test_arguments_that_do_not_fit_the_schema_send_no_request(cli, services, business_api):
    add_order_status(cli, f"{business_api.url}/orders/{{order_id}}")

    result = cli("tools", "test", "order_status", "--args", '{"order": "7"}')

    assert result.exit_code == 1
    assert "error: the arguments do not fit the tool: arguments: 'order_id' is a required property" in result.output
    assert business_api.requests == []


def test_arguments_that_are_not_json_are_bad_usage(cli, services, business_api):
    add_order_status(cli, f"{business_api.url}/orders/{{order_id}}")

    result = cli("tools", "test", "order_status", "--args", "order_id=7")

    assert result.exit_code == 2
    assert "Invalid value for '--args': not valid JSON" in result.output
    assert business_api.requests == []


def test_testing_an_unknown_tool_names_it(cli, services):
    result = cli("tools", "test", "order_status", "--args", "{}")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: no tool named 'order_status' (see: flask tools list)"


# --- remove ----------------------------------------------------------------------------------------

def test_remove_deletes_the_tool_and_records_who_did(cli, services, business_api):
    add_order_status(cli, f"{business_api.url}/orders/{{order_id}}")

    result = cli("tools", "remove", "order_status")

    assert result.exit_code == 0, result.output
    assert result.output == "Removed tool 'order_status'.\n"
    assert Tool.select().count() == 0
    assert audit_rows()[-1] == ("tool_removed", "cli", "order_status")


def test_removing_an_unknown_tool_fails_in_one_line(cli, services):
    result = cli("tools", "remove", "order_status")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: no tool named 'order_status' (see: flask tools list)"
