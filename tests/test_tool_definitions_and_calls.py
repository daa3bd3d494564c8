"""An operator's tool: what is refused when it is saved, and what one call sends and reads back —
against a real HTTP server on loopback, through the real outbound guard."""
from __future__ import annotations

import base64
import json
import socket

import pytest
from cryptography.fernet import Fernet

from chatbot.crypto import FieldCipher
from chatbot.models import Tool, ToolAuth, ToolUseStatus
from chatbot.outbound import OutboundGuard, guarded_session
from chatbot.tools.calls import MASK, MAX_RESULT_BYTES, ToolCaller, masked
from chatbot.tools.definitions import MAX_TOOLS, ToolDefinition, ToolProblem, check, fill_body, fill_url, save
from tests.fakes import FakeServer, Recorded, Scripted

ALLOWING = OutboundGuard(allow_private=True)
ITEM = {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]}


class Echo(FakeServer):
    """Answers every request with what it was sent."""

    def default_answer(self, request: Recorded) -> Scripted:
        return Scripted(200, {"path": request.path, "authorization": request.headers.get("Authorization"),
                              "x_api_key": request.headers.get("X-Api-Key"), "body": request.body})


@pytest.fixture(scope="module")
def echo_server():
    server = Echo().start()
    yield server
    server.stop()


@pytest.fixture
def echo(echo_server):
    echo_server.reset()
    return echo_server


@pytest.fixture
def cipher():
    return FieldCipher(Fernet.generate_key().decode())


def definition(url: str, **fields) -> ToolDefinition:
    return ToolDefinition(name=fields.pop("name", "lookup"), description=fields.pop("description", "Looks it up."),
                          url_template=url, parameters=fields.pop("parameters", ITEM), **fields)


def caller(cipher, allow_private: bool = True, own_host: str = "", resolve=socket.getaddrinfo) -> ToolCaller:
    return ToolCaller(guarded_session(OutboundGuard(allow_private, resolve)), cipher, own_host)


def test_values_are_url_encoded_in_urls_and_json_encoded_in_bodies():
    assert fill_url("https://api.example.com/items/{item}?q={item}", {"item": "A 1/2?x=1&y"}) == \
        "https://api.example.com/items/A%201%2F2%3Fx%3D1%26y?q=A%201%2F2%3Fx%3D1%26y"
    sneaky = '", "admin": true, "x": "'
    body = fill_body('{"item": {item}, "count": {count}}', {"item": sneaky, "count": 3})
    assert json.loads(body) == {"item": sneaky, "count": 3}
    # A value that looks like a placeholder is never filled again.
    assert fill_url("https://h/{a}/{b}", {"a": "{b}", "b": "x"}) == "https://h/%7Bb%7D/x"


@pytest.mark.parametrize("fields, problem", [
    ({"name": "order status"}, "letters, digits or _"),
    ({"name": "x" * 65}, "1 to 64"),
    ({"name": "request_human"}, "built-in tool's name"),
    ({"description": ""}, "description is required"),
    ({"method": "DELETE"}, "GET or POST"),
    ({"url": "https://api.example.com/items/{sku}"}, "uses {sku}, which the parameters do not declare"),
    ({"url": "https://{item}.example.com/"}, "host must be fixed"),
    ({"url": "https://user:pw@api.example.com/"}, "credentials in the authentication"),
    ({"url": "ftp://api.example.com/"}, "http:// or https://"),
    ({"body_template": '{"item": {item}}'}, "a GET tool sends no body"),
    ({"method": "POST", "body_template": '{"item": {item}'}, "not JSON once filled"),
    ({"parameters": {"type": "array"}}, "must be a JSON Schema object"),
    ({"parameters": {"type": "object", "properties": {"item": {"type": "strng"}}}}, "not a valid JSON Schema"),
    ({"auth": ToolAuth.HEADER.value, "secret": "s3cret"}, "header's name"),
    ({"auth": ToolAuth.BASIC.value, "secret": "no-colon"}, "user:password"),
    ({"timeout": 0}, "timeout must be more than 0"),
    ({"timeout": 61}, "at most 60 seconds"),
    ({"risk": "write"}, "read or confirm"),
])
def test_a_definition_that_cannot_work_is_refused_with_the_reason(fields, problem):
    url = fields.pop("url", "http://127.0.0.1:9/items/{item}")
    with pytest.raises(ToolProblem, match=problem.replace("{", r"\{").replace("}", r"\}").replace("?", r"\?")):
        check(definition(url, **fields), ALLOWING)


@pytest.mark.parametrize("url, allow_private, problem", [
    ("http://127.0.0.1:8080/x/{item}", False, "not a public address"),
    ("http://10.0.0.7/x/{item}", False, "not a public address"),
    ("http://169.254.169.254/latest/{item}", True, "link-local or cloud metadata"),
    ("http://metadata.google.internal/{item}", True, "cloud metadata endpoint"),
    ("http://[fd00:ec2::254]/{item}", True, "link-local or cloud metadata"),
])
def test_a_url_that_reaches_only_private_or_metadata_addresses_is_refused_when_saved(url, allow_private, problem):
    with pytest.raises(ToolProblem, match=f"refused: .*{problem}"):
        check(definition(url), OutboundGuard(allow_private))


def test_the_services_own_host_is_refused():
    with pytest.raises(ToolProblem, match="this service's own host"):
        check(definition("https://bot.example.com/admin/{item}"), ALLOWING, own_host="bot.example.com")


def test_a_name_that_does_not_resolve_is_refused():
    def nowhere(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(ToolProblem, match="does not resolve"):
        check(definition("https://orders.invalid/{item}"), OutboundGuard(False, nowhere))


def test_saving_encrypts_the_secret_keeps_it_when_blank_and_replaces_by_name(services, cipher):
    tool = save(definition("http://127.0.0.1:9/items/{item}", auth=ToolAuth.BEARER.value, secret="tok-123"), cipher,
                ALLOWING)
    assert tool.secret_encrypted and "tok-123" not in tool.secret_encrypted
    assert cipher.decrypt(tool.secret_encrypted) == "tok-123"
    again = save(definition("http://127.0.0.1:9/v2/items/{item}", auth=ToolAuth.BEARER.value), cipher, ALLOWING)
    assert again.id == tool.id and Tool.select().count() == 1
    assert cipher.decrypt(Tool.get_by_id(tool.id).secret_encrypted) == "tok-123"
    assert Tool.get_by_id(tool.id).url_template.endswith("/v2/items/{item}")
    with pytest.raises(ToolProblem, match="needs its secret"):
        save(definition("http://127.0.0.1:9/{item}", name="other", auth=ToolAuth.BEARER.value), cipher, ALLOWING)


def test_no_more_than_the_most_tools(services, cipher):
    for number in range(MAX_TOOLS):
        save(definition("http://127.0.0.1:9/{item}", name=f"tool_{number}"), cipher, ALLOWING)
    with pytest.raises(ToolProblem, match=f"at most {MAX_TOOLS} tools"):
        save(definition("http://127.0.0.1:9/{item}", name="one_more"), cipher, ALLOWING)


@pytest.mark.parametrize("auth, header, secret, expected", [
    (ToolAuth.BEARER.value, "", "tok-123", ("Authorization", "Bearer tok-123")),
    (ToolAuth.BASIC.value, "", "shop:pa:ss", ("Authorization", "Basic " + base64.b64encode(b"shop:pa:ss").decode())),
    (ToolAuth.HEADER.value, "X-Api-Key", "k-456", ("X-Api-Key", "k-456")),
])
def test_each_kind_of_authentication_reaches_the_endpoint(services, cipher, echo, auth, header, secret, expected):
    tool = save(definition(echo.url + "/items/{item}", auth=auth, auth_header=header, secret=secret), cipher,
                ALLOWING)
    result = caller(cipher).call(tool, {"item": "A-1"}, seconds_left=5)
    assert result.status == ToolUseStatus.OK
    [request] = echo.requests
    assert request.headers[expected[0]] == expected[1] and request.path == "/items/A-1"


def test_a_post_sends_the_filled_json_body(services, cipher, echo):
    tool = save(definition(echo.url + "/orders", method="POST", body_template='{"sku": {item}, "quantity": 1}'),
                cipher, ALLOWING)
    result = caller(cipher).call(tool, {"item": 'Tea "green"'}, seconds_left=5)
    [request] = echo.requests
    assert request.method == "POST" and request.body == {"sku": 'Tea "green"', "quantity": 1}
    assert json.loads(result.content)["body"] == {"sku": 'Tea "green"', "quantity": 1}


def test_a_long_answer_is_cut_to_a_few_kilobytes_for_the_model(services, cipher, echo):
    tool = save(definition(echo.url + "/items/{item}"), cipher, ALLOWING)
    echo.then(Scripted(200, "x" * 100_000))
    result = caller(cipher).call(tool, {"item": "A"}, seconds_left=5)
    assert result.content.endswith("… (cut)") and len(result.content.encode()) <= MAX_RESULT_BYTES + 20
    assert result.size > MAX_RESULT_BYTES


def test_a_redirect_to_the_metadata_endpoint_is_refused_at_the_hop(services, cipher, echo):
    tool = save(definition(echo.url + "/items/{item}"), cipher, ALLOWING)
    echo.then(Scripted(302, "", {"Location": "http://169.254.169.254/latest/meta-data/"}))
    result = caller(cipher).call(tool, {"item": "A"}, seconds_left=5)
    assert result.status == ToolUseStatus.FAILED and "link-local or cloud metadata" in result.error


def test_credentials_do_not_follow_a_redirect_to_another_host(services, cipher, echo):
    tool = save(definition(echo.url + "/items/{item}", auth=ToolAuth.BEARER.value, secret="tok-123"), cipher,
                ALLOWING)
    elsewhere = echo.url.replace("127.0.0.1", "localhost") + "/moved"
    echo.then(Scripted(302, "", {"Location": elsewhere}))
    result = caller(cipher).call(tool, {"item": "A"}, seconds_left=5)
    first, moved = echo.requests
    assert first.headers["Authorization"] == "Bearer tok-123" and "Authorization" not in moved.headers
    assert result.status == ToolUseStatus.OK


def test_a_name_that_resolves_to_loopback_at_call_time_is_refused(services, cipher, echo):
    """DNS rebinding: saved while it resolved publicly, called when it answers 127.0.0.1."""
    port = int(echo.url.split(":")[2].split("/")[0])
    tool = Tool.create(name="rebound", description="d", url_template=f"http://orders.example.com:{port}/x",
                       parameters={"type": "object", "properties": {}})

    def rebinding(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    result = caller(cipher, allow_private=False, resolve=rebinding).call(tool, {}, seconds_left=5)
    assert result.status == ToolUseStatus.FAILED and "not a public address" in result.error
    assert echo.requests == []


def test_the_services_own_host_is_refused_at_call_time_too(services, cipher, echo):
    tool = save(definition(echo.url + "/items/{item}"), cipher, ALLOWING)
    result = caller(cipher, own_host="127.0.0.1").call(tool, {"item": "A"}, seconds_left=5)
    assert result.status == ToolUseStatus.FAILED and "own host" in result.error and echo.requests == []


def test_an_endpoint_that_is_down_is_a_failed_result_not_a_crash(services, cipher):
    tool = save(definition("http://127.0.0.1:9/items/{item}"), cipher, ALLOWING)
    result = caller(cipher).call(tool, {"item": "A"}, seconds_left=5)
    assert result.status == ToolUseStatus.FAILED and result.content.startswith("error: could not connect")


def test_what_the_transcript_keeps_of_the_arguments_hides_secrets_and_numbers():
    shown = masked({"order_id": "A-1", "api_key": "k-1", "card_number": "4111111111111111",
                    "note": "call me on +447700900123, token tok-123", "keyword": "blue"}, secret="tok-123")
    assert shown["order_id"] == "A-1" and shown["keyword"] == "blue"
    assert shown["api_key"] == MASK and shown["card_number"] == MASK
    assert "tok-123" not in shown["note"] and "7700900123" not in shown["note"]
