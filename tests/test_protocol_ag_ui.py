"""AG-UI (`POST /api/ag-ui`): the encoder and the request translation in isolation, then the raw SSE bytes
of the running app, checked against AG-UI's event schema (only its fields) and ordering rules (the ones
`@ag-ui/client` enforces). tests/clients/ag-ui.test.mjs drives the same route with the real HttpAgent.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aoai_simulator import SimulatorHandle
from chatstream import events
from chatstream.errors import ChatError
from chatstream.protocols.ag_ui import AG_UI, AgUiEncoder, parse_request
from chatstream.schema import Limits
from funchost.testing import SubprocessServer
from tests.conftest import start_app

# ---------------------------------------------------------------------------------------------
# What AG-UI allows: each event type's fields (@ag-ui/core 1.0), and its ordering rules
# ---------------------------------------------------------------------------------------------

_BASE = {"type", "timestamp", "rawEvent", "metadata"}
FIELDS: dict[str, set[str]] = {
    "RUN_STARTED": {"threadId", "runId", "protocolVersion", "parentRunId", "input"},
    "RUN_FINISHED": {"threadId", "runId", "result", "outcome", "usage"},
    "RUN_ERROR": {"message", "code", "usage"},
    "TEXT_MESSAGE_START": {"messageId", "role", "name"},
    "TEXT_MESSAGE_CONTENT": {"messageId", "delta"},
    "TEXT_MESSAGE_END": {"messageId"},
    "TOOL_CALL_START": {"toolCallId", "toolCallName", "parentMessageId"},
    "TOOL_CALL_ARGS": {"toolCallId", "delta"},
    "TOOL_CALL_END": {"toolCallId"},
    "TOOL_CALL_RESULT": {"messageId", "toolCallId", "content", "role"},
    "STEP_STARTED": {"stepName"},
    "STEP_FINISHED": {"stepName"},
    "CUSTOM": {"name", "value"},
}
REQUIRED: dict[str, set[str]] = {
    "RUN_STARTED": {"threadId", "runId"},
    "RUN_FINISHED": {"threadId", "runId"},
    "RUN_ERROR": {"message"},
    "TEXT_MESSAGE_START": {"messageId"},
    "TEXT_MESSAGE_CONTENT": {"messageId", "delta"},
    "TEXT_MESSAGE_END": {"messageId"},
    "TOOL_CALL_START": {"toolCallId", "toolCallName"},
    "TOOL_CALL_ARGS": {"toolCallId", "delta"},
    "TOOL_CALL_END": {"toolCallId"},
    "TOOL_CALL_RESULT": {"messageId", "toolCallId", "content"},
    "STEP_STARTED": {"stepName"},
    "STEP_FINISHED": {"stepName"},
    "CUSTOM": {"name", "value"},
}
USAGE_FIELDS = {"provider", "model", "inputTokens", "outputTokens", "totalTokens", "reasoningTokens"}


def check_run(events: list[dict[str, Any]]) -> None:
    """One valid AG-UI run: schema fields only, RUN_STARTED first, exactly one terminal event last,
    messages, tool calls and steps opened before use and closed before RUN_FINISHED."""
    assert events, "no events"
    assert events[0]["type"] == "RUN_STARTED"
    texts: set[str] = set()
    calls: set[str] = set()
    steps: set[str] = set()
    for position, event in enumerate(events):
        kind = event["type"]
        assert kind in FIELDS, f"not an event we send: {kind}"
        assert set(event) <= FIELDS[kind] | _BASE, f"fields outside AG-UI's schema: {event}"
        assert REQUIRED[kind] <= set(event), f"missing fields: {event}"
        assert isinstance(event.get("metadata", {}), dict)
        for entry in event.get("usage", []):
            assert (
                set(entry) <= USAGE_FIELDS
                and entry["totalTokens"] == entry["inputTokens"] + entry["outputTokens"]
            )
        if kind in ("RUN_FINISHED", "RUN_ERROR"):
            assert position == len(events) - 1, "nothing may follow the terminal event"
        if kind == "RUN_FINISHED":
            assert not texts and not calls and not steps, (texts, calls, steps)
        elif kind == "TEXT_MESSAGE_START":
            assert event["messageId"] not in texts
            texts.add(event["messageId"])
        elif kind == "TEXT_MESSAGE_CONTENT":
            assert event["messageId"] in texts, "content of a message that is not open"
        elif kind == "TEXT_MESSAGE_END":
            texts.remove(event["messageId"])
        elif kind == "TOOL_CALL_START":
            assert event["toolCallId"] not in calls
            calls.add(event["toolCallId"])
        elif kind == "TOOL_CALL_ARGS":
            assert event["toolCallId"] in calls
        elif kind == "TOOL_CALL_END":
            calls.remove(event["toolCallId"])
        elif kind == "STEP_STARTED":
            assert event["stepName"] not in steps
            steps.add(event["stepName"])
        elif kind == "STEP_FINISHED":
            steps.remove(event["stepName"])
    assert events[-1]["type"] in ("RUN_FINISHED", "RUN_ERROR"), "a run ends with RUN_FINISHED or RUN_ERROR"


def decode(body: bytes) -> tuple[list[dict[str, Any]], int]:
    """The events and heartbeat count of an SSE body, checking every block is `data: {json}` or `: ping`."""
    text = body.decode()
    assert text.endswith("\n\n"), f"not ended on an event boundary: {text[-80:]!r}"
    events, pings = [], 0
    for block in text.split("\n\n")[:-1]:
        if block == ": ping":
            pings += 1
            continue
        assert block.startswith("data: ") and "\n" not in block, block
        assert block != "data: [DONE]", "AG-UI has no [DONE]"
        events.append(json.loads(block[len("data: ") :]))
    return events, pings


# ---------------------------------------------------------------------------------------------
# The encoder, event by event
# ---------------------------------------------------------------------------------------------

START = {"type": "start", "id": "req-1", "chain": "chat", "deployment": "d", "created": 1}
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


# The runner's own event builders, so the encoder is tested on exactly what the runner sends.
def end(finish_reason: str = "stop", usage: dict[str, int] | None = USAGE) -> dict[str, Any]:
    return events.end("req-1", "d", "m-1", finish_reason, usage)


def delta(text: str) -> dict[str, Any]:
    return events.delta("d", text)


def tool_delta(index: int, call_id: str | None, name: str | None, args: str) -> dict[str, Any]:
    return events.tool_call_delta("d", index, call_id, name, args)


def tool_call(index: int, call_id: str, name: str, args: str) -> dict[str, Any]:
    return events.tool_call("d", index, call_id, name, args)


def encode(*native: dict[str, Any], close: bool = True) -> list[dict[str, Any]]:
    encoder = AgUiEncoder("thread-1", "run-1")
    body = b"".join(encoder.encode(event) for event in native)
    if close:
        body += encoder.close()
    events, pings = decode(body) if body else ([], 0)
    assert pings == 0
    return events


def test_text_run_maps_to_started_message_and_finished_with_usage():
    events = encode(START, delta("Hel"), delta("lo"), end())
    check_run(events)
    assert [e["type"] for e in events] == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    started, opened, *_, finished = events
    assert (started["threadId"], started["runId"]) == ("thread-1", "run-1")
    assert started["metadata"] == {"requestId": "req-1", "chain": "chat", "deployment": "d"}
    assert opened["role"] == "assistant"
    assert {e["messageId"] for e in events[1:5]} == {opened["messageId"]}
    assert "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT") == "Hello"
    assert (finished["threadId"], finished["runId"]) == ("thread-1", "run-1")
    assert finished["usage"] == [{"model": "m-1", "inputTokens": 5, "outputTokens": 3, "totalTokens": 8}]
    assert finished["metadata"] == {"finishReason": "stop", "deployment": "d"}


def test_content_is_escaped_json_whatever_the_text():
    text = 'quote " backslash \\ newline \n\n data: [DONE] \u2028 é'
    events = encode(START, delta(text), end(usage=None))
    check_run(events)
    assert events[2]["delta"] == text
    assert "usage" not in events[-1]


def test_a_refusal_is_shown_as_the_assistants_text():
    events = encode(START, {"type": "refusal", "deployment": "d", "refusal": "I can't."}, end("stop"))
    check_run(events)
    assert [e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT"] == ["I can't."]


def test_server_tools_stream_as_tool_calls_with_results_then_a_new_message():
    events = encode(
        START,
        delta("Let me compute."),
        tool_delta(0, "call_a", "calculator", ""),
        tool_delta(1, "call_b", "utc_time", "{}"),
        tool_delta(0, None, None, '{"expression": '),
        tool_delta(0, None, None, '"1+1"}'),
        tool_call(0, "call_a", "calculator", '{"expression": "1+1"}'),
        tool_call(1, "call_b", "utc_time", "{}"),
        {"type": "tool_result", "deployment": "d", "id": "call_a", "name": "calculator", "content": "2"},
        {
            "type": "tool_error",
            "deployment": "d",
            "id": "call_b",
            "name": "utc_time",
            "message": "clock broke",
        },
        delta("It is 2."),
        end(),
    )
    check_run(events)
    kinds = [e["type"] for e in events]
    first_text = events[1]["messageId"]
    assert kinds.index("TEXT_MESSAGE_END") < kinds.index("TOOL_CALL_START"), "text closed before the call"
    starts = [e for e in events if e["type"] == "TOOL_CALL_START"]
    assert [(s["toolCallId"], s["toolCallName"]) for s in starts] == [
        ("call_a", "calculator"),
        ("call_b", "utc_time"),
    ]
    assert {s["parentMessageId"] for s in starts} == {first_text}, "the calls belong to the turn's message"
    args = {}
    for e in events:
        if e["type"] == "TOOL_CALL_ARGS":
            args[e["toolCallId"]] = args.get(e["toolCallId"], "") + e["delta"]
    assert args == {"call_a": '{"expression": "1+1"}', "call_b": "{}"}
    results = [e for e in events if e["type"] == "TOOL_CALL_RESULT"]
    assert [(r["toolCallId"], r["content"], r["role"]) for r in results] == [
        ("call_a", "2", "tool"),
        ("call_b", "Error: clock broke", "tool"),
    ]
    assert len({r["messageId"] for r in results} | {first_text}) == 3
    second = [e for e in events if e["type"] == "TEXT_MESSAGE_START"][1]
    assert second["messageId"] != first_text, "the answer after the tools is a new message"


def test_a_tool_call_without_deltas_and_without_text_gets_its_own_parent():
    events = encode(START, tool_call(0, "call_x", "calculator", '{"expression": "2"}'), end("tool_calls"))
    check_run(events)
    assert [e["type"] for e in events[1:4]] == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END"]
    assert events[1]["parentMessageId"] and events[2]["delta"] == '{"expression": "2"}'


def test_a_call_cut_off_by_the_end_is_closed_before_run_finished():
    events = encode(START, tool_delta(0, "call_a", "calculator", '{"exp'), end("length"))
    check_run(events)
    assert [e["type"] for e in events[-2:]] == ["TOOL_CALL_END", "RUN_FINISHED"]


def test_progress_becomes_steps_and_citations_a_custom_event():
    citations = [{"number": 1, "id": "a", "title": "A", "source": "docs/a.txt", "score": 1.0}]
    events = encode(
        START,
        {"type": "progress", "deployment": "d", "stage": "searching", "message": "Searching 3 documents"},
        {"type": "progress", "deployment": "d", "stage": "found", "message": "Found 1 passage", "count": 1},
        {"type": "citations", "deployment": "d", "citations": citations},
        {"type": "progress", "deployment": "d", "stage": "generating", "message": "Generating the answer"},
        delta("See [1]."),
        end(),
    )
    check_run(events)
    steps = [(e["type"], e["stepName"]) for e in events if e["type"].startswith("STEP")]
    assert steps == [
        ("STEP_STARTED", "searching"),
        ("STEP_FINISHED", "searching"),
        ("STEP_STARTED", "found"),
        ("STEP_FINISHED", "found"),
        ("STEP_STARTED", "generating"),
        ("STEP_FINISHED", "generating"),
    ]
    found = next(e for e in events if e.get("stepName") == "found")
    assert found["metadata"] == {"message": "Found 1 passage", "count": 1}
    custom = next(e for e in events if e["type"] == "CUSTOM")
    assert custom == {"type": "CUSTOM", "name": "citations", "value": citations}


def test_an_error_is_one_run_error_last_with_the_usage_of_the_end_after_it():
    error = {
        "type": "error",
        "deployment": "d",
        "code": "upstream_interrupted",
        "message": "broke",
        "retryable": True,
    }
    events = encode(START, delta("par"), error, end("error", USAGE))
    check_run(events)
    assert [e["type"] for e in events] == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "RUN_ERROR",
    ]
    failed = events[-1]
    assert (failed["code"], failed["message"]) == ("upstream_interrupted", "broke")
    assert failed["metadata"] == {"retryable": True}
    assert failed["usage"][0]["outputTokens"] == 3


def test_a_retry_after_travels_in_the_run_errors_metadata():
    error = {
        "type": "error",
        "deployment": "d",
        "code": "rate_limited",
        "message": "slow down",
        "retryable": True,
        "retry_after": 2.0,
    }
    events = encode(START, error, end("error", None))
    assert events[-1]["metadata"] == {"retryable": True, "retryAfter": 2.0}
    assert "usage" not in events[-1]


def test_a_stream_cut_short_still_ends_with_run_error_and_nothing_follows_the_end():
    events = encode(START, delta("a"))
    check_run(events)
    assert events[-1]["code"] == "internal_error"
    encoder = AgUiEncoder("t", "r")
    for event in (START, end()):
        encoder.encode(event)
    assert encoder.encode(delta("late")) == b"" and encoder.close() == b""
    assert AgUiEncoder("t", "r").close() == b"", "nothing at all before RUN_STARTED"


def test_the_wire_form_is_sse_with_comment_heartbeats_and_no_trailer():
    encoder = AG_UI.encoder(None, parse_request(_body(), Limits()))  # type: ignore[arg-type]
    assert encoder.media_type == "text/event-stream"
    assert encoder.heartbeat == b": ping\n\n"
    assert encoder.close() == b""


# ---------------------------------------------------------------------------------------------
# The request: RunAgentInput -> ChatRequest
# ---------------------------------------------------------------------------------------------


def _body(**fields: Any) -> bytes:
    body = {
        "threadId": "t",
        "runId": "r",
        "state": {},
        "messages": [{"id": "1", "role": "user", "content": "hi"}],
        "tools": [],
        "context": [],
        "forwardedProps": {},
    }
    return json.dumps({**body, **fields}).encode()


_ids = itertools.count()


def msg(role: str, content: Any = None, **fields: Any) -> dict[str, Any]:
    """An AG-UI message (`content` left out when None)."""
    message = {"id": f"m{next(_ids)}", "role": role, **fields}
    if content is not None:
        message["content"] = content
    return message


def text_parts(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": text} for text in texts]


#: An empty user message second in the body, after a tool message our conversation leaves out.
TOOL_THEN_EMPTY = [msg("tool", "x", toolCallId="c"), msg("user", "")]
CALL = {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": "{}"}}
IMAGE = [{"type": "image", "source": {"type": "url", "value": "https://example.com/a.png"}}]


def test_text_turns_become_the_conversation_and_the_rest_is_left_out():
    messages = [
        msg("developer", "Be brief."),
        msg("user", text_parts("What is ", "2+2?")),
        msg("assistant", toolCalls=[CALL]),
        msg("tool", "4", toolCallId="c"),
        msg("assistant", "4."),
        msg("reasoning", "hmm"),
        msg("activity", {}, activityType="x"),
        msg("user", "And 3+3?"),
    ]
    tools = [{"name": "frontend_only", "description": "a tool of the page", "parameters": {}}]
    chat = parse_request(
        _body(messages=messages, tools=tools, context=[{"description": "page", "value": "pricing"}]), Limits()
    )
    assert [(m.role, m.content) for m in chat.conversation] == [
        ("system", "Context from the application:\npage: pricing"),
        ("system", "Be brief."),
        ("user", "What is 2+2?"),
        ("assistant", "4."),
        ("user", "And 3+3?"),
    ]
    assert chat.stream is True and (chat.ag_ui_thread_id, chat.run_id, chat.thread_id) == ("t", "r", None)


def test_forwarded_props_carry_our_options_and_the_applications_keys_are_ignored():
    props = {
        "chain": "rag",
        "max_tokens": 50,
        "temperature": 0.5,
        "deployment": "gpt-4o",
        "copilotkit": {"x": 1},
    }
    chat = parse_request(_body(forwardedProps=props, parentRunId="p", resume=[], future_field=1), Limits())
    assert (chat.chain, chat.max_tokens, chat.temperature, chat.deployments) == ("rag", 50, 0.5, ["gpt-4o"])


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"messages": TOOL_THEN_EMPTY}, "invalid_request", "messages[1].content"),
        ({"messages": [msg("user", IMAGE)]}, "invalid_request", "messages[0].content"),
        ({"messages": [msg("robot", "x")]}, "invalid_request", "messages[0].role"),
        ({"messages": [msg("user", "x"), msg("assistant", "y")]}, "invalid_request", "messages"),
        ({"messages": []}, "invalid_request", "messages"),
        ({"threadId": ""}, "invalid_request", "threadId"),
        ({"forwardedProps": {"max_tokens": 0}}, "option_out_of_range", "forwardedProps.max_tokens"),
        ({"forwardedProps": {"max_tokens": 5.0}}, "invalid_request", "forwardedProps.max_tokens"),
        ({"forwardedProps": "rag"}, "invalid_request", "forwardedProps"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_naming_the_field_of_the_ag_ui_body(fields, code, param):
    with pytest.raises(ChatError) as caught:
        parse_request(_body(**fields), Limits())
    response = AG_UI.error_response(caught.value, {})
    body = json.loads(bytes(response.body))
    assert response.status_code == 400
    assert (body["type"], body["code"], body["metadata"]["param"]) == ("RUN_ERROR", code, param)
    assert body["message"].startswith(param) or code == "invalid_request"


def test_option_errors_found_after_parsing_name_the_forwarded_prop():
    error = ChatError(400, "unknown_deployment", "deployments: 'x' is not allowed", param="deployments")
    body = json.loads(bytes(AG_UI.error_response(error, {}).body))
    assert body["metadata"]["param"] == "forwardedProps.deployment"
    assert body["message"] == "forwardedProps.deployment: 'x' is not allowed"


# ---------------------------------------------------------------------------------------------
# End to end: the raw bytes of the running app
# ---------------------------------------------------------------------------------------------

ORIGIN = "http://localhost:3000"


@pytest.fixture(scope="module")
def agui_app(fault_simulator: SimulatorHandle) -> Iterator[SubprocessServer]:
    server = start_app(
        AZURE_OPENAI_ENDPOINT=fault_simulator.url,
        AZURE_OPENAI_API_KEY="test-key-not-secret",
        AZURE_OPENAI_DEPLOYMENT="gpt-4o-mini",
        CHAT_UPSTREAM_MAX_RETRIES="0",
        CHAT_FIRST_EVENT_WAIT_SECONDS="0.3",
        CHAT_HEARTBEAT_SECONDS="0.2",
        CHAT_CORS_ORIGINS=ORIGIN,
    )
    yield server
    server.stop()


def run_agent(url: str, prompt: str, **props: Any) -> tuple[httpx.Response, list[dict[str, Any]], int]:
    body = json.loads(_body(messages=[{"id": "u1", "role": "user", "content": prompt}], forwardedProps=props))
    headers = {"Accept": "text/event-stream", "Origin": ORIGIN}
    with httpx.stream("POST", f"{url}/api/ag-ui", json=body, headers=headers, timeout=30) as response:
        raw = response.read()
    if response.status_code != 200:
        return response, [], 0
    events, pings = decode(raw)
    return response, events, pings


def texts(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT")


def test_e2e_text_run_has_the_native_answer_in_a_valid_run(agui_app):
    prompt = "hello from the raw bytes"
    response, events, _ = run_agent(agui_app.url, prompt)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["x-request-id"] == events[0]["metadata"]["requestId"]
    check_run(events)
    assert events[-1]["type"] == "RUN_FINISHED" and events[-1]["usage"][0]["outputTokens"] > 0
    native = httpx.post(f"{agui_app.url}/api/chat", json={"user": prompt, "stream": False}, timeout=30).json()
    assert texts(events) == native["content"]


def test_e2e_tools_and_rag(agui_app):
    _, events, _ = run_agent(agui_app.url, "What is 12 * (3 + 4)?", chain="tools")
    check_run(events)
    result = next(e for e in events if e["type"] == "TOOL_CALL_RESULT")
    assert result["content"] == "84"
    assert "84" in texts(events)
    _, events, _ = run_agent(agui_app.url, "How do heartbeats keep streams open?", chain="rag")
    check_run(events)
    citations = next(e for e in events if e["type"] == "CUSTOM")
    assert citations["name"] == "citations" and citations["value"][0]["source"].endswith("heartbeats.txt")


def test_e2e_a_mid_stream_break_ends_the_run_with_run_error(agui_app):
    _, events, _ = run_agent(agui_app.url, "break [sim:drop-after=3]")
    check_run(events)
    assert texts(events), "text came before the break"
    assert events[-1]["type"] == "RUN_ERROR" and events[-1]["code"] == "upstream_interrupted"


def test_e2e_heartbeats_are_sse_comments_while_the_model_thinks(agui_app):
    _, events, pings = run_agent(agui_app.url, "slow [sim:slow-first-token=1500]")
    assert pings >= 2
    check_run(events)
    assert events[-1]["type"] == "RUN_FINISHED"


def test_e2e_errors_before_the_stream_have_their_status_and_a_run_error_body(agui_app):
    response, _, _ = run_agent(agui_app.url, "hi", chain="nope")
    assert response.status_code == 400
    assert response.headers["access-control-allow-origin"] == ORIGIN and response.headers["x-request-id"]
    body = response.json()
    assert (body["type"], body["code"], body["metadata"]["param"]) == (
        "RUN_ERROR",
        "unknown_chain",
        "forwardedProps.chain",
    )
    response, _, _ = run_agent(agui_app.url, "busy [sim:429]")
    assert response.status_code == 429 and float(response.headers["retry-after"]) > 0
    assert response.json()["code"] == "rate_limited" and response.json()["metadata"]["retryAfter"] > 0
    response = httpx.post(f"{agui_app.url}/api/ag-ui", content=b"{not json", timeout=30)
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"


def test_e2e_cors_preflight_follows_the_allow_list(agui_app):
    asked = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, accept",
    }
    granted = httpx.options(f"{agui_app.url}/api/ag-ui", headers={"Origin": ORIGIN, **asked}, timeout=30)
    assert granted.status_code == 204 and granted.headers["access-control-allow-origin"] == ORIGIN
    refused = httpx.options(
        f"{agui_app.url}/api/ag-ui", headers={"Origin": "https://evil.example", **asked}, timeout=30
    )
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
