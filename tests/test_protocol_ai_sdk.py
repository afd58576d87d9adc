"""The Vercel AI SDK's UI message stream on `POST /api/chat`: which bodies it claims, how UI messages
become a `ChatRequest`, what each event becomes on the wire, and the whole thing over real sockets
(the app served in-process by funchost's ASGI adapter, the simulator with prompt faults).

The real `ai` package reads the same streams in tests/clients/ai-sdk.test.mjs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from aoai_simulator import SimulatorHandle
from chatstream import errors, events
from chatstream.errors import ChatError
from chatstream.protocols.ai_sdk import AI_SDK, UIMessageStreamEncoder, claims, parse_request
from chatstream.schema import Limits
from funchost.testing import ThreadServer
from tests.support.inprocess import serve, settings_for

ORIGIN = "http://localhost:3000"


def ui(role: str, *parts: dict[str, Any], id: str = "m") -> dict[str, Any]:
    return {"id": id, "role": role, "parts": list(parts)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "chat-1", "messages": list(messages), "trigger": "submit-message", **extra}


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- which bodies are AI SDK bodies ------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        body(ui("user", text("hi"))),
        {"messages": [ui("user", text("hi"))]},  # parts without trigger
        {"id": "x", "messages": [], "trigger": "regenerate-message"},  # trigger without parts
    ],
)
def test_ai_sdk_bodies_are_claimed(payload: dict[str, Any]) -> None:
    assert claims(dumps(payload))


@pytest.mark.parametrize(
    "raw",
    [
        dumps({"user": "hi"}),
        dumps({"messages": [{"role": "user", "content": "hi"}], "chain": "rag"}),
        dumps({"user": 'a prompt that says "parts" and "trigger"'}),  # the words, escaped, in a string
        dumps({"user": "x", "nested": {"trigger": 1}}),  # not at the top
        dumps(["trigger", "parts"]),
        b'{"trigger": ',  # not JSON: the native protocol answers invalid_json
        b"",
    ],
)
def test_native_and_broken_bodies_are_not_claimed(raw: bytes) -> None:
    assert not claims(raw)


# -- UI messages -> ChatRequest ---------------------------------------------------------------


def test_text_parts_are_joined_and_assistant_text_is_history() -> None:
    request = parse_request(
        dumps(
            body(
                ui("system", text("Answer in French.")),
                ui("user", text("first"), text("second")),
                ui("assistant", {"type": "step-start"}, text("Bonjour"), {"type": "reasoning", "text": "hm"}),
                ui("user", text("again")),
            )
        ),
        Limits(),
    )
    assert [(m.role, m.content) for m in request.conversation] == [
        ("system", "Answer in French."),
        ("user", "first\n\nsecond"),
        ("assistant", "Bonjour"),
        ("user", "again"),
    ]
    assert request.stream is True
    assert request.chain is None


def test_assistant_tool_parts_are_dropped_from_history() -> None:
    tool_only = ui(
        "assistant",
        {
            "type": "tool-calculator",
            "toolCallId": "c1",
            "state": "output-available",
            "input": {},
            "output": "84",
        },
        {"type": "source-document", "sourceId": "1", "mediaType": "text/plain", "title": "t"},
    )
    request = parse_request(dumps(body(ui("user", text("q")), tool_only, ui("user", text("q2")))), Limits())
    assert [m.role for m in request.conversation] == ["user", "user"]


def test_our_options_ride_along_as_extra_body_fields() -> None:
    request = parse_request(
        dumps(body(ui("user", text("q")), chain="tools", max_tokens=5, temperature=0.5, deployment="gpt-4o")),
        Limits(),
    )
    assert (request.chain, request.max_tokens, request.temperature, request.deployments) == (
        "tools",
        5,
        0.5,
        ["gpt-4o"],
    )


def _rejected(payload: Any, limits: Limits | None = None) -> ChatError:
    with pytest.raises(ChatError) as caught:
        parse_request(payload if isinstance(payload, bytes) else dumps(payload), limits or Limits())
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("payload", "param", "words"),
    [
        (
            body(ui("user", {"type": "file", "mediaType": "image/png", "url": "data:,"})),
            "messages[0].parts[0]",
            "file",
        ),
        (body(ui("user", text(""))), "messages[0].parts", "no text"),
        (body(ui("user", text("q")), deployments=["a", "b"]), "deployments", "send `deployment`"),
        (body(ui("user", text("q")), deployment=["a"]), "deployment", "string"),
        (body(ui("user", text("q")), chain=7), "chain", "string"),
        (body(ui("tool", text("q"))), "messages[0].role", "user"),
        (body(ui("user", {"text": "no type"})), "messages[0].parts[0].type", "required"),
        (body(ui("user", text("q")), ui("assistant", text("a"))), "messages", "last message"),
        ({**body(ui("user", text("q"))), "trigger": "resume-stream"}, "trigger", "submit-message"),
        ({"trigger": "submit-message", "messages": []}, "messages", "at least 1"),
        # a native body that happens to carry `trigger` is read as an AI SDK body (it was a 400 before too)
        (
            {"messages": [{"role": "user", "content": "q"}], "trigger": "submit-message"},
            "messages[0].parts",
            "",
        ),
    ],
)
def test_bad_bodies_are_400_naming_the_field(payload: dict[str, Any], param: str, words: str) -> None:
    error = _rejected(payload)
    assert error.param == param
    assert error.message.startswith(f"{param}: ")
    assert words in error.message


def test_unknown_fields_are_ignored() -> None:
    """A newer SDK's own additions must not become 400s (unlike the native request, which is ours)."""
    request = parse_request(dumps(body(ui("user", text("q")), chian="tools", future={"x": 1})), Limits())
    assert request.chain is None


def test_an_unknown_deployment_names_the_deployment_field() -> None:
    """The allow-list is the service's check, after parsing: the protocol's error shape renames it."""
    response = AI_SDK.error_response(errors.unknown_deployment(["nope"], ["gpt-4o-mini"]), {})
    error = json.loads(bytes(response.body))["error"]
    assert (response.status_code, error["code"], error["param"]) == (400, "unknown_deployment", "deployment")
    assert error["message"].startswith("deployment: 'nope' not allowed")


def test_limit_errors_name_the_ai_sdk_message_they_are_about() -> None:
    """messages[2] is the third UI message even though a tool-only assistant message was dropped."""
    payload = body(
        ui("user", text("short")),
        ui("assistant", {"type": "tool-x", "toolCallId": "c", "state": "input-available", "input": {}}),
        ui("user", text("x" * 50)),
    )
    error = _rejected(payload, Limits(max_content_chars=10))
    assert (error.code, error.param) == ("content_too_long", "messages[2].parts")
    assert error.message.startswith("messages[2].parts: content is 50 characters long")


def test_empty_and_broken_json_bodies() -> None:
    assert _rejected(b"").code == "invalid_json"
    assert _rejected(b'{"trigger": ').code == "invalid_json"


# -- events -> UI message chunks --------------------------------------------------------------


def chunks(encoded: bytes) -> list[Any]:
    """The `data:` payloads of SSE bytes, checking the framing."""
    assert encoded.endswith(b"\n\n")
    out: list[Any] = []
    for block in encoded.decode().split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def encode_all(*events: dict[str, Any]) -> list[Any]:
    encoder = UIMessageStreamEncoder()
    return chunks(b"".join(encoder.encode(e) for e in events) + encoder.close())


START = {"type": "start", "id": "req-1", "chain": "chat", "deployment": "d", "created": 1}
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
END = {
    "type": "end",
    "id": "req-1",
    "deployment": "d",
    "model": "m-1",
    "finish_reason": "stop",
    "usage": USAGE,
}


def delta(content: str) -> dict[str, Any]:
    """The runner's own builder, so the encoder is tested on exactly what the runner sends."""
    return events.delta("d", content)


def test_text_stream() -> None:
    assert encode_all(START, delta("Hel"), delta("lo"), delta(""), END) == [
        {"type": "start", "messageId": "req-1", "messageMetadata": {"chain": "chat", "deployment": "d"}},
        {"type": "start-step"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "Hel"},
        {"type": "text-delta", "id": "text-1", "delta": "lo"},
        {"type": "text-end", "id": "text-1"},
        {"type": "finish-step"},
        {
            "type": "finish",
            "finishReason": "stop",
            "messageMetadata": {"usage": USAGE, "model": "m-1", "deployment": "d", "finish_reason": "stop"},
        },
        "[DONE]",
    ]


def test_delta_bytes_escape_like_json() -> None:
    encoder = UIMessageStreamEncoder()
    encoder.encode(START)
    tricky = 'quote " backslash \\ newline \n\n data: [DONE] \u2028 é'
    assert chunks(encoder.encode(delta(tricky)))[-1] == {
        "type": "text-delta",
        "id": "text-1",
        "delta": tricky,
    }


def test_refusal_is_text_in_a_part_of_its_own() -> None:
    got = encode_all(START, delta("a"), {"type": "refusal", "deployment": "d", "refusal": "No."}, END)
    assert got[2:7] == [
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "a"},
        {"type": "text-end", "id": "text-1"},
        {"type": "text-start", "id": "text-2", "providerMetadata": {"chatstream": {"refusal": True}}},
        {"type": "text-delta", "id": "text-2", "delta": "No."},
    ]


def tool_delta(index: int, call_id: str | None, name: str | None, args: str) -> dict[str, Any]:
    return events.tool_call_delta("d", index, call_id, name, args)


def test_tool_calls_stream_by_id_with_parsed_input_then_output() -> None:
    got = encode_all(
        START,
        tool_delta(0, "call_a", "calculator", ""),
        tool_delta(1, "call_b", "utc_time", "{}"),
        tool_delta(0, None, None, '{"expression": '),
        tool_delta(0, None, None, '"1/0"}'),
        {
            "type": "tool_call",
            "deployment": "d",
            "index": 0,
            "id": "call_a",
            "name": "calculator",
            "arguments": '{"expression": "1/0"}',
        },
        {
            "type": "tool_call",
            "deployment": "d",
            "index": 1,
            "id": "call_b",
            "name": "utc_time",
            "arguments": "{}",
        },
        {"type": "tool_result", "deployment": "d", "id": "call_b", "name": "utc_time", "content": "12:00"},
        {
            "type": "tool_error",
            "deployment": "d",
            "id": "call_a",
            "name": "calculator",
            "message": "division by zero",
        },
        delta("Done"),
        END,
    )
    assert got[2:11] == [
        {"type": "tool-input-start", "toolCallId": "call_a", "toolName": "calculator"},
        {"type": "tool-input-start", "toolCallId": "call_b", "toolName": "utc_time"},
        {"type": "tool-input-delta", "toolCallId": "call_b", "inputTextDelta": "{}"},
        {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": '{"expression": '},
        {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": '"1/0"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call_a",
            "toolName": "calculator",
            "input": {"expression": "1/0"},
        },
        {"type": "tool-input-available", "toolCallId": "call_b", "toolName": "utc_time", "input": {}},
        {"type": "tool-output-available", "toolCallId": "call_b", "output": "12:00"},
        {"type": "tool-output-error", "toolCallId": "call_a", "errorText": "division by zero"},
    ]
    assert got[11] == {"type": "text-start", "id": "text-1"}


def test_tool_calls_without_ids_get_ids_of_ours_and_bad_json_stays_a_string() -> None:
    got = encode_all(
        START,
        tool_delta(0, None, "calculator", "{oops"),
        {
            "type": "tool_call",
            "deployment": "d",
            "index": 0,
            "id": None,
            "name": "calculator",
            "arguments": "{oops",
        },
        {"type": "tool_error", "deployment": "d", "id": None, "name": "calculator", "message": "not JSON"},
        # a second round reuses index 0: a new call
        tool_delta(0, None, "calculator", "{}"),
        END,
    )
    first, second = got[2]["toolCallId"], got[6]["toolCallId"]
    assert first and second and first != second
    assert got[4] == {
        "type": "tool-input-available",
        "toolCallId": first,
        "toolName": "calculator",
        "input": "{oops",
    }
    assert got[5] == {"type": "tool-output-error", "toolCallId": first, "errorText": "not JSON"}


def test_a_result_for_a_call_never_announced_announces_it() -> None:
    """The SDK throws on an output for an unknown toolCallId, which would end the whole stream."""
    got = encode_all(
        START, {"type": "tool_result", "deployment": "d", "id": "c9", "name": "x", "content": "ok"}
    )
    assert got[2:4] == [
        {"type": "tool-input-available", "toolCallId": "c9", "toolName": "x", "input": None},
        {"type": "tool-output-available", "toolCallId": "c9", "output": "ok"},
    ]


def test_progress_citations_and_other_chain_events() -> None:
    citation = {
        "number": 1,
        "id": "heartbeats",
        "title": "Heartbeats",
        "source": "docs/heartbeats.txt",
        "score": 9.5,
    }
    got = encode_all(
        START,
        {"type": "progress", "deployment": "d", "stage": "found", "message": "Found 1 passages", "count": 1},
        {
            "type": "citations",
            "deployment": "d",
            "citations": [citation, {**citation, "number": 2, "source": "x.md"}],
        },
        {"type": "thinking_budget", "deployment": "d", "left": 3},
        {"type": "done", "id": "req-1", "deployments": ["d"], "failed": []},
        END,
    )
    assert got[2:6] == [
        {
            "type": "data-progress",
            "id": "progress",
            "data": {"stage": "found", "message": "Found 1 passages", "count": 1},
        },
        {
            "type": "source-document",
            "sourceId": "1",
            "mediaType": "text/plain",
            "title": "Heartbeats",
            "providerMetadata": {"chatstream": {"number": 1, "id": "heartbeats", "score": 9.5}},
            "filename": "docs/heartbeats.txt",
        },
        {
            "type": "source-document",
            "sourceId": "2",
            "mediaType": "text/markdown",
            "title": "Heartbeats",
            "providerMetadata": {"chatstream": {"number": 2, "id": "heartbeats", "score": 9.5}},
            "filename": "x.md",
        },
        {"type": "data-thinking_budget", "data": {"deployment": "d", "left": 3}},
    ]
    assert got[6] == {"type": "finish-step"}


def test_error_closes_the_text_and_carries_its_code_as_metadata() -> None:
    error = {
        "type": "error",
        "deployment": "d",
        "code": "content_filter",
        "message": "the answer was stopped by the content filter",
        "retryable": False,
    }
    end = {**END, "finish_reason": "content_filter", "usage": None}
    got = encode_all(START, delta("a"), error, end)
    assert got[4:] == [
        {"type": "text-end", "id": "text-1"},
        {
            "type": "message-metadata",
            "messageMetadata": {
                "error": {
                    "code": "content_filter",
                    "message": "the answer was stopped by the content filter",
                    "retryable": False,
                }
            },
        },
        {"type": "error", "errorText": "the answer was stopped by the content filter"},
        {"type": "finish-step"},
        {
            "type": "finish",
            "finishReason": "content-filter",
            "messageMetadata": {
                "usage": None,
                "model": "m-1",
                "deployment": "d",
                "finish_reason": "content_filter",
            },
        },
        "[DONE]",
    ]


@pytest.mark.parametrize(
    ("native", "sdk"),
    [("length", "length"), ("tool_calls", "tool-calls"), ("error", "error"), ("function_call", "other")],
)
def test_finish_reasons(native: str, sdk: str) -> None:
    assert encode_all(START, {**END, "finish_reason": native})[-2]["finishReason"] == sdk


def test_no_finish_reason_leaves_it_out() -> None:
    assert "finishReason" not in encode_all(START, {**END, "finish_reason": None})[-2]


def test_close_ends_an_open_text_part() -> None:
    assert encode_all(START, delta("a"))[-2:] == [{"type": "text-end", "id": "text-1"}, "[DONE]"]


def test_encoder_wire_settings() -> None:
    encoder = AI_SDK.encoder(None, None)  # type: ignore[arg-type]
    assert encoder.media_type == "text/event-stream"
    assert encoder.heartbeat == b": ping\n\n"
    assert dict(encoder.headers) == {"x-vercel-ai-ui-message-stream": "v1"}


# -- end to end: real sockets, real SSE bytes -------------------------------------------------


@pytest.fixture(scope="module")
def app(fault_simulator: SimulatorHandle) -> Iterator[ThreadServer]:
    settings = settings_for(
        AZURE_OPENAI_ENDPOINT=fault_simulator.url,
        AZURE_OPENAI_API_KEY="test-key-not-secret",
        AZURE_OPENAI_DEPLOYMENT="gpt-4o-mini",
        CHAT_DEPLOYMENTS="gpt-4o",
        CHAT_UPSTREAM_MAX_RETRIES=0,
        CHAT_FIRST_EVENT_WAIT_SECONDS=0.3,
        CHAT_HEARTBEAT_SECONDS=0.2,
        CHAT_CORS_ORIGINS=ORIGIN,
    )
    with serve(settings) as server:
        yield server


def post(app: ThreadServer, payload: Any, **headers: str) -> httpx.Response:
    response = httpx.post(f"{app.url}/api/chat", json=payload, headers=headers, timeout=30)
    assert "Traceback" not in response.text
    return response


def wire(response: httpx.Response) -> tuple[list[Any], int]:
    """The stream's chunks (ending with "[DONE]") and how many `: ping` comments came."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    raw = response.text
    pings = raw.count(": ping\n\n")
    return chunks(raw.replace(": ping\n\n", "").encode()), pings


def test_e2e_text_stream(app: ThreadServer) -> None:
    response = post(app, body(ui("user", text("hello over the wire"))))
    got, _ = wire(response)
    assert got[0] == {
        "type": "start",
        "messageId": response.headers["x-request-id"],
        "messageMetadata": {"chain": "chat", "deployment": "gpt-4o-mini"},
    }
    assert got[-1] == "[DONE]"
    finish = got[-2]
    assert finish["type"] == "finish" and finish["finishReason"] == "stop"
    assert finish["messageMetadata"]["usage"]["total_tokens"] > 0
    kinds = [c["type"] for c in got[:-1]]
    answer = "".join(c["delta"] for c in got[:-1] if c["type"] == "text-delta")
    assert "hello over the wire" in answer
    assert kinds.count("text-start") == kinds.count("text-end") == 1
    assert (
        kinds.index("text-start")
        < kinds.index("text-delta")
        < kinds.index("text-end")
        < kinds.index("finish")
    )


def test_e2e_mid_stream_failure_is_an_error_part_and_the_stream_ends(app: ThreadServer) -> None:
    got, _ = wire(post(app, body(ui("user", text("break [sim:drop-after=3]")))))
    kinds = [c if isinstance(c, str) else c["type"] for c in got]
    assert kinds[-6:] == ["text-end", "message-metadata", "error", "finish-step", "finish", "[DONE]"]
    assert got[-4] == {"type": "error", "errorText": "the connection to the model service broke mid-answer"}
    assert got[-5]["messageMetadata"]["error"]["code"] == "upstream_interrupted"
    assert got[-2]["finishReason"] == "error"


def test_e2e_content_filter_is_an_error_part(app: ThreadServer) -> None:
    got, _ = wire(post(app, body(ui("user", text("filtered [sim:content-filter-after=3]")))))
    assert {"type": "error", "errorText": "the answer was stopped by the content filter"} in got
    assert got[-2]["finishReason"] == "content-filter"


def test_e2e_heartbeats_are_sse_comments(app: ThreadServer) -> None:
    """Slow by design (1.5 s): the simulator holds the first token that long, so heartbeats flow."""
    got, pings = wire(post(app, body(ui("user", text("slowly [sim:slow-first-token=1500]")))))
    assert pings >= 1
    assert got[-2]["finishReason"] == "stop"


def test_e2e_errors_before_the_stream_are_json_with_the_status(app: ThreadServer) -> None:
    bad = post(app, body(ui("user", {"type": "file", "mediaType": "image/png", "url": "data:,"})))
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "messages[0].parts[0]"
    assert bad.json()["error"]["code"] == "unsupported_value"
    assert bad.headers["x-request-id"]
    limited = post(app, body(ui("user", text("busy [sim:429]"))))
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers.get("retry-after")


def test_e2e_chain_option_and_cors(app: ThreadServer) -> None:
    response = post(app, body(ui("user", text("What is 12 * (3 + 4)?")), chain="tools"), origin=ORIGIN)
    assert response.headers["access-control-allow-origin"] == ORIGIN
    got, _ = wire(response)
    available = next(c for c in got if c["type"] == "tool-input-available")
    assert (available["toolName"], available["input"]) == ("calculator", {"expression": "12 * (3 + 4)"})
    output = next(c for c in got if c["type"] == "tool-output-available")
    assert (output["toolCallId"], output["output"]) == (available["toolCallId"], "84")


def test_e2e_one_deployment_by_name(app: ThreadServer) -> None:
    got, _ = wire(post(app, body(ui("user", text("hi")), deployment="gpt-4o")))
    assert got[0]["messageMetadata"]["deployment"] == "gpt-4o"
    assert got[-2]["messageMetadata"]["deployment"] == "gpt-4o"
    refused = post(app, body(ui("user", text("hi")), deployment="gpt-5"))
    assert refused.status_code == 400
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (
        "unknown_deployment",
        "deployment",
    )


def test_e2e_native_requests_are_unaffected(app: ThreadServer) -> None:
    """Same route, native bodies: native events and errors, no AI SDK header."""
    response = post(app, {"messages": [{"role": "user", "content": "hello native"}]})
    assert response.status_code == 200
    assert "x-vercel-ai-ui-message-stream" not in response.headers
    blocks = [b for b in response.text.split("\n\n") if b.startswith("data: ")]
    assert json.loads(blocks[0][6:])["type"] == "start"
    assert json.loads(blocks[-2][6:])["type"] == "end"
    ndjson = post(app, {"user": "hi"}, accept="application/x-ndjson")
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    one = post(app, {"user": "hi", "stream": False})
    assert "hi" in one.json()["content"]
    bad = post(app, {"user": "hi", "max_token": 3})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "max_token")


def test_e2e_resume_probe_is_204(app: ThreadServer) -> None:
    response = httpx.get(f"{app.url}/api/chat/chat-1/stream", headers={"origin": ORIGIN}, timeout=10)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["x-request-id"]
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_e2e_resume_probe_preflight_allows_get(app: ThreadServer) -> None:
    def preflight(origin: str, method: str) -> httpx.Response:
        headers = {
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "x-functions-key",
        }
        return httpx.options(f"{app.url}/api/chat/chat-1/stream", headers=headers, timeout=10)

    granted = preflight(ORIGIN, "GET")
    assert granted.status_code == 204
    assert granted.headers["access-control-allow-methods"] == "GET, OPTIONS"
    assert preflight("https://evil.example", "GET").status_code == 403
    assert preflight(ORIGIN, "DELETE").status_code == 403


def test_e2e_routes_do_not_collide(app: ThreadServer) -> None:
    """`chat` and `chat/{id}/stream` are different templates: each answers only its own methods."""
    assert httpx.post(f"{app.url}/api/chat/chat-1/stream", json={}, timeout=10).status_code in (404, 405)
    assert httpx.get(f"{app.url}/api/chat", timeout=10).status_code in (404, 405)
    assert httpx.get(f"{app.url}/api/chat/a/b/stream", timeout=10).status_code == 404
    payload = orjson.dumps(body(ui("user", text("still here"))))
    routed = httpx.post(f"{app.url}/api/chat", content=payload, timeout=30)
    assert routed.headers["x-vercel-ai-ui-message-stream"] == "v1"
