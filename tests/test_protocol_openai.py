"""The OpenAI-compatible API (`/api/v1/chat/completions`, `/api/v1/models`) driven by the real openai
Python SDK, plus the raw bytes it reads and the browser preflight the openai SDKs cause.

The app is served in-process over a real socket on the prompt-fault simulator (`[sim:SPEC]` in the
prompt), so every failure class is one request away.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import orjson
import pytest

from aoai_simulator import SimulatorHandle
from chatstream.protocols.openai import ChunkEncoder, parse_request
from chatstream.schema import Limits
from funchost.testing import ThreadServer
from tests.support.inprocess import serve, settings_for

ORIGIN = "http://localhost:3000"
DEPLOYMENTS = ["gpt-4o-mini", "gpt-4o"]


def _settings(sim: SimulatorHandle, **extra: object) -> dict[str, object]:
    return {
        "AZURE_OPENAI_ENDPOINT": sim.url,
        "AZURE_OPENAI_API_KEY": "test-key-not-secret",
        "AZURE_OPENAI_DEPLOYMENT": "gpt-4o-mini",
        "CHAT_DEPLOYMENTS": "gpt-4o",
        "CHAT_UPSTREAM_MAX_RETRIES": "0",
        "CHAT_CORS_ORIGINS": ORIGIN,
        # Generous: a busy machine must not turn a pre-stream error into an in-stream one.
        "CHAT_FIRST_EVENT_WAIT_SECONDS": "5",
        **extra,
    }


@pytest.fixture(scope="module")
def app(fault_simulator: SimulatorHandle) -> Iterator[ThreadServer]:
    with serve(settings_for(**_settings(fault_simulator))) as server:
        yield server


@pytest.fixture(scope="module")
def beating_app(fault_simulator: SimulatorHandle) -> Iterator[ThreadServer]:
    """Headers after 0.3 s, then a heartbeat every 0.2 s while the model is silent."""
    settings = _settings(fault_simulator, CHAT_FIRST_EVENT_WAIT_SECONDS="0.3", CHAT_HEARTBEAT_SECONDS="0.2")
    with serve(settings_for(**settings)) as server:
        yield server


@pytest.fixture
def sim(fault_simulator: SimulatorHandle) -> SimulatorHandle:
    fault_simulator.wait_idle(10)
    fault_simulator.reset()
    return fault_simulator


def client(app: ThreadServer, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app.url}/api/v1", api_key="x", timeout=60, **options)  # type: ignore[arg-type]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def raw_stream(app: ThreadServer, body: dict[str, object]) -> tuple[httpx.Response, list[str]]:
    """The SSE blocks of a streamed answer, as the bytes came (framing checked)."""
    response = httpx.post(f"{app.url}/api/v1/chat/completions", json=body, timeout=60)
    text = response.read().decode()
    assert text.endswith("\n\n"), text[-200:]
    return response, text.split("\n\n")[:-1]


def data_of(blocks: list[str]) -> list[dict]:
    return [orjson.loads(b.removeprefix("data: ")) for b in blocks if b.startswith("data: {")]


# --- streamed and whole answers ------------------------------------------------------------------


def test_the_sdk_streams_chunks_with_the_deployment_as_model(app: ThreadServer, sim: SimulatorHandle) -> None:
    chunks = list(
        client(app).chat.completions.create(model="gpt-4o", messages=user("hello from python"), stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "hello from python" in text
    assert sum(1 for c in chunks if c.choices[0].delta.content) > 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert {c.model for c in chunks} == {"gpt-4o"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.usage is None for c in chunks)  # not asked for
    assert sim.stats()["requests"][0]["deployment"] == "gpt-4o"


def test_the_sdk_gets_a_whole_chat_completion(app: ThreadServer) -> None:
    completion = client(app).chat.completions.create(model="gpt-4o-mini", messages=user("one piece please"))
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and "one piece please" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_include_usage_adds_a_final_usage_chunk(app: ThreadServer) -> None:
    chunks = list(
        client(app).chat.completions.create(
            model="gpt-4o-mini",
            messages=user("count me"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])


def test_the_raw_bytes_are_openai_chunks_then_done(app: ThreadServer) -> None:
    response, blocks = raw_stream(
        app, {"model": "gpt-4o-mini", "messages": user("raw bytes"), "stream": True}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert blocks[-1] == "data: [DONE]"
    chunks = data_of(blocks)
    assert len(chunks) == len(blocks) - 1  # nothing but chunks (no heartbeat at this speed, no events)
    first, finish = chunks[0], chunks[-1]
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    assert set(first) == {"id", "object", "created", "model", "choices"}
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    for chunk in chunks[1:-1]:
        assert chunk["choices"][0]["delta"].keys() == {"content"}


def test_the_model_may_be_left_out_for_the_default_deployment(app: ThreadServer) -> None:
    response = httpx.post(
        f"{app.url}/api/v1/chat/completions", json={"messages": user("no model named")}, timeout=60
    )
    assert response.status_code == 200
    assert response.json()["model"] == "gpt-4o-mini"


# --- the chains: server-side work never reaches the client as tool calls ------------------------


def test_the_tools_chain_runs_its_tools_on_the_server_and_sends_text_only(
    app: ThreadServer, sim: SimulatorHandle
) -> None:
    body = {"model": "gpt-4o-mini", "messages": user("What is 6*7?"), "stream": True, "chain": "tools"}
    _, blocks = raw_stream(app, body)
    raw = "\n\n".join(blocks)
    assert "tool_calls" not in raw and "calculator" not in raw and "tool_result" not in raw
    chunks = data_of(blocks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "42" in text  # the simulator's answer quotes the tool's result
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The tool really ran between two model calls.
    assert any(m["role"] == "tool" for r in sim.stats()["requests"] for m in r["messages"])

    stream = client(app).chat.completions.create(
        model="gpt-4o-mini", messages=user("What is 6*7?"), stream=True, extra_body={"chain": "tools"}
    )
    sdk_chunks = list(stream)
    assert all(c.choices[0].delta.tool_calls is None for c in sdk_chunks if c.choices)
    assert "42" in "".join(c.choices[0].delta.content or "" for c in sdk_chunks if c.choices)

    whole = client(app).chat.completions.create(
        model="gpt-4o-mini", messages=user("What is 6*7?"), extra_body={"chain": "tools"}
    )
    assert whole.choices[0].message.tool_calls is None
    assert whole.choices[0].finish_reason == "stop" and "42" in (whole.choices[0].message.content or "")


def test_the_rag_chain_answers_with_text_only(app: ThreadServer) -> None:
    _, blocks = raw_stream(
        app,
        {"model": "gpt-4o-mini", "messages": user("How do retries work?"), "stream": True, "chain": "rag"},
    )
    assert blocks[-1] == "data: [DONE]"
    chunks = data_of(blocks)
    assert all(set(c) == {"id", "object", "created", "model", "choices"} for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).strip()


# --- errors: OpenAI's shape before the stream and in it -----------------------------------------


def test_a_mid_stream_failure_raises_api_error_in_the_sdk_after_some_text(app: ThreadServer) -> None:
    stream = client(app).chat.completions.create(
        model="gpt-4o-mini", messages=user("break please [sim:drop-after=3]"), stream=True
    )
    texts: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts)  # the start of the answer came first
    assert "broke mid-answer" in caught.value.message
    assert caught.value.code == "upstream_interrupted"


def test_a_mid_stream_failure_is_an_error_event_with_no_done(app: ThreadServer) -> None:
    _, blocks = raw_stream(
        app, {"model": "gpt-4o-mini", "messages": user("x [sim:drop-after=3]"), "stream": True}
    )
    assert "data: [DONE]" not in blocks
    last = orjson.loads(blocks[-1].removeprefix("data: "))
    assert last == {
        "error": {
            "message": "the connection to the model service broke mid-answer",
            "type": "server_error",
            "param": None,
            "code": "upstream_interrupted",
        }
    }


def test_a_filtered_answer_ends_with_finish_reason_content_filter_not_an_error(app: ThreadServer) -> None:
    chunks = list(
        client(app).chat.completions.create(
            model="gpt-4o-mini", messages=user("x [sim:content-filter-after=2]"), stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason == "content_filter"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"stop": ["\n"]}, "stop"),
        ({"seed": 1}, "seed"),
    ],
)
def test_options_the_app_would_not_honour_are_a_bad_request(
    app: ThreadServer, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(app).chat.completions.create(model="gpt-4o-mini", messages=user("hi"), **extra)  # type: ignore[call-overload]
    assert caught.value.status_code == 400
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"
    assert caught.value.message.startswith(f"Error code: 400 - {param}: not supported")


def test_harmless_options_are_accepted(app: ThreadServer) -> None:
    completion = client(app).chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "parts "}, {"type": "text", "text": "joined"}],
            },
        ],
        user="someone",
        metadata={"k": "v"},
        store=False,
        n=1,
        temperature=0.5,
        max_completion_tokens=50,
        parallel_tool_calls=True,
        stream_options=None,
    )
    assert "parts joined" in (completion.choices[0].message.content or "")


@pytest.mark.parametrize(
    ("messages", "param", "code"),
    [
        ([{"role": "tool", "tool_call_id": "c1", "content": "42"}], "messages[0].role", "unsupported_value"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
            "messages[0].content[0]",
            "unsupported_value",
        ),
        ([{"role": "assistant", "content": "hi"}], "messages", "invalid_request"),
        ([], "messages", "invalid_request"),
    ],
)
def test_messages_the_app_cannot_take_are_a_bad_request(
    app: ThreadServer, messages: list[dict], param: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(app).chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert (caught.value.code, caught.value.param) == (code, param)


def test_a_limit_error_names_the_field_the_caller_sent(app: ThreadServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(app).chat.completions.create(
            model="gpt-4o-mini", messages=user("hi"), max_completion_tokens=10**6
        )
    assert (caught.value.code, caught.value.param) == ("option_out_of_range", "max_completion_tokens")
    assert "max_completion_tokens may be at most" in caught.value.message


def test_an_unknown_field_is_refused_like_openai_does(app: ThreadServer) -> None:
    response = httpx.post(
        f"{app.url}/api/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": user("hi"), "temprature": 0.2},
        timeout=60,
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "temprature: unrecognized request argument (not a Chat Completions field)",
            "type": "invalid_request_error",
            "param": "temprature",
            "code": "invalid_request",
        }
    }


def test_an_unknown_model_is_openais_404_model_not_found(app: ThreadServer, sim: SimulatorHandle) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(app).chat.completions.create(model="gpt-5-nope", messages=user("hi"), stream=True)
    assert caught.value.code == "model_not_found"
    assert "gpt-5-nope" in caught.value.message
    assert sim.stats()["requests_total"] == 0


def test_invalid_json_is_a_400_in_openai_shape(app: ThreadServer) -> None:
    response = httpx.post(
        f"{app.url}/api/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_a_non_retryable_upstream_failure_is_not_retried_by_the_sdk(
    app: ThreadServer, sim: SimulatorHandle
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client(app, max_retries=2).chat.completions.create(model="gpt-4o-mini", messages=user("x [sim:401]"))
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth_failed"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert sim.stats()["requests_total"] == 1  # the SDK believed x-should-retry


def test_a_rate_limit_is_retried_by_the_sdk_after_retry_after(
    app: ThreadServer, sim: SimulatorHandle
) -> None:
    completion = client(app, max_retries=1).chat.completions.create(
        model="gpt-4o-mini", messages=user("busy [sim:429;times=1]"), stream=True
    )
    assert "busy" in "".join(c.choices[0].delta.content or "" for c in completion if c.choices)
    assert [r["status"] for r in sim.stats()["requests"]] == [429, 200]


def test_a_whole_answer_that_fails_midway_is_an_openai_error(app: ThreadServer) -> None:
    response = httpx.post(
        f"{app.url}/api/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": user("x [sim:drop-after=3]")},
        timeout=60,
    )
    assert response.status_code == 502
    assert response.headers["x-should-retry"] == "true"
    assert response.json()["error"]["type"] == "server_error"


# --- heartbeats ----------------------------------------------------------------------------------


def test_heartbeats_are_sse_comments_the_sdk_skips(beating_app: ThreadServer) -> None:
    body = {"model": "gpt-4o-mini", "messages": user("slow one [sim:slow-first-token=1500]"), "stream": True}
    _, blocks = raw_stream(beating_app, body)
    first_text = next(i for i, b in enumerate(blocks) if '"content":"' in b and '"content":""' not in b)
    assert ": ping" in blocks[:first_text]  # sent while the model was silent
    assert blocks[-1] == "data: [DONE]"
    chunks = list(
        client(beating_app).chat.completions.create(
            model="gpt-4o-mini", messages=user("slow too [sim:slow-first-token=1500]"), stream=True
        )
    )
    assert "slow too" in "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


# --- models --------------------------------------------------------------------------------------


def test_models_lists_the_allowed_deployments(app: ThreadServer) -> None:
    sdk = client(app)
    assert [m.id for m in sdk.models.list()] == DEPLOYMENTS
    assert sdk.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("davinci")
    assert caught.value.code == "model_not_found"
    raw = httpx.get(f"{app.url}/api/v1/models", timeout=30).json()
    assert raw["object"] == "list"
    assert raw["data"][0] == {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "system"}


# --- CORS: what the openai SDK sends from a browser --------------------------------------------

SDK_HEADERS = (
    "authorization, content-type, x-stainless-arch, x-stainless-lang, x-stainless-os, "
    "x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-timeout, x-stainless-helper-method, x-ms-useragent"
)


def preflight(app: ThreadServer, path: str, method: str, origin: str = ORIGIN) -> httpx.Response:
    return httpx.options(
        f"{app.url}{path}",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": SDK_HEADERS,
        },
        timeout=30,
    )


@pytest.mark.parametrize(
    ("path", "method"),
    [("/api/v1/chat/completions", "POST"), ("/api/v1/models", "GET"), ("/api/chat", "POST")],
)
def test_the_preflight_allows_the_sdk_headers_from_an_allowed_origin(
    app: ThreadServer, path: str, method: str
) -> None:
    response = preflight(app, path, method)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert method in response.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert allowed == {h.strip() for h in SDK_HEADERS.split(",")}


def test_the_preflight_still_refuses_other_origins_and_headers(app: ThreadServer) -> None:
    assert (
        preflight(app, "/api/v1/chat/completions", "POST", origin="https://evil.example").status_code == 403
    )
    assert preflight(app, "/api/v1/models", "POST").status_code == 403  # GET only
    response = httpx.options(
        f"{app.url}/api/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-custom-thing",
        },
        timeout=30,
    )
    assert response.status_code == 403


def test_answers_to_an_allowed_origin_carry_cors_headers(app: ThreadServer) -> None:
    response = httpx.post(
        f"{app.url}/api/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": user("cors"), "stream": True},
        headers={"Origin": ORIGIN},
        timeout=60,
    )
    assert response.headers["access-control-allow-origin"] == ORIGIN
    models = httpx.get(f"{app.url}/api/v1/models", headers={"Origin": ORIGIN}, timeout=30)
    assert models.headers["access-control-allow-origin"] == ORIGIN


# --- the mapping itself --------------------------------------------------------------------------


def test_a_delta_costs_one_string_encode_and_keeps_the_chunk_shape() -> None:
    encoder = ChunkEncoder(include_usage=False)
    encoder.encode({"type": "start", "id": "r1", "chain": "chat", "deployment": "d", "created": 7})
    out = encoder.encode({"type": "delta", "deployment": "d", "delta_content": 'say "hi"\n'})
    assert out.startswith(b"data: ") and out.endswith(b"\n\n")
    assert orjson.loads(out[6:]) == {
        "id": "chatcmpl-r1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "d",
        "choices": [{"index": 0, "delta": {"content": 'say "hi"\n'}, "finish_reason": None}],
    }
    for quiet in ("tool_call", "tool_result", "progress", "citations", "tool_call_delta"):
        assert encoder.encode({"type": quiet}) == b""
    end = {"type": "end", "finish_reason": "tool_calls", "usage": None}
    assert b'"finish_reason":"stop"' in encoder.encode(end)  # never tool_calls: none were sent


def test_parse_maps_roles_and_token_limits() -> None:
    body = orjson.dumps(
        {
            "model": "m",
            "messages": [{"role": "developer", "content": "sys"}, {"role": "user", "content": "q"}],
            "max_completion_tokens": 9,
            "stream": True,
            "stream_options": {"include_usage": True},
            "chain": "rag",
        }
    )
    request = parse_request(body, Limits(), ["m"])
    assert [(m.role, m.content) for m in request.messages] == [("system", "sys"), ("user", "q")]
    assert (request.max_tokens, request.deployments, request.chain) == (9, ["m"], "rag")
    assert request.stream and request.include_usage and request.user is None
