"""The chat endpoint end to end: local host -> LangChain -> openai SDK -> simulator, over sockets."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from httpx_sse import connect_sse

from tests.conftest import REPO_ROOT, app_env


def sse_events(
    url: str, body: dict, **kwargs: object
) -> tuple[httpx.Response, list[dict], list[float], bool]:
    """POST and parse the stream with httpx-sse: events, their arrival times, whether [DONE] came."""
    events: list[dict] = []
    times: list[float] = []
    done = False
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "POST", f"{url}/api/chat", json=body, **kwargs) as source,
    ):
        response = source.response
        for sse in source.iter_sse():
            if sse.data == "[DONE]":
                done = True
                continue
            assert not done, "nothing may follow [DONE]"
            events.append(json.loads(sse.data))
            times.append(time.monotonic())
    return response, events, times, done


def deltas(events: list[dict]) -> str:
    return "".join(e["delta_content"] for e in events if e["type"] == "delta")


def test_sse_stream_has_start_deltas_end_and_done(app):
    response, events, _, done = sse_events(app.url, {"user": "hello"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in response.headers
    assert done
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-1] == "end"
    assert set(types[1:-1]) == {"delta"}
    start, end = events[0], events[-1]
    assert start["id"] == end["id"] == response.headers["x-request-id"]
    assert start["chain"] == "chat"
    for event in events[1:-1]:
        assert event["deployment"] == "gpt-4o-mini"
        assert isinstance(event["delta_content"], str) and event["delta_content"]
    assert end["finish_reason"] == "stop"
    usage = end["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # The simulator streams one chunk per token, so every token must have become one delta.
    assert usage["completion_tokens"] == len(events) - 2
    assert end["model"] == "gpt-4o-mini-2024-07-18"


def test_deltas_arrive_spread_over_time_not_in_one_burst(app):
    # 60 tokens, 20 ms apart upstream: about 1.2 s from first to last delta if nothing buffers (slow
    # enough that a busy machine's stall of a few hundred ms cannot bunch half of them).
    _, events, times, _ = sse_events(app.url, {"user": "[sim:token-delay=20] tell me something"})
    delta_times = [t for t, e in zip(times, events, strict=True) if e["type"] == "delta"]
    assert len(delta_times) >= 50
    assert delta_times[-1] - delta_times[0] > 0.6
    # Arrivals are spread: no single 200 ms window holds more than half of the deltas.
    worst = max(sum(1 for t in delta_times if s <= t < s + 0.2) for s in delta_times)
    assert worst < len(delta_times) / 2


def test_stream_false_answer_equals_concatenated_deltas(app):
    body = {"messages": [{"role": "user", "content": "What is a Function App?"}]}
    _, events, _, _ = sse_events(app.url, body)
    answer = httpx.post(f"{app.url}/api/chat", json={**body, "stream": False}, timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    data = answer.json()
    assert data["content"] == deltas(events)
    assert data["content"]
    assert data["deployment"] == "gpt-4o-mini"
    assert data["finish_reason"] == "stop"
    assert data["usage"] == events[-1]["usage"]
    assert data["id"] == answer.headers["x-request-id"]


def test_history_and_system_prompt_reach_the_model(app, paced_simulator):
    history = [
        {"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Ahoy, Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    _, events, _, _ = sse_events(app.url, {"messages": history})
    assert events[-1]["type"] == "end"
    sent = paced_simulator.last_request()["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "user", "assistant", "user"]
    assert sent[0]["content"].startswith("You are a helpful assistant")
    assert [m["content"] for m in sent[1:]] == [m["content"] for m in history]
    # The simulator's answer quotes the question it saw, so the user can see it arrived.
    assert "What is my name?" in deltas(events)


def test_braces_in_content_are_not_treated_as_template_variables(app, paced_simulator):
    _, events, _, _ = sse_events(app.url, {"user": "format {name} and {{x}} please"})
    assert events[-1]["finish_reason"] == "stop"
    assert paced_simulator.last_request()["messages"][-1]["content"] == "format {name} and {{x}} please"


def test_max_tokens_stops_with_finish_reason_length(app, paced_simulator):
    _, events, _, _ = sse_events(app.url, {"user": "a long story", "max_tokens": 7})
    end = events[-1]
    assert end["finish_reason"] == "length"
    assert end["usage"]["completion_tokens"] == 7
    assert sum(1 for e in events if e["type"] == "delta") == 7
    assert paced_simulator.last_request()["max_tokens"] == 7


def test_ndjson_carries_the_same_events(app):
    with httpx.stream(
        "POST",
        f"{app.url}/api/chat",
        json={"user": "hello"},
        headers={"Accept": "application/x-ndjson"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [line for line in response.iter_lines() if line]
    events = [json.loads(line) for line in lines]
    assert events[0]["type"] == "start" and events[-1]["type"] == "end"
    assert all(e["type"] == "delta" for e in events[1:-1])
    assert "[DONE]" not in "".join(lines)
    _, sse, _, _ = sse_events(app.url, {"user": "hello"})
    assert deltas(events) == deltas(sse)


BAD_REQUESTS = [
    (b"{", 400, "invalid_json", None),
    (b"", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_request", None),
    (b'"hello"', 400, "invalid_request", None),
    (b"{}", 400, "invalid_request", "messages"),
    (b'{"messages": []}', 400, "invalid_request", "messages"),
    (b'{"messages": "hi"}', 400, "invalid_request", "messages"),
    (b'{"messages": [{"role": "tool", "content": "x"}]}', 400, "invalid_request", "messages[0].role"),
    (b'{"messages": [{"role": "user"}]}', 400, "invalid_request", "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": ""}]}', 400, "invalid_request", "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": 5}]}', 400, "invalid_request", "messages[0].content"),
    (b'{"messages": [{"role": "assistant", "content": "hi"}]}', 400, "invalid_request", "messages"),
    (b'{"user": "a", "messages": [{"role": "user", "content": "b"}]}', 400, "invalid_request", "messages"),
    (b'{"user": ""}', 400, "invalid_request", "user"),
    (b'{"user": 42}', 400, "invalid_request", "user"),
    (b'{"user": "hi", "chain": "nope"}', 400, "unknown_chain", "chain"),
    (b'{"user": "hi", "stream": "yes"}', 400, "invalid_request", "stream"),
    (b'{"user": "hi", "max_tokens": 0}', 400, "option_out_of_range", "max_tokens"),
    (b'{"user": "hi", "max_tokens": 1000000}', 400, "option_out_of_range", "max_tokens"),
    (b'{"user": "hi", "max_tokens": "ten"}', 400, "invalid_request", "max_tokens"),
    (b'{"user": "hi", "temperature": 2.5}', 400, "option_out_of_range", "temperature"),
    (b'{"user": "hi", "temperature": -1}', 400, "option_out_of_range", "temperature"),
    (b'{"user": "hi", "max_token": 5}', 400, "invalid_request", "max_token"),
    (
        b'{"messages": [' + b",".join([b'{"role": "user", "content": "x"}'] * 51) + b"]}",
        400,
        "too_many_messages",
        "messages",
    ),
    (json.dumps({"user": "x" * 16_001}).encode(), 400, "content_too_long", "user"),
    (
        json.dumps({"messages": [{"role": "user", "content": "x" * 16_001}]}).encode(),
        400,
        "content_too_long",
        "messages[0].content",
    ),
    (b"\xff\xfe", 400, "invalid_json", None),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD_REQUESTS)
def test_bad_input_gets_a_json_4xx_naming_the_field(app, paced_simulator, body, status, code, param):
    response = httpx.post(f"{app.url}/api/chat", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error.get("param") == param
    assert error["message"]
    if param:
        assert param in error["message"]
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"]
    assert paced_simulator.stats()["requests_total"] == 0, "no model call for bad input"


def test_body_too_large_is_413_even_with_lying_content_length(app):
    big = json.dumps({"user": "x" * 70_000}).encode()
    response = httpx.post(f"{app.url}/api/chat", content=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"

    def chunks():
        yield b'{"user": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}'

    streamed = httpx.post(f"{app.url}/api/chat", content=chunks())  # chunked: no Content-Length at all
    assert streamed.status_code == 413


def test_server_keeps_serving_after_bad_input(app):
    for body, *_ in BAD_REQUESTS[:5]:
        httpx.post(f"{app.url}/api/chat", content=body)
    _, events, _, done = sse_events(app.url, {"user": "still there?"})
    assert done and events[-1]["finish_reason"] == "stop"


def test_wrong_method_is_404_like_the_functions_host(app):
    assert httpx.get(f"{app.url}/api/chat").status_code == 404


def test_function_registration_route_methods_and_auth_level():
    """Read through the app's own `get_functions()`, in a clean process so no model is contacted."""
    import subprocess
    import sys

    script = (
        "import json, function_app\n"
        "out = []\n"
        "for f in function_app.app.get_functions():\n"
        "    t = f.get_trigger()\n"
        "    out.append({'name': f.get_function_name(), 'route': t.route,\n"
        "                'methods': sorted(str(getattr(m, 'value', m)) for m in (t.methods or [])),\n"
        "                'auth': str(getattr(t.auth_level, 'value', t.auth_level)).lower()})\n"
        "print(json.dumps(out))\n"
    )
    env = app_env(AZURE_OPENAI_ENDPOINT="http://127.0.0.1:9", AZURE_OPENAI_API_KEY="unused")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    functions = {f["name"]: f for f in json.loads(result.stdout.strip().splitlines()[-1])}
    assert functions["chat"]["route"] == "chat"
    assert functions["chat"]["methods"] == ["OPTIONS", "POST"]
    assert functions["chat"]["auth"] == "function"
    assert (functions["ag_ui"]["route"], functions["ag_ui"]["methods"]) == ("ag-ui", ["OPTIONS", "POST"])
    assert functions["ag_ui"]["auth"] == "function", "every route that runs a model needs the key"
    # The chat page and the chain catalog hold no secrets; the page sends the key with each chat call.
    keyed = {"chat", "ag_ui"}
    assert {
        f["name"]: (f["route"], f["methods"], f["auth"]) for f in functions.values() if f["name"] not in keyed
    } == {
        "chains": ("chains", ["GET"], "anonymous"),
        "ui": ("ui", ["GET"], "anonymous"),
        "ui_asset": ("ui/{name}", ["GET"], "anonymous"),
        "openapi": ("openapi.json", ["GET"], "anonymous"),
        # The OpenAI-compatible API takes the same key as the chat route.
        "openai_chat_completions": ("v1/chat/completions", ["OPTIONS", "POST"], "function"),
        "openai_models": ("v1/models", ["GET", "OPTIONS"], "function"),
        "openai_model": ("v1/models/{model}", ["GET", "OPTIONS"], "function"),
        # Resume (also the AI SDK's resume probe) and stop, keyed like the chat route.
        "chat_resume": ("chat/{id}/stream", ["GET", "OPTIONS"], "function"),
        "chat_stop": ("chat/{id}/stop", ["OPTIONS", "POST"], "function"),
    }
