"""The admin side of the assistant's tools: the Tools page (add, edit, refuse, remove, try), the AI
configuration's built-in tool switches, tool calls and follow-ups in the transcript, and failed calls
on the Problems page."""
from __future__ import annotations

import html
import json
import re
from datetime import datetime, timedelta

import pytest

from chatbot.models import (
    AIConfiguration,
    AuditEvent,
    FollowUp,
    FollowUpStatus,
    Message,
    Tool,
    ToolUse,
    ToolUseStatus,
    utcnow,
)
from chatbot.roles import Role
from tests.conftest import csrf_token
from tests.fakes import FakeServer, Scripted
from tests.support import conversation_for
from tests.test_admin_roles import signed_in_as

PAGE = "/admin/tools/"
SECRET = "shop-secret-7c1e9a"
# Saving resolves the host and never connects: the discard port on loopback is enough (ALLOW_PRIVATE_HOSTS is on).
NOWHERE = "http://127.0.0.1:9/orders/{order_id}"
ORDER_PARAMETERS = {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}
ADA = "whatsapp:+15550001111"


def tool_form(**changes) -> dict:
    return {"name": "order_status", "description": "The status of an order, by its id.", "method": "GET",
            "url_template": NOWHERE, "body_template": "", "parameters": json.dumps(ORDER_PARAMETERS),
            "auth": "bearer", "auth_header": "", "secret": SECRET, "timeout": "5", "risk": "read", **changes}


def post(client, path: str, form: dict | None = None):
    """Post a form of the panel as a browser does: with a page's CSRF token."""
    return client.post(path, data={"csrf_token": csrf_token(client, "/admin/"), **(form or {})})


def text_of(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def add_tool(client, **changes) -> Tool:
    response = post(client, PAGE + "save/", tool_form(**changes))
    assert response.status_code == 302, text_of(response)
    return Tool.get(Tool.name == tool_form(**changes)["name"].strip())


@pytest.fixture
def shop():
    """The business's system on loopback: records each request, answers what the test scripts."""
    server = FakeServer().start()
    yield server
    server.stop()


@pytest.fixture
def as_role(app):
    return lambda role: signed_in_as(app, role)


# --- the Tools page ---------------------------------------------------------------------------------

def test_an_admin_adds_a_tool_whose_secret_is_stored_encrypted_and_never_shown(operator, services):
    main = AIConfiguration.create(name="Main", provider="openrouter", model_name="openai/gpt-4o-mini")
    AIConfiguration.create(name="Spare", provider="openrouter", model_name="openai/gpt-4o-mini")

    tool = add_tool(operator, ai_configurations=str(main.id))

    assert (tool.method, tool.url_template, tool.parameters, tool.auth, tool.timeout, tool.risk) == (
        "GET", NOWHERE, ORDER_PARAMETERS, "bearer", 5.0, "read")
    assert tool.ai_configurations == [main.id]
    assert SECRET not in tool.secret_encrypted and services.cipher.decrypt(tool.secret_encrypted) == SECRET
    listing = text_of(operator.get(PAGE))
    row = listing.split(f'id="tool-{tool.id}"')[1].split("</tr>")[0]
    assert "order_status" in row and NOWHERE in row and "Bearer token" in row and "5 s" in row
    assert re.search(r'class="tool-offered" data-label="Offered to">Main</td>', row)
    pages = [listing, text_of(operator.get(f"{PAGE}?edit={tool.id}")), text_of(operator.get("/admin/audit/"))]
    assert [page for page in pages if SECRET in page or tool.secret_encrypted in page] == []
    assert AuditEvent.get(AuditEvent.action == "tool_saved").target == "order_status"


def test_a_tool_offered_to_no_configuration_in_particular_is_offered_to_all(operator):
    AIConfiguration.create(name="Main", provider="openrouter", model_name="openai/gpt-4o-mini")
    tool = add_tool(operator, auth="none", secret="")

    assert tool.ai_configurations == [] and tool.secret_encrypted is None
    assert '<td class="tool-offered" data-label="Offered to">all</td>' in text_of(operator.get(PAGE))


def test_editing_with_a_blank_secret_keeps_the_stored_one(operator, services):
    tool = add_tool(operator)
    edit_page = text_of(operator.get(f"{PAGE}?edit={tool.id}"))
    assert "A secret is stored: leave blank to keep it." in edit_page
    assert "The status of an order, by its id.</textarea>" in edit_page

    response = post(operator, PAGE + "save/", tool_form(id=str(tool.id), description="Where an order is now.",
                                                         secret="", timeout="12.5"))

    assert response.status_code == 302
    edited = Tool.get_by_id(tool.id)
    assert (edited.description, edited.timeout) == ("Where an order is now.", 12.5)
    assert services.cipher.decrypt(edited.secret_encrypted) == SECRET
    post(operator, PAGE + "save/", tool_form(id=str(tool.id), secret="a-new-secret"))
    assert services.cipher.decrypt(Tool.get_by_id(tool.id).secret_encrypted) == "a-new-secret"


def test_editing_keeps_the_name_past_calls_know_it_by(operator):
    tool = add_tool(operator)

    post(operator, PAGE + "save/", tool_form(id=str(tool.id), name="renamed", secret=""))

    assert [saved.name for saved in Tool.select()] == ["order_status"]


def test_a_name_taken_already_is_refused_rather_than_replacing_that_tool(operator):
    tool = add_tool(operator)

    response = post(operator, PAGE + "save/", tool_form(description="Something else entirely."))

    assert response.status_code == 422
    assert "a tool named order_status exists already" in text_of(response)
    assert Tool.get_by_id(tool.id).description == "The status of an order, by its id."


def test_a_metadata_address_is_refused_with_its_reason_and_nothing_is_stored(operator):
    response = post(operator, PAGE + "save/", tool_form(url_template="http://169.254.169.254/x",
                                                         description="Typed with care"))

    page = text_of(response)
    assert response.status_code == 422
    problem = page.split('id="tool-problem"')[1].split("</div>")[0]
    assert "Not saved:" in problem and "refused" in problem and "169.254.169.254" in problem
    # What was typed is still in the form; the secret is not.
    assert 'value="http://169.254.169.254/x"' in page and "Typed with care</textarea>" in page
    assert SECRET not in page
    assert Tool.select().count() == 0
    assert AuditEvent.select().where(AuditEvent.action.contains("tool")).count() == 0


@pytest.mark.parametrize("parameters, reason", [
    ('{"type": "object", "properties": {', "the parameters are not JSON"),
    ('{"type": "object", "properties": {"order_id": {"type": "text"}}}', "the parameters are not a valid JSON Schema"),
    ('["order_id"]', "the parameters must be a JSON Schema object"),
], ids=["not-json", "bad-type", "not-an-object"])
def test_parameters_that_are_not_an_object_schema_are_refused_with_the_reason(operator, parameters, reason):
    response = post(operator, PAGE + "save/", tool_form(parameters=parameters))

    assert response.status_code == 422
    assert reason in text_of(response).split('id="tool-problem"')[1].split("</div>")[0]
    assert Tool.select().count() == 0


@pytest.mark.parametrize("role", [Role.VIEWER, Role.AGENT], ids=str)
def test_below_admin_the_tools_page_and_its_forms_are_refused_and_change_nothing(as_role, operator, shop, role):
    tool = add_tool(operator, url_template=shop.url + "/orders/{order_id}")
    client = as_role(role)
    token = csrf_token(client, "/admin/")
    before = list(Tool.select().tuples()), AuditEvent.select().count()

    assert client.get(PAGE).status_code == 403
    assert client.get(f"{PAGE}?edit={tool.id}").status_code == 403
    for path, form in ((PAGE + "save/", tool_form(name="sneaky")),
                       (PAGE + "save/", tool_form(id=str(tool.id), description="Changed")),
                       (f"{PAGE}{tool.id}/try/", {"arguments": '{"order_id": "A1"}'}),
                       (f"{PAGE}{tool.id}/remove/", {})):
        assert client.post(path, data={"csrf_token": token, **form}).status_code == 403, path

    assert (list(Tool.select().tuples()), AuditEvent.select().count()) == before
    assert shop.requests == []
    assert 'href="/admin/tools/"' not in client.get("/admin/").get_data(as_text=True)


def test_the_tools_page_is_in_an_admins_menu(operator):
    assert 'href="/admin/tools/"' in operator.get("/admin/").get_data(as_text=True)


def test_a_tool_is_removed_with_the_csrf_token_only(operator):
    tool = add_tool(operator)

    operator.post(f"{PAGE}{tool.id}/remove/")
    assert Tool.get_or_none(Tool.id == tool.id) is not None
    response = post(operator, f"{PAGE}{tool.id}/remove/")

    assert response.status_code == 302 and Tool.get_or_none(Tool.id == tool.id) is None
    assert "order_status: removed." in text_of(operator.get(PAGE))
    assert AuditEvent.get(AuditEvent.action == "tool_removed").target == "order_status"


def test_the_list_counts_the_last_days_calls_and_failures(operator):
    tool = add_tool(operator)
    now = utcnow()
    conversation = conversation_for(ADA)
    for status, age in ((ToolUseStatus.OK, 1), (ToolUseStatus.FAILED, 2), (ToolUseStatus.INVALID, 3),
                        (ToolUseStatus.OK, 5), (ToolUseStatus.FAILED, 30)):
        ToolUse.create(conversation=conversation, tool="order_status", status=status.value,
                       created_at=now - timedelta(hours=age))
    ToolUse.create(conversation=conversation, tool="another_tool", status="failed", created_at=now)

    row = text_of(operator.get(PAGE)).split(f'id="tool-{tool.id}"')[1].split("</tr>")[0]

    assert '<span class="tool-calls">4</span> calls' in row
    assert '<span class="tool-failures">2</span> failed' in row


def test_try_calls_the_endpoint_once_shows_what_came_back_and_records_nothing(operator, shop):
    tool = add_tool(operator, url_template=shop.url + "/orders/{order_id}")
    shop.then(Scripted(200, {"status": "shipped"}))

    response = post(operator, f"{PAGE}{tool.id}/try/", {"arguments": '{"order_id": "A 17"}'})

    page = text_of(response)
    assert response.status_code == 200
    result = page.split('id="try-result"')[1].split("</details>")[0]
    assert "status-ok" in result and re.search(r'class="try-ms">\d+</span> ms', result)
    assert '<span class="try-size">21</span> bytes' in result
    assert '{"status": "shipped"}' in result
    assert [(request.method, request.path) for request in shop.requests] == [("GET", "/orders/A%2017")]
    assert shop.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert ToolUse.select().count() == 0
    assert SECRET not in page
    # The arguments tried stay in the Try form.
    assert '{"order_id": "A 17"}</textarea>' in page


def test_try_shows_a_failing_endpoint_and_arguments_that_do_not_fit(operator, shop):
    tool = add_tool(operator, url_template=shop.url + "/orders/{order_id}")
    shop.then(Scripted(503, "down for maintenance"))

    failed = text_of(post(operator, f"{PAGE}{tool.id}/try/", {"arguments": '{"order_id": "A1"}'}))
    invalid = text_of(post(operator, f"{PAGE}{tool.id}/try/", {"arguments": "{}"}))
    not_json = text_of(post(operator, f"{PAGE}{tool.id}/try/", {"arguments": "order A1"}))

    assert "status-failed" in failed and "HTTP 503" in failed and "down for maintenance" in failed
    assert "status-invalid" in invalid and "'order_id' is a required property" in invalid
    assert "The arguments are not JSON" in not_json
    assert len(shop.requests) == 1 and ToolUse.select().count() == 0


# --- the AI configuration's built-in tools ----------------------------------------------------------

def test_the_ai_configuration_form_saves_which_built_in_tools_are_offered(operator):
    new_form = text_of(operator.get("/admin/aiconfiguration/new/"))
    assert "Offer request_human: the model may call a person" in new_form and "Offer schedule_follow_up" in new_form
    # Offered unless the admin says otherwise, as the model's default has it.
    assert all(" checked " in f" {tag} " for tag in re.findall(r'<input[^>]*id="offer_[a-z_]+"[^>]*>', new_form))
    assert len(re.findall(r'<input[^>]*id="offer_[a-z_]+"[^>]*>', new_form)) == 2

    response = operator.post("/admin/aiconfiguration/new/", data={
        "csrf_token": csrf_token(operator, "/admin/aiconfiguration/new/"), "name": "Careful", "provider": "openrouter",
        "model_name": "openai/gpt-4o-mini", "max_tokens": "300", "temperature": "0.5", "offer_request_human": "y"})

    assert response.status_code == 302
    saved = AIConfiguration.get(AIConfiguration.name == "Careful")
    assert (saved.offer_request_human, saved.offer_follow_ups) == (True, False)
    edit = f"/admin/aiconfiguration/edit/?id={saved.id}"
    operator.post(edit, data={"csrf_token": csrf_token(operator, edit), "name": "Careful", "provider": "openrouter",
                              "model_name": "openai/gpt-4o-mini", "max_tokens": "300", "temperature": "0.5",
                              "offer_follow_ups": "y"})
    saved = AIConfiguration.get_by_id(saved.id)
    assert (saved.offer_request_human, saved.offer_follow_ups) == (False, True)


# --- the transcript -------------------------------------------------------------------------------

@pytest.fixture
def promised(services):
    """A conversation where the model called a tool while answering, and promised two follow-ups."""
    conversation = conversation_for(ADA, "Ada")
    question = Message.create(conversation=conversation, role="user", status="answered", content="Where is A17?")
    use = ToolUse.create(conversation=conversation, message=question, tool="order_status",
                         arguments={"order_id": "A17", "api_key": "•••"}, status="ok", duration_ms=84.4, size=1234,
                         result="R" * 1000)
    answer = Message.create(conversation=conversation, role="assistant", status="sent", content="It has shipped.",
                            reply_to=question)
    orphan = ToolUse.create(conversation=conversation, message=None, tool="order_status", arguments={},
                            status="failed", error="no answer within 5s")
    due = datetime(2030, 1, 2, 8, 0)
    scheduled = FollowUp.create(conversation=conversation, text="Reminder: call +15550009999 about A17", due_at=due)
    sent = FollowUp.create(conversation=conversation, text="Your parcel arrives today", due_at=due - timedelta(days=1),
                           status=FollowUpStatus.SENT.value)
    return {"conversation": conversation, "question": question, "use": use, "answer": answer, "orphan": orphan,
            "scheduled": scheduled, "sent": sent}


def transcript(client, conversation) -> str:
    response = client.get(f"/admin/conversation/details/?id={conversation.id}")
    assert response.status_code == 200
    return text_of(response)


def test_the_transcript_shows_a_tool_call_after_the_message_it_answered(operator, promised):
    page = transcript(operator, promised["conversation"])

    use = promised["use"]
    card = page.split(f'id="tool-use-{use.id}"')[1].split('id="message-')[0]
    assert page.index(f'id="message-{promised["question"].id}"') < page.index(f'id="tool-use-{use.id}"') < page.index(
        f'id="message-{promised["answer"].id}"')
    assert "order_status" in card and "status-ok" in card and "84 ms" in card and "1234 bytes" in card
    assert '"order_id": "A17"' in card and '"api_key": "•••"' in card
    assert "R" * 299 + "…" in card and "R" * 301 not in card
    orphans = page.split('id="tool-calls"')[1]
    assert f'id="tool-use-{promised["orphan"].id}"' in orphans and "no answer within 5s" in orphans


def test_the_transcript_lists_follow_ups_due_in_the_admins_time_zone(operator, services, promised):
    services.config = services.config.replace(admin_timezone="Asia/Tokyo")

    section = transcript(operator, promised["conversation"]).split('id="follow-ups"')[1].split('id="notes"')[0]

    assert "times in Asia/Tokyo" in section
    scheduled = section.split(f'id="follow-up-{promised["scheduled"].id}"')[1].split("</tr>")[0]
    assert "2030-01-02 17:00" in scheduled and "status-scheduled" in scheduled and "cancel-follow-up" in scheduled
    assert "+1555•••9999" in scheduled and "+15550009999" not in scheduled
    sent = section.split(f'id="follow-up-{promised["sent"].id}"')[1].split("</tr>")[0]
    assert "2030-01-01 17:00" in sent and "status-sent" in sent and "cancel-follow-up" not in sent


def test_an_agent_cancels_a_follow_up_and_a_viewer_may_only_look(as_role, promised):
    scheduled, conversation = promised["scheduled"], promised["conversation"]
    viewer = as_role(Role.VIEWER)
    seen = transcript(viewer, conversation)
    assert f'id="follow-up-{scheduled.id}"' in seen and "cancel-follow-up" not in seen

    refused = viewer.post(f"/admin/conversation/follow-up/{scheduled.id}/cancel/",
                          data={"csrf_token": csrf_token(viewer, "/admin/")})
    assert refused.status_code == 403
    assert FollowUp.get_by_id(scheduled.id).status == FollowUpStatus.SCHEDULED.value

    agent = as_role(Role.AGENT)
    response = agent.post(f"/admin/conversation/follow-up/{scheduled.id}/cancel/",
                          data={"csrf_token": csrf_token(agent, "/admin/")})

    assert response.status_code == 302 and response.location.endswith("#follow-ups")
    cancelled = FollowUp.get_by_id(scheduled.id)
    assert (cancelled.status, cancelled.cancelled_by) == (FollowUpStatus.CANCELLED.value, "agent")
    row = transcript(agent, conversation).split(f'id="follow-up-{scheduled.id}"')[1].split("</tr>")[0]
    assert "status-cancelled" in row and "by agent" in row and "cancel-follow-up" not in row


def test_a_sent_follow_up_is_not_cancelled(as_role, promised):
    agent = as_role(Role.AGENT)

    agent.post(f"/admin/conversation/follow-up/{promised['sent'].id}/cancel/",
               data={"csrf_token": csrf_token(agent, "/admin/")})

    kept = FollowUp.get_by_id(promised["sent"].id)
    assert (kept.status, kept.cancelled_by) == (FollowUpStatus.SENT.value, None)


# --- the Problems page -----------------------------------------------------------------------------

def test_problems_lists_the_recent_failed_tool_calls(operator, services):
    conversation = conversation_for(ADA, "Ada")
    now = utcnow()

    def use(status: str, age: timedelta, error: str | None = None) -> ToolUse:
        return ToolUse.create(conversation=conversation, tool="order_status", status=status, error=error,
                              created_at=now - age)

    failed = use("failed", timedelta(hours=1), "HTTP 500 for +15550009999")
    invalid = use("invalid", timedelta(days=2), "order_id: 'order_id' is a required property")
    use("ok", timedelta(minutes=5))
    use("awaiting_yes", timedelta(minutes=5))
    use("failed", timedelta(days=8), "long ago")

    page = text_of(operator.get("/admin/problems/"))

    listed = {int(found) for found in re.findall(r'id="tool-failure-(\d+)"', page)}
    assert listed == {failed.id, invalid.id}
    row = page.split(f'id="tool-failure-{failed.id}"')[1].split("</tr>")[0]
    assert "order_status" in row and "HTTP 500 for +1555•••9999" in row
    assert f'/admin/conversation/details/?id={conversation.id}#tool-use-{failed.id}' in row
    assert "whatsapp:+1555•••1111" in row
