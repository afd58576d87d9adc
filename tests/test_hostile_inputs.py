"""Hostile numbers, sizes and callers: absurd Retry-After hints, tool arguments in thousands of
fragments, `Accept` q-values, and what a 503 `not_configured` may tell a caller. Real sockets from the
caller to the app to a misbehaving model server (tests/support/hostile.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.messages import ai as langchain_ai
from langchain_core.messages.tool import tool_call_chunk

from aoai_simulator.placement import azure_marker
from chains.example_tools import example_tools
from chains.registry import ChainContext
from chains.tools_agent import build_tool_agent
from chatstream import encoding
from chatstream.upstream import MAX_RETRY_AFTER_SECONDS, _retry_after, retry_after_header
from funchost.testing import free_port
from tests.conftest import REPO_ROOT, app_env, start_app
from tests.support.hostile import Conn, HostileUpstream, chunk, usage
from tests.support.inprocess import serve, settings_for
from tests.support.scripted import ScriptedChatModel
from tests.test_funchost import CUT_OFF_WITHIN, trickle
from tests.test_resilience import assert_no_leak, deltas, read_sse


def _post(url: str, prompt: str, headers: dict[str, str] | None = None, **body: object) -> httpx.Response:
    response = httpx.post(f"{url}/api/chat", json={"user": prompt, **body}, headers=headers, timeout=30)
    return response


# --- Retry-After: whatever the upstream says, the caller gets a finite, bounded, whole-second hint. ---

HOSTILE_HINTS = {
    "inf": {"Retry-After": "inf"},
    "1e999": {"Retry-After": "1e999"},
    "ms-1e400": {"retry-after-ms": "1e400"},
    "huge": {"Retry-After": "99999999999"},
    "nan": {"Retry-After": "NaN"},
    "negative": {"Retry-After": "-5"},
    "garbage": {"Retry-After": "soon-ish, maybe"},
    "ms-nan-then-huge": {"retry-after-ms": "nan", "Retry-After": "1e308"},
    "far-date": {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"},
}


def _assert_bounded_hint(response: httpx.Response) -> None:
    header = response.headers.get("retry-after")
    body = response.json()["error"]
    if header is None:  # no usable hint: neither header nor body carries one
        assert "retry_after" not in body
        return
    assert header.isdigit() and 1 <= int(header) <= MAX_RETRY_AFTER_SECONDS
    value = body["retry_after"]
    assert isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= MAX_RETRY_AFTER_SECONDS


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("hint", sorted(HOSTILE_HINTS))
def test_absurd_retry_after_is_clamped_never_a_500(
    hostile_app, hostile: HostileUpstream, status: int, hint: str
) -> None:
    async def refuse(conn: Conn) -> bool:
        body = {"error": {"code": "429" if status == 429 else "ServiceUnavailable", "message": "busy"}}
        await conn.json_response(status, body, HOSTILE_HINTS[hint])
        return False

    name = f"hint-{status}-{hint}"
    hostile.script(name, refuse)
    response = _post(hostile_app.url, f"[hostile:{name}]")
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == ("rate_limited" if status == 429 else "upstream_overloaded")
    _assert_bounded_hint(response)
    if hint in ("inf", "1e999", "ms-1e400", "huge", "ms-nan-then-huge", "far-date"):
        assert response.headers["retry-after"] == str(int(MAX_RETRY_AFTER_SECONDS))
    if hint in ("nan", "negative", "garbage"):
        assert "retry-after" not in response.headers
    assert_no_leak(response.text)


def test_a_sane_hint_passes_through_unchanged(hostile_app, hostile: HostileUpstream) -> None:
    async def refuse(conn: Conn) -> bool:
        body = {"error": {"code": "429", "message": "slow down"}}
        await conn.json_response(429, body, {"Retry-After": "7"})
        return False

    hostile.script("hint-sane", refuse)
    response = _post(hostile_app.url, "[hostile:hint-sane]")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["retry_after"] == 7


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "1e400"}, MAX_RETRY_AFTER_SECONDS),
        ({"retry-after": "-inf"}, None),
        ({"retry-after-ms": "x", "retry-after": "3"}, 3.0),
        ({"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}, 0.0),  # a date in the past: retry now
        ({"retry-after": "Mon, 99 Foo 99999 99:99:99 GMT"}, None),
        ({"retry-after": "9" * 5000}, MAX_RETRY_AFTER_SECONDS),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert _retry_after(headers) == expected


def test_the_retry_after_header_is_whole_seconds_between_1_and_the_cap() -> None:
    assert retry_after_header(None) == {}
    assert retry_after_header(0.0) == {"Retry-After": "1"}
    assert retry_after_header(2.1) == {"Retry-After": "3"}
    assert retry_after_header(math.inf) == {}
    assert retry_after_header(1e300) == {"Retry-After": str(int(MAX_RETRY_AFTER_SECONDS))}


# --- Tool-call arguments in thousands of tiny fragments: assembled exactly, in linear time. ---


def _fragments(text: str) -> list[str]:
    """1 to 4 characters each, in a fixed rotation."""
    parts, start, sizes = [], 0, itertools.cycle((1, 3, 2, 4, 1, 1, 4))
    while start < len(text):
        size = next(sizes)
        parts.append(text[start : start + size])
        start += size
    return parts


#: 24 KB of calculator arguments (far over the calculator's own limit, so the tool refuses them and the
#: model is told), with non-ASCII characters so a fragment boundary can fall anywhere.
HUGE_ARGS = json.dumps({"expression": "1+" * 12_000 + "1", "note": "é€𝄞"}, ensure_ascii=False)


def test_tool_call_arguments_in_thousands_of_fragments_are_assembled_exactly(
    hostile_app, hostile: HostileUpstream
) -> None:
    fragments = _fragments(HUGE_ARGS)
    assert len(fragments) > 10_000

    async def tools(conn: Conn) -> bool:
        messages = conn.request.json()["messages"]
        await conn.head()
        if any(m["role"] == "tool" for m in messages):  # round 2: the tools answered; the model answers
            await conn.event(chunk("", role="assistant"))
            await conn.event(chunk("The expression was too long."))
            await conn.event(chunk(finish_reason="stop"))
        else:
            calls = [
                {
                    "index": 0,
                    "id": "call_big",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": ""},
                },
                {
                    "index": 1,
                    "id": "call_bad",
                    "type": "function",
                    "function": {"name": "rm_rf", "arguments": "{}"},
                },
            ]
            await conn.event(chunk(role="assistant", tool_calls=calls))
            for fragment in fragments:
                await conn.event(chunk(tool_calls=[{"index": 0, "function": {"arguments": fragment}}]))
            await conn.event(chunk(finish_reason="tool_calls"))
        await conn.event(chunk(usage=usage(10, 5)))
        await conn.send(b"data: [DONE]\n\n")
        return False

    hostile.script("huge-tool-args", tools)
    with httpx.stream(
        "POST",
        f"{hostile_app.url}/api/chat",
        json={"user": "[hostile:huge-tool-args]", "chain": "tools"},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        events, _pings, done = read_sse(response)
    assert done
    calls = {e["id"]: e for e in events if e["type"] == "tool_call"}
    assert calls["call_big"]["name"] == "calculator"
    assert calls["call_big"]["arguments"] == HUGE_ARGS
    assert calls["call_bad"]["arguments"] == "{}"
    streamed = "".join(
        e["arguments_delta"] for e in events if e["type"] == "tool_call_delta" and e["index"] == 0
    )
    assert streamed == HUGE_ARGS
    errors = {e["id"]: e["message"] for e in events if e["type"] == "tool_error"}
    assert "longer than" in errors["call_big"]  # the calculator refused; it never evaluated anything
    assert errors["call_bad"] == "unknown tool 'rm_rf'"
    assert deltas(events) == "The expression was too long."
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] == "stop"
    # The second model call got the exact arguments back, and both tools' errors as tool messages.
    assert len(hostile.seen) == 2
    second = hostile.seen[1].json()["messages"]
    assistant = next(m for m in second if m["role"] == "assistant")
    sent = {c["id"]: c["function"]["arguments"] for c in assistant["tool_calls"]}
    assert json.loads(sent["call_big"]) == json.loads(HUGE_ARGS)
    results = {m["tool_call_id"]: m["content"] for m in second if m["role"] == "tool"}
    assert results["call_big"].startswith("Error:") and "rm_rf" in results["call_bad"]


def _tool_round(args: str) -> list[AIMessageChunk]:
    first = AIMessageChunk(
        content="", tool_call_chunks=[tool_call_chunk(name="calculator", args="", id="call_1", index=0)]
    )
    rest = [
        AIMessageChunk(content="", tool_call_chunks=[tool_call_chunk(name=None, args=part, id=None, index=0)])
        for part in _fragments(args)
    ]
    return [first, *rest, AIMessageChunk(content="", response_metadata={"finish_reason": "tool_calls"})]


def test_the_tools_chain_parses_streamed_arguments_once_not_once_per_fragment(monkeypatch) -> None:
    """Linear by structure, not by timing: LangChain parses a turn's tool-call arguments each time it
    builds a message from them. Summing the turn chunk by chunk (the old hand-written loop, before its
    fix) parsed every prefix of the arguments, quadratic in their length; the agent's model call parses
    each fragment once where the model built its chunk, and the whole arguments once at the turn's end."""
    args = json.dumps({"expression": "2*3", "pad": "x" * 16_000})
    model = ScriptedChatModel(rounds=[_tool_round(args), [AIMessageChunk(content="6")]])
    parsed: list[int] = []
    real = langchain_ai.parse_partial_json

    def counting(text: str, *a: Any, **k: Any) -> Any:
        parsed.append(len(text))
        return real(text, *a, **k)

    monkeypatch.setattr(langchain_ai, "parse_partial_json", counting)
    chain = build_tool_agent(ChainContext(model=model, system_prompt="s", chat_model=model), example_tools())

    async def run() -> list[Any]:
        return [item async for item in chain.astream({"history": [], "question": "q"})]

    items = asyncio.run(run())
    assert sum(parsed) <= 2 * len(args) + 1000, f"{len(parsed)} parses, {sum(parsed)} characters"
    results = [i for i in items if isinstance(i, dict) and i["type"] in ("tool_result", "tool_error")]
    assert results == [{"type": "tool_result", "id": "call_1", "name": "calculator", "content": "6"}]
    assert len(model.calls) == 2
    assistant = model.calls[1][-2]
    assert assistant.tool_calls[0]["args"] == json.loads(args)


# --- Small leaks: a 503 names the setting to fix, never its value. ---


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("AZURE_OPENAI_ENDPOINT", "ftp://secret-host.example/x"),
        ("AZURE_OPENAI_ENDPOINT", "secret-host.example"),
        ("AZURE_OPENAI_ENDPOINT", "http://[secret-host.example"),
        ("OPENAI_BASE_URL", "file:///srv/secret-host/v1"),
    ],
)
def test_not_configured_names_the_setting_but_never_its_value(setting: str, value: str, caplog) -> None:
    settings = settings_for(**{setting: value, "AZURE_OPENAI_API_KEY": "x", "OPENAI_MODEL": "m"})
    with caplog.at_level(logging.ERROR, logger="chatstream"), serve(settings) as app:
        for body in ({"user": "hi"}, {"user": "hi", "stream": False}):
            response = httpx.post(f"{app.url}/api/chat", json=body, timeout=30)
            assert response.status_code == 503
            error = response.json()["error"]
            assert error["code"] == "not_configured"
            assert setting in error["message"]
            assert "secret-host" not in response.text
    assert "secret-host" in caplog.text  # the operator's log keeps the detail


# --- The simulated deployment never stands in for the model inside Azure, unless forced. ---


@pytest.mark.parametrize("marker", ["WEBSITE_SITE_NAME", "WEBSITE_INSTANCE_ID"])
def test_the_simulator_refuses_to_answer_inside_azure(marker: str) -> None:
    app = start_app(**{marker: "chat-func-prod", "SIMULATOR_PORT": str(free_port())})
    try:
        response = httpx.post(f"{app.url}/api/chat", json={"user": "hi"}, timeout=30)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "not_configured" and "AZURE_OPENAI_ENDPOINT" in error["message"]
        assert "SIMULATOR_ALLOW_IN_AZURE" in app.output and marker in app.output
    finally:
        app.stop()


def test_the_simulator_answers_inside_azure_when_forced() -> None:
    app = start_app(
        WEBSITE_SITE_NAME="chat-func-demo",
        WEBSITE_INSTANCE_ID="0123abcd",
        SIMULATOR_ALLOW_IN_AZURE="true",
        SIMULATOR_PORT=str(free_port()),
        SIMULATOR_TTFT_MS="0",
        SIMULATOR_TOKEN_DELAY_MS="0",
    )
    try:
        with httpx.stream("POST", f"{app.url}/api/chat", json={"user": "hello"}, timeout=30) as response:
            assert response.status_code == 200
            events, _pings, done = read_sse(response)
        assert done and deltas(events).startswith('You asked: "hello"')
    finally:
        app.stop()


def test_the_standalone_simulator_refuses_to_start_inside_azure() -> None:
    env = {**app_env(), "WEBSITE_SITE_NAME": "chat-func-prod"}
    env.pop("SIMULATOR_ALLOW_IN_AZURE", None)
    refused = subprocess.run(
        [sys.executable, "-m", "aoai_simulator", "--port", "0"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "WEBSITE_SITE_NAME" in refused.stderr and "--allow-in-azure" in refused.stderr


def test_only_the_platform_variables_mean_azure() -> None:
    assert azure_marker({}) is None
    assert azure_marker({"CONTAINER_NAME": "dev-box", "FUNCTIONS_WORKER_RUNTIME": "python"}) is None
    assert azure_marker({"WEBSITE_SITE_NAME": "  "}) is None
    assert azure_marker({"WEBSITE_SITE_NAME": "chat-func"}) == "WEBSITE_SITE_NAME"
    assert azure_marker({"CONTAINER_APP_NAME": "chat"}) == "CONTAINER_APP_NAME"


# --- Accept honours q-values: a format given q=0 is never chosen. ---


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "text/event-stream"),
        ("", "text/event-stream"),
        ("*/*", "text/event-stream"),
        ("text/event-stream", "text/event-stream"),
        ("application/x-ndjson", "application/x-ndjson"),
        ("text/event-stream;q=0, application/x-ndjson", "application/x-ndjson"),
        ("application/x-ndjson;q=0.5, text/event-stream;q=0.9", "text/event-stream"),
        ("application/x-ndjson;q=0.9, text/event-stream;q=0.5", "application/x-ndjson"),
        ("application/x-ndjson, text/event-stream", "text/event-stream"),  # a tie: SSE
        ("application/x-ndjson, */*;q=0.1", "application/x-ndjson"),
        ("text/event-stream;q=0", "application/x-ndjson"),  # the only one not refused
        ("TEXT/Event-Stream ; Q=0 , Application/X-NDJSON", "application/x-ndjson"),
        ("text/*;q=0.2, application/*;q=0.3", "application/x-ndjson"),
        ("text/event-stream;q=0, */*", "application/x-ndjson"),  # the exact range beats */*
        ("application/json", "text/event-stream"),  # neither mentioned: the default, as before
        ("text/event-stream;charset=utf-8", "text/event-stream"),
        ("text/event-stream;q=2, application/x-ndjson;q=0.9", "text/event-stream"),  # q clamped to 1
        (";;;, ,/,*/, garbage, q=0, text/event-stream;q=abc", "text/event-stream"),  # junk is skipped
        ("application/x-ndjson;q=nan, text/event-stream;q=-1", "application/x-ndjson"),  # -1 is 0
        ("text/event-stream;q=0, application/x-ndjson;q=0", None),
        ("*/*;q=0", None),
        ("text/*;q=0, application/x-ndjson;q=0.000", None),
    ],
)
def test_accept_q_values(accept: str | None, expected: str | None) -> None:
    chosen = encoding.choose(accept)
    assert (chosen.media_type if chosen else None) == expected


def test_choosing_is_bounded_for_a_huge_accept_header() -> None:
    accept = ", ".join(["application/json;q=0.1"] * 100_000 + ["application/x-ndjson"])
    assert encoding.choose(accept) is encoding.SSE  # only the first ranges count


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("text/event-stream;q=0, application/x-ndjson", "application/x-ndjson"),
        ("application/x-ndjson;q=0.5, text/event-stream;q=0.9", "text/event-stream"),
    ],
)
def test_accept_q_values_end_to_end(app, accept: str, media_type: str) -> None:
    with httpx.stream(
        "POST", f"{app.url}/api/chat", json={"user": "hi"}, headers={"Accept": accept}, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        text = response.read().decode()
    if media_type == "application/x-ndjson":
        events = [json.loads(line) for line in text.splitlines()]
        assert events[0]["type"] == "start" and events[-1]["type"] == "end"
    else:
        assert text.startswith("data: {") and text.endswith("data: [DONE]\n\n")


def test_an_accept_that_refuses_both_stream_formats_is_406_before_the_model_is_called(
    app, paced_simulator
) -> None:
    accept = {"Accept": "text/event-stream;q=0, application/x-ndjson;q=0"}
    response = httpx.post(f"{app.url}/api/chat", json={"user": "hi"}, headers=accept, timeout=30)
    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"
    assert paced_simulator.stats()["requests_total"] == 0
    # One JSON answer does not stream, so the same header is fine with "stream": false.
    answer = httpx.post(
        f"{app.url}/api/chat", json={"user": "hi", "stream": False}, headers=accept, timeout=30
    )
    assert answer.status_code == 200 and answer.json()["content"]


# --- Slow callers: the local host cuts off a request that trickles in, as Azure's front end would. ---


@pytest.fixture
def strict_app(simulator):
    app = start_app(
        AZURE_OPENAI_ENDPOINT=simulator.url,
        AZURE_OPENAI_API_KEY="test-key",
        FUNCHOST_HEADER_TIMEOUT_SECONDS="1",
        FUNCHOST_BODY_TIMEOUT_SECONDS="1.5",
    )
    yield app
    app.stop()


def test_a_chat_request_that_trickles_in_gets_408_and_the_app_keeps_streaming_for_others(
    strict_app, simulator
) -> None:
    port = int(strict_app.url.rsplit(":", 1)[1])
    body = json.dumps({"user": "x" * 400}).encode()
    head = (
        f"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    results: dict[str, tuple[bytes, float]] = {}
    slow = [
        threading.Thread(target=lambda: results.update(body=trickle(port, head, body))),
        threading.Thread(target=lambda: results.update(headers=trickle(port, b"", head + body))),
    ]
    for thread in slow:
        thread.start()
    try:
        for _ in range(3):  # meanwhile everyone else is served, streams and all
            with httpx.stream(
                "POST", f"{strict_app.url}/api/chat", json={"user": "hi"}, timeout=30
            ) as response:
                assert response.status_code == 200
                events, _pings, done = read_sse(response)
            assert done and events[-1]["type"] == "end"
    finally:
        for thread in slow:
            thread.join(CUT_OFF_WITHIN + 5)
    for phase in ("body", "headers"):
        received, elapsed = results[phase]
        assert received.startswith(b"HTTP/1.1 408 "), received[:200]
        error = json.loads(received.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "request_timeout" and phase in error["message"]
        assert elapsed < CUT_OFF_WITHIN
    # No model call for the cut-off requests, and no stack trace for what is the caller's doing.
    assert simulator.stats()["requests_total"] == 3
    assert "Traceback" not in strict_app.output and "request read timeout" in strict_app.output
