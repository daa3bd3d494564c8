"""The assistant acts, end to end: signed webhook → RQ worker → OpenRouter fake answering with
`tool_calls` → a fake business API on loopback → the answer on the Twilio fake; follow-ups sent by
the sweeper when they are due."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from chatbot.jobs import tasks
from chatbot.models import (
    FollowUp,
    FollowUpStatus,
    Message,
    Role,
    Status,
    ToolRisk,
    ToolUse,
    ToolUseStatus,
    utcnow,
)
from chatbot.outbound import OutboundGuard
from chatbot.tools.definitions import ToolDefinition, ToolProblem, save
from chatbot.tools.loop import TOOL_RESULTS_ARE_DATA
from tests.fakes import FakeOpenRouter, FakeServer, Recorded, Scripted

ADA = "whatsapp:+15550001111"
ORDER_PARAMETERS = {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}
BOOKING_PARAMETERS = {"type": "object", "properties": {"time": {"type": "string"}, "people": {"type": "integer"}},
                      "required": ["time", "people"]}
TEMPLATE = "HX" + "0123456789abcdef" * 2


class FakeBusinessAPI(FakeServer):
    """The business's own API: orders by id, table bookings; records what it was asked."""

    def default_answer(self, request: Recorded) -> Scripted:
        if request.path.startswith("/orders/"):
            return Scripted(200, {"order": request.path.rsplit("/", 1)[1], "status": "shipped", "eta": "Tuesday"})
        if request.path == "/bookings" and request.method == "POST":
            return Scripted(201, {"booked": True, **request.body})
        return super().default_answer(request)


@pytest.fixture
def template_sid(request):
    """WINDOW_TEMPLATE_SID of the test deployment: none unless a test asks for one."""
    return getattr(request, "param", "")


@pytest.fixture
def ai_deadline(request):
    """AI_DEADLINE of the test deployment: the default unless a test asks for another."""
    return getattr(request, "param", None)


@pytest.fixture
def config(config, template_sid, ai_deadline):
    return config.replace(window_template_sid=template_sid, ai_deadline=ai_deadline or config.ai_deadline)


@pytest.fixture(scope="module")
def business_server():
    server = FakeBusinessAPI().start()
    yield server
    server.stop()


@pytest.fixture
def business_api(business_server):
    business_server.reset()
    return business_server


@pytest.fixture
def tool_model(fake_openrouter):
    """The test model takes tools, as OpenRouter's catalogue says of it."""
    fake_openrouter.tool_models = {"openai/gpt-4o-mini"}
    return fake_openrouter


def add_tool(services, name: str, url: str, parameters: dict, **fields):
    return save(ToolDefinition(name=name, description=fields.pop("description", f"The {name} tool."),
                               url_template=url, parameters=parameters, **fields),
                services.cipher, OutboundGuard(allow_private=True))


def calls(*wanted: tuple[str, dict]) -> Scripted:
    """A completion in which the model calls these tools."""
    completion = FakeOpenRouter.completion("")
    message = completion["choices"][0]["message"]
    message["content"] = None
    message["tool_calls"] = [{"id": f"call_{number}", "type": "function",
                              "function": {"name": name, "arguments": json.dumps(arguments)}}
                             for number, (name, arguments) in enumerate(wanted)]
    completion["choices"][0]["finish_reason"] = "tool_calls"
    return Scripted(200, completion)


def bodies(fake_twilio) -> list[str]:
    return [sent.get("Body") for sent in fake_twilio.sent if sent["To"] == ADA]


@pytest.mark.postgres
def test_an_order_lookup_calls_the_business_api_once_and_its_result_reaches_the_answer(
        services, post_webhook, run_jobs, tool_model, fake_twilio, business_api):
    add_tool(services, "order_status", business_api.url + "/orders/{order_id}", ORDER_PARAMETERS,
             description="Look up where a customer's order is, by its id such as A-1001.")
    tool_model.then(calls(("order_status", {"order_id": "A-1001"})))
    post_webhook.message("Where is my order A-1001?", sender=ADA)
    run_jobs()

    [asked] = business_api.requests
    assert (asked.method, asked.path) == ("GET", "/orders/A-1001")
    first, second = tool_model.completions
    [offered] = [tool for tool in first.body["tools"] if tool["function"]["name"] == "order_status"]
    assert offered["function"]["description"] == "Look up where a customer's order is, by its id such as A-1001."
    assert offered["function"]["parameters"] == ORDER_PARAMETERS
    assert first.body["messages"][0]["content"].endswith(TOOL_RESULTS_ARE_DATA)
    # The second request repeats the call and carries its result, tied by the call's id.
    call_turn, result_turn = second.body["messages"][-2:]
    assert call_turn["tool_calls"][0]["id"] == result_turn["tool_call_id"] == "call_0"
    assert json.loads(result_turn["content"])["status"] == "shipped"
    [sent] = bodies(fake_twilio)
    assert "shipped" in sent and "Tuesday" in sent
    [use] = ToolUse.select()
    answered = json.dumps({"order": "A-1001", "status": "shipped", "eta": "Tuesday"}).encode()
    assert (use.tool, use.arguments, use.status, use.size) == ("order_status", {"order_id": "A-1001"}, "ok",
                                                               len(answered))
    answer = Message.get(Message.role == Role.ASSISTANT.value)
    # Both rounds are paid for and counted.
    assert answer.total_tokens == 38 and answer.cost == pytest.approx(0.00002)


def test_a_tool_aimed_at_the_cloud_metadata_address_is_refused_when_saved(services):
    with pytest.raises(ToolProblem, match="169.254.169.254.*link-local or cloud metadata"):
        add_tool(services, "steal", "http://169.254.169.254/latest/meta-data/{path}",
                 {"type": "object", "properties": {"path": {"type": "string"}}})


def test_a_confirm_tool_waits_for_the_customers_yes_then_runs_once(services, post_webhook, run_jobs, tool_model,
                                                                   fake_twilio, business_api):
    add_tool(services, "book_table", business_api.url + "/bookings", BOOKING_PARAMETERS, method="POST",
             body_template='{"time": {time}, "people": {people}}', risk=ToolRisk.CONFIRM.value)
    tool_model.then(calls(("book_table", {"time": "20:00", "people": 2})))
    post_webhook.message("A table for two at 8 tonight please", sender=ADA)
    run_jobs()
    assert business_api.requests == []
    [waiting] = ToolUse.select()
    assert waiting.status == ToolUseStatus.AWAITING_YES.value
    # The model was told to ask; the fake echoes what it read last.
    assert "explicit yes" in bodies(fake_twilio)[0]

    post_webhook.message("Yes!", sender=ADA)
    run_jobs()
    [booked] = business_api.requests
    assert (booked.method, booked.path, booked.body) == ("POST", "/bookings", {"time": "20:00", "people": 2})
    done = ToolUse.get_by_id(waiting.id)
    assert (done.status, done.confirmed_at is not None) == ("ok", True)
    last = tool_model.completions[-1].body["messages"]
    assert last[-3]["content"] == "Yes!" and last[-2]["tool_calls"][0]["function"]["name"] == "book_table"
    assert '"booked": true' in last[-1]["content"]

    # Asking again later runs nothing on its own.
    tasks.sweep_pending_messages()
    run_jobs()
    assert len(business_api.requests) == 1


def test_anything_but_a_yes_drops_the_confirm_call_for_good(services, post_webhook, run_jobs, tool_model,
                                                            fake_twilio, business_api):
    add_tool(services, "book_table", business_api.url + "/bookings", BOOKING_PARAMETERS, method="POST",
             body_template='{"time": {time}, "people": {people}}', risk=ToolRisk.CONFIRM.value)
    tool_model.then(calls(("book_table", {"time": "20:00", "people": 2})))
    post_webhook.message("Book a table for two at 8", sender=ADA)
    run_jobs()
    post_webhook.message("Actually, let me think about it", sender=ADA)
    run_jobs()
    post_webhook.message("yes", sender=ADA)
    run_jobs()
    assert business_api.requests == []
    assert [use.status for use in ToolUse.select()] == [ToolUseStatus.DECLINED.value]


def test_a_failing_tool_gives_the_model_an_error_and_the_customer_an_answer(services, post_webhook, run_jobs,
                                                                            tool_model, fake_twilio, business_api):
    add_tool(services, "order_status", business_api.url + "/orders/{order_id}", ORDER_PARAMETERS)
    business_api.then(Scripted(500, {"error": "database down"}))
    tool_model.then(calls(("order_status", {"order_id": "A-1"})))
    post_webhook.message("Where is A-1?", sender=ADA)
    run_jobs()
    [sent] = bodies(fake_twilio)
    assert sent.startswith("Answer to: error: the tool answered HTTP 500")
    [use] = ToolUse.select()
    assert (use.status, use.error) == ("failed", "HTTP 500")
    assert Message.get(Message.role == Role.USER.value).status == Status.ANSWERED.value


def test_arguments_that_do_not_fit_the_schema_make_no_request(services, post_webhook, run_jobs, tool_model,
                                                             fake_twilio, business_api):
    add_tool(services, "order_status", business_api.url + "/orders/{order_id}", ORDER_PARAMETERS)
    tool_model.then(calls(("order_status", {"order": 42})))
    post_webhook.message("Where is my order?", sender=ADA)
    run_jobs()
    assert business_api.requests == []
    [use] = ToolUse.select()
    assert use.status == "invalid" and "'order_id' is a required property" in use.error
    assert "the arguments do not fit the tool" in bodies(fake_twilio)[0]


def test_a_slow_tool_is_cut_off_at_its_timeout_and_the_answer_still_goes(services, post_webhook, run_jobs,
                                                                         tool_model, fake_twilio, business_api):
    add_tool(services, "order_status", business_api.url + "/orders/{order_id}", ORDER_PARAMETERS, timeout=0.5)
    business_api.then(Scripted(200, {"status": "late"}, delay=10))
    tool_model.then(calls(("order_status", {"order_id": "A-1"})))
    post_webhook.message("Where is A-1?", sender=ADA)
    run_jobs()
    [use] = ToolUse.select()
    assert (use.status, use.error) == ("failed", "no answer within 0.5s")
    assert bodies(fake_twilio) == ["Answer to: error: no answer within 0.5s"]


def test_the_model_gets_at_most_tool_max_rounds_then_must_answer_in_words(services, post_webhook, run_jobs,
                                                                          tool_model, fake_twilio, business_api):
    add_tool(services, "order_status", business_api.url + "/orders/{order_id}", ORDER_PARAMETERS)
    tool_model.then(*(calls(("order_status", {"order_id": f"A-{n}"})) for n in range(3)))
    post_webhook.message("Where are my orders?", sender=ADA)
    run_jobs()
    assert [request.path for request in business_api.requests] == ["/orders/A-0", "/orders/A-1", "/orders/A-2"]
    requests = tool_model.completions
    assert len(requests) == 4
    assert [request.body.get("tool_choice") for request in requests] == [None, None, None, "none"]
    assert len(bodies(fake_twilio)) == 1


def test_a_model_that_takes_no_tools_is_offered_none(services, post_webhook, run_jobs, fake_openrouter,
                                                     fake_twilio, business_api):
    add_tool(services, "order_status", business_api.url + "/orders/{order_id}", ORDER_PARAMETERS)
    post_webhook.message("Where is A-1?", sender=ADA)
    run_jobs()
    [request] = fake_openrouter.completions
    assert "tools" not in request.body and request.body["messages"][0]["content"] == "You are a test assistant."


def test_a_tool_attached_to_another_ai_configuration_is_not_offered(services, post_webhook, run_jobs, tool_model,
                                                                    business_api):
    add_tool(services, "order_status", business_api.url + "/orders/{order_id}", ORDER_PARAMETERS,
             ai_configurations=(999,))
    post_webhook.message("Where is A-1?", sender=ADA)
    run_jobs()
    names = [tool["function"]["name"] for tool in tool_model.completions[0].body["tools"]]
    assert names == ["request_human", "schedule_follow_up"]


def schedule(tool_model, when: str, text: str = "Your table for two is at 8 tonight.") -> None:
    tool_model.then(calls(("schedule_follow_up", {"when": when, "text": text})))


@pytest.mark.postgres
def test_a_follow_up_is_sent_once_at_its_time(services, post_webhook, run_jobs, tool_model, fake_twilio):
    schedule(tool_model, "in 2 hours")
    post_webhook.message("Remind me in two hours about my table", sender=ADA)
    run_jobs()
    [follow_up] = FollowUp.select()
    assert abs(follow_up.due_at - (utcnow() + timedelta(hours=2))) < timedelta(minutes=1)
    assert bodies(fake_twilio)[0].startswith("Answer to: scheduled (follow-up")

    tasks.sweep_pending_messages()
    run_jobs()
    assert len(bodies(fake_twilio)) == 1  # not yet due

    FollowUp.update(due_at=utcnow() - timedelta(seconds=1)).execute()  # two hours later
    tasks.sweep_pending_messages()
    run_jobs()
    tasks.sweep_pending_messages()
    run_jobs()
    assert bodies(fake_twilio)[1:] == ["Your table for two is at 8 tonight."]
    sent = FollowUp.get_by_id(follow_up.id)
    assert sent.status == FollowUpStatus.SENT.value
    assert Message.get_by_id(sent.sent_message_id).status == Status.SENT.value


@pytest.mark.parametrize("template_sid", [TEMPLATE], indirect=True)
def test_a_follow_up_past_the_24_hour_window_goes_as_the_numbers_template(services, post_webhook, run_jobs,
                                                                          tool_model, fake_twilio):
    schedule(tool_model, "in 1 day", "Did the parcel arrive?")
    post_webhook.message("Check with me tomorrow", sender=ADA)
    run_jobs()
    Message.update(created_at=utcnow() - timedelta(hours=25)).where(Message.role == Role.USER.value).execute()
    FollowUp.update(due_at=utcnow() - timedelta(seconds=1)).execute()
    tasks.sweep_pending_messages()
    run_jobs()
    follow_up_form = fake_twilio.sent[-1]
    assert follow_up_form["ContentSid"] == TEMPLATE
    assert json.loads(follow_up_form["ContentVariables"]) == {"1": "Did the parcel arrive?"}


def test_stop_cancels_what_was_scheduled_and_nothing_is_sent(services, post_webhook, run_jobs, tool_model,
                                                             fake_twilio):
    schedule(tool_model, "in 30 minutes")
    post_webhook.message("Remind me in 30 minutes", sender=ADA)
    run_jobs()
    post_webhook.message("STOP", sender=ADA)
    run_jobs()
    follow_up = FollowUp.get()
    assert (follow_up.status, follow_up.cancelled_by) == (FollowUpStatus.CANCELLED.value, "STOP")
    FollowUp.update(due_at=utcnow() - timedelta(seconds=1)).execute()
    sent_before = len(fake_twilio.sent)
    tasks.sweep_pending_messages()
    run_jobs()
    assert len(fake_twilio.sent) == sent_before


@pytest.mark.parametrize("when, problem", [
    ("yesterday", "'when' must be a date and time"),
    ("in 90 days", "at most 30 days ahead"),
    ("2000-01-01T09:00", "that time has passed"),
])
def test_a_follow_up_at_an_impossible_time_is_refused_to_the_model(services, post_webhook, run_jobs, tool_model,
                                                                   fake_twilio, when, problem):
    schedule(tool_model, when)
    post_webhook.message("Remind me", sender=ADA)
    run_jobs()
    assert FollowUp.select().count() == 0
    [use] = ToolUse.select()
    assert use.status == "invalid" and problem in use.error
    assert problem in bodies(fake_twilio)[0]



@pytest.mark.parametrize("ai_deadline", [6], indirect=True)
def test_a_tool_gets_only_what_is_left_of_ai_deadline(services, post_webhook, run_jobs, tool_model, fake_twilio,
                                                      business_api):
    add_tool(services, "order_status", business_api.url + "/orders/{order_id}", ORDER_PARAMETERS, timeout=30)
    business_api.then(Scripted(200, {"status": "late"}, delay=30))
    tool_model.then(calls(("order_status", {"order_id": "A-1"})))
    post_webhook.message("Where is A-1?", sender=ADA)
    run_jobs()
    [use] = ToolUse.select()
    # AI_DEADLINE=6 leaves the tool about a second: the model needs MIN_AI_SECONDS to answer after it.
    assert use.status == "failed" and use.error.startswith("no answer within") and use.duration_ms < 3000
    assert len(bodies(fake_twilio)) == 1


def test_forget_erases_the_tool_calls_and_follow_ups_with_the_conversation(services, post_webhook, run_jobs,
                                                                           tool_model, fake_twilio):
    schedule(tool_model, "in 1 day", "Still need help with +15550001111's order?")
    post_webhook.message("Remind me tomorrow", sender=ADA)
    run_jobs()
    assert (ToolUse.select().count(), FollowUp.select().count()) == (1, 1)
    post_webhook.message("/forget", sender=ADA)
    run_jobs()
    post_webhook.message("YES", sender=ADA)
    run_jobs()
    assert (ToolUse.select().count(), FollowUp.select().count()) == (0, 0)
