"""The simulated Azure OpenAI deployment, exercised over real sockets with the real SDKs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_openai import AzureChatOpenAI
from openai import AsyncAzureOpenAI, AsyncOpenAI

from aoai_simulator import FaultSpecError, SimulatorConfig, parse_fault, start_in_thread
from aoai_simulator.text import answer_tokens, count_tokens, prompt_tokens, tokenize
from tests.conftest import SHARED_FIXTURES

API_VERSION = "2024-10-21"
DEPLOYMENT = "gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "How do I stream tokens from Azure OpenAI to a browser?"},
]
FIXTURES = SHARED_FIXTURES
TEST_TIMEOUT_S = 20


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine with a hard upper bound so no test can hang."""
    return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT_S))


def azure_client(sim, **kwargs: Any) -> AsyncAzureOpenAI:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 10)
    return AsyncAzureOpenAI(azure_endpoint=sim.url, api_key="test-key", api_version=API_VERSION, **kwargs)


def chat_url(sim, deployment: str = DEPLOYMENT, api_version: str | None = API_VERSION) -> str:
    query = f"?api-version={api_version}" if api_version else ""
    return f"{sim.url}/openai/deployments/{deployment}/chat/completions{query}"


def sse_events(raw: str) -> list[Any]:
    """Parse an SSE body into JSON objects, with the literal "[DONE]" kept as a string."""
    events: list[Any] = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def post_stream(
    sim, body: dict[str, Any], headers: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    all_headers = {"api-key": "k", **(headers or {})}
    return httpx.post(chat_url(sim, **kw), json={"stream": True, **body}, headers=all_headers, timeout=10)


async def collect(stream: Any) -> tuple[str, list[Any]]:
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# -- protocol and content -------------------------------------------------------------------------


def test_sdk_stream_matches_non_streaming_answer_and_usage(simulator):
    async def main() -> tuple[str, list[Any], Any]:
        async with azure_client(simulator) as client:
            stream = await client.chat.completions.create(
                model=DEPLOYMENT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            text, chunks = await collect(stream)
            whole = await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)
            return text, chunks, whole

    text, chunks, whole = run(main())
    assert text == whole.choices[0].message.content
    assert text.startswith('You asked: "How do I stream tokens from Azure OpenAI..." (2 messages received).')
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"] and whole.choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == len(content_chunks) == count_tokens(text) == 60
    assert usage.prompt_tokens == prompt_tokens(MESSAGES)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert whole.usage is not None and whole.usage.model_dump() == usage.model_dump()
    assert chunks[-1].model == "gpt-4o-mini-2024-07-18" != DEPLOYMENT

    record = simulator.requests()[0]
    assert record["deployment"] == DEPLOYMENT and record["stream"] and record["include_usage"]
    assert record["messages"] == MESSAGES and record["chunks_sent"] == 60
    assert record["outcome"] == "completed" and not record["closed_early"]
    assert simulator.stats()["open_streams"] == 0


def test_raw_stream_shape_headers_and_no_usage_without_include_usage(simulator):
    response = post_stream(simulator, {"messages": MESSAGES}, {"x-sim-tokens": "5"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    for name in (
        "apim-request-id",
        "x-request-id",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
    ):
        assert response.headers[name]
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    first, role, *content, last, _done = events
    assert first["choices"] == [] and first["prompt_filter_results"][0]["content_filter_results"]
    assert role["choices"][0]["delta"] == {"content": "", "refusal": None, "role": "assistant"}
    assert len(content) == 5
    assert all(c["choices"][0]["content_filter_results"]["hate"]["filtered"] is False for c in content)
    assert last["choices"][0]["finish_reason"] == "stop" and last["choices"][0]["delta"] == {}
    assert all("usage" not in e for e in events[:-1])
    assert len({e["id"] for e in events[1:-1]}) == 1 and events[1]["id"].startswith("chatcmpl-")
    assert all(e["object"] == "chat.completion.chunk" and e["system_fingerprint"] for e in events[1:-1])


def test_max_tokens_and_max_completion_tokens_stop_with_length(simulator):
    async def main() -> list[tuple[str, list[Any]]]:
        async with azure_client(simulator) as client:
            results = []
            for cap in ({"max_tokens": 7}, {"max_completion_tokens": 9}):
                stream = await client.chat.completions.create(
                    model=DEPLOYMENT,
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                    **cap,
                )
                results.append(await collect(stream))
            return results

    (text7, chunks7), (text9, chunks9) = run(main())
    for text, chunks, cap in ((text7, chunks7, 7), (text9, chunks9, 9)):
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].usage.completion_tokens == cap == count_tokens(text)
    assert text9.startswith(text7)
    assert simulator.requests()[0]["max_tokens"] == 7


def test_answers_are_deterministic_and_depend_on_the_question(simulator):
    def answer(messages: list[dict[str, str]]) -> str:
        response = httpx.post(
            chat_url(simulator), json={"messages": messages}, headers={"api-key": "k"}, timeout=10
        )
        return response.json()["choices"][0]["message"]["content"]

    other = [{"role": "user", "content": "What is the weather like?"}]
    assert answer(MESSAGES) == answer(MESSAGES)
    assert answer(other) != answer(MESSAGES)
    assert answer(other).startswith('You asked: "What is the weather like?" (1 message received).')


def test_x_sim_tokens_gives_long_streams(simulator):
    response = post_stream(simulator, {"messages": MESSAGES}, {"x-sim-tokens": "3000"})
    content = [e for e in sse_events(response.text)[2:-2]]
    assert len(content) == 3000
    assert simulator.last_request()["chunks_sent"] == 3000


def test_langchain_astream_with_stream_usage(simulator):
    model = AzureChatOpenAI(
        azure_endpoint=simulator.url,
        azure_deployment=DEPLOYMENT,
        api_version=API_VERSION,
        api_key="test-key",
        stream_usage=True,
        max_retries=0,
        timeout=10,
    )

    async def main() -> tuple[Any, Any]:
        total = None
        async for chunk in model.astream("Tell me about SSE"):
            total = chunk if total is None else total + chunk
        return total, await model.ainvoke("Tell me about SSE")

    streamed, invoked = run(main())
    assert streamed.content == invoked.content
    assert streamed.usage_metadata["output_tokens"] == count_tokens(streamed.content) == 60
    assert streamed.usage_metadata["input_tokens"] == prompt_tokens(
        [{"role": "user", "content": "Tell me about SSE"}]
    )
    assert streamed.response_metadata.get("finish_reason") == "stop"
    assert simulator.requests()[0]["include_usage"] is True


def test_openai_compatible_v1_path(simulator):
    async def main() -> str:
        async with AsyncOpenAI(
            base_url=simulator.openai_base_url, api_key="sk-test", max_retries=0
        ) as client:
            stream = await client.chat.completions.create(model="any-model", messages=MESSAGES, stream=True)
            text, _ = await collect(stream)
            return text

    assert run(main()).startswith('You asked: "How do I stream')
    assert simulator.last_request()["deployment"] == "any-model"


# -- errors ---------------------------------------------------------------------------------------


def test_auth_errors_and_bearer_tokens(simulator):
    body = {"messages": MESSAGES}
    missing = httpx.post(chat_url(simulator), json=body, timeout=10)
    assert missing.status_code == 401
    assert missing.json() == {"error": {"code": "401", "message": missing.json()["error"]["message"]}}
    assert missing.json()["error"]["message"].startswith("Access denied")
    bearer = httpx.post(chat_url(simulator), json=body, headers={"Authorization": "Bearer t"}, timeout=10)
    assert bearer.status_code == 200
    assert httpx.post(chat_url(simulator), json=body, headers={"api-key": ""}, timeout=10).status_code == 401


def test_restricted_keys_and_deployments():
    config = SimulatorConfig(
        ttft_ms=0, token_delay_ms=0, api_keys=frozenset({"good"}), deployments=frozenset({"d1"})
    )
    with start_in_thread(config) as sim:
        body = {"messages": MESSAGES}
        assert httpx.post(chat_url(sim, "d1"), json=body, headers={"api-key": "bad"}).status_code == 401
        assert httpx.post(chat_url(sim, "d1"), json=body, headers={"api-key": "good"}).status_code == 200
        missing = httpx.post(chat_url(sim, "nope"), json=body, headers={"api-key": "good"})
        assert missing.status_code == 404
        if (FIXTURES / "errors").is_dir():
            expected = json.loads(
                (FIXTURES / "errors" / "azure_error_404_DeploymentNotFound_openllmetry.json").read_text()
            )
            assert missing.json() == expected
        else:
            assert missing.json()["error"]["code"] == "DeploymentNotFound"

        async def sdk() -> None:
            async with AsyncAzureOpenAI(
                azure_endpoint=sim.url, api_key="good", api_version=API_VERSION, max_retries=0
            ) as client:
                await client.chat.completions.create(model="nope", messages=MESSAGES)

        with pytest.raises(openai.NotFoundError) as info:
            run(sdk())
        assert info.value.code == "DeploymentNotFound"


@pytest.mark.parametrize(
    ("api_version", "body", "status", "fragment"),
    [
        (None, {"messages": MESSAGES}, 400, "api-version"),
        ("1999-01-01", {"messages": MESSAGES}, 400, "API version not supported"),
        ("nonsense", {"messages": MESSAGES}, 400, "API version not supported"),
        (API_VERSION, {"messages": []}, 400, "'messages' is a required property"),
        (API_VERSION, {"messages": [{"content": "no role"}]}, 400, "messages[0]"),
        (API_VERSION, {"messages": MESSAGES, "max_tokens": 0}, 400, "max_tokens"),
        (
            API_VERSION,
            {"messages": MESSAGES, "stream_options": {"include_usage": True}},
            400,
            "stream_options",
        ),
    ],
)
def test_bad_requests_get_azure_shaped_400s(simulator, api_version, body, status, fragment):
    response = httpx.post(
        chat_url(simulator, api_version=api_version), json=body, headers={"api-key": "k"}, timeout=10
    )
    assert response.status_code == status
    assert fragment in json.dumps(response.json()["error"])


def test_unparseable_body_and_bad_fault_spec(simulator):
    broken = httpx.post(chat_url(simulator), content=b"{not json", headers={"api-key": "k"}, timeout=10)
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    bad_spec = httpx.post(
        chat_url(simulator), json={"messages": MESSAGES}, headers={"api-key": "k", "x-sim-fault": "explode"}
    )
    assert bad_spec.status_code == 400 and "x-sim-fault" in bad_spec.json()["error"]["message"]


# -- faults ---------------------------------------------------------------------------------------


def test_fault_grammar():
    plan = parse_fault("429:retry-after=2;times=3")
    assert (plan.status, plan.retry_after_s, plan.times) == (429, 2.0, 3)
    combo = parse_fault("slow-first-token=5000; drop-after=5")
    assert combo.slow_first_token_ms == 5000 and combo.drop_after == 5 and not combo.before_headers
    assert parse_fault("timeout").hold_default and parse_fault("timeout=1.5").timeout_s == 1.5
    assert parse_fault("content-filter-after=4").content_filter_after == 4
    assert parse_fault("").before_headers is False
    for bad in ("explode", "200", "drop-after=x", "429:foo=1", "stall-after=-1"):
        with pytest.raises(FaultSpecError):
            parse_fault(bad)


def test_429_fault_carries_retry_headers_and_azure_body(simulator):
    response = httpx.post(
        chat_url(simulator),
        json={"messages": MESSAGES, "stream": True},
        headers={"api-key": "k", "x-sim-fault": "429:retry-after=2"},
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2" and response.headers["retry-after-ms"] == "2000"
    assert response.headers["x-ratelimit-remaining-requests"]
    error = response.json()["error"]
    assert error["code"] == "429" and "Please retry after 2 seconds" in error["message"]

    async def sdk() -> None:
        async with azure_client(simulator, default_headers={"x-sim-fault": "429"}) as client:
            await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)

    with pytest.raises(openai.RateLimitError):
        run(sdk())


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_faults(simulator, status):
    response = httpx.post(
        chat_url(simulator), json={"messages": MESSAGES}, headers={"api-key": "k", "x-sim-fault": str(status)}
    )
    assert response.status_code == status and "error" in response.json()
    assert simulator.last_request()["status"] == status


def test_times_fault_lets_sdk_retry_succeed(simulator):
    async def main() -> str:
        headers = {"x-sim-fault": "503:retry-after=0.05;times=2"}
        async with azure_client(simulator, max_retries=2, default_headers=headers) as client:
            stream = await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True)
            text, _ = await collect(stream)
            return text

    assert run(main()).startswith("You asked")
    records = simulator.requests()
    assert [(r["attempt"], r["status"]) for r in records] == [(1, 503), (2, 503), (3, 200)]
    # An explicit key makes the counter independent of the body.
    for expected in (503, 200, 200):
        response = httpx.post(
            chat_url(simulator),
            json={"messages": [{"role": "user", "content": str(time.time())}]},
            headers={"api-key": "k", "x-sim-fault": "503;times=1", "x-sim-fault-key": "job-1"},
        )
        assert response.status_code == expected


def test_deployment_bound_faults():
    config = SimulatorConfig(ttft_ms=0, token_delay_ms=0, deployment_faults={"flaky": "500;times=1"})
    with start_in_thread(config) as sim:
        body = {"messages": MESSAGES}
        assert httpx.post(chat_url(sim, "fault-429"), json=body, headers={"api-key": "k"}).status_code == 429
        assert httpx.post(chat_url(sim, "flaky"), json=body, headers={"api-key": "k"}).status_code == 500
        assert httpx.post(chat_url(sim, "flaky"), json=body, headers={"api-key": "k"}).status_code == 200


def test_timeout_fault_is_seen_as_client_timeout(simulator):
    async def main() -> None:
        async with azure_client(simulator, timeout=0.5, default_headers={"x-sim-fault": "timeout"}) as client:
            await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True)

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        run(main())
    assert time.monotonic() - started < 5
    assert simulator.wait_until(lambda s: s["requests"][-1]["outcome"] == "timeout", 5)
    assert simulator.wait_until(lambda s: s["requests"][-1]["client_disconnected"], 5)


def test_reset_fault_closes_connection_before_response(simulator):
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(
            chat_url(simulator), json={"messages": MESSAGES}, headers={"api-key": "k", "x-sim-fault": "reset"}
        )

    async def sdk() -> None:
        async with azure_client(simulator, default_headers={"x-sim-fault": "reset"}) as client:
            await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES)

    with pytest.raises(openai.APIConnectionError):
        run(sdk())
    assert simulator.last_request()["outcome"] == "reset"


def test_slow_first_token_and_ttft_header(simulator):
    # A 1 s first token, so "the first event comes at once" has room for a busy machine's delays.
    for headers in ({"x-sim-fault": "slow-first-token=1000"}, {"x-sim-ttft-ms": "1000"}):
        started = time.monotonic()
        first_event_at = first_token_at = None
        with httpx.stream(
            "POST",
            chat_url(simulator),
            json={"messages": MESSAGES, "stream": True},
            headers={"api-key": "k", "x-sim-tokens": "3", **headers},
            timeout=10,
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: {") and first_event_at is None:
                    first_event_at = time.monotonic() - started
                if '"content":"' in line and '"role"' not in line and first_token_at is None:
                    first_token_at = time.monotonic() - started
        assert first_event_at is not None and first_event_at < 0.6  # headers + prompt filter chunk at once
        assert first_token_at is not None and first_token_at >= 0.99


def test_token_delay_paces_the_stream(simulator):
    started = time.monotonic()
    post_stream(simulator, {"messages": MESSAGES}, {"x-sim-tokens": "10", "x-sim-token-delay-ms": "50"})
    assert 0.44 <= time.monotonic() - started < 3


def test_stall_after_keeps_connection_open(simulator):
    content_seen = 0
    with pytest.raises(httpx.ReadTimeout):
        with httpx.stream(
            "POST",
            chat_url(simulator),
            json={"messages": MESSAGES, "stream": True},
            headers={"api-key": "k", "x-sim-fault": "stall-after=3"},
            timeout=httpx.Timeout(10, read=0.5),
        ) as response:
            for line in response.iter_lines():
                if '"delta":{"content":"' in line and '"role"' not in line:
                    content_seen += 1
    assert content_seen == 3
    assert simulator.wait_idle(5)
    record = simulator.last_request()
    assert record["outcome"] == "stalled" and record["chunks_sent"] == 3 and record["closed_early"]


def test_drop_after_breaks_the_stream_mid_body(simulator):
    async def main() -> int:
        seen = 0
        async with azure_client(simulator, default_headers={"x-sim-fault": "drop-after=4"}) as client:
            stream = await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True)
            with pytest.raises(openai.APIConnectionError):
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        seen += 1
        return seen

    assert run(main()) == 4
    assert simulator.wait_idle(5)
    record = simulator.last_request()
    assert record["outcome"] == "dropped" and record["chunks_sent"] == 4


def test_content_filter_prompt_fault(simulator):
    async def main() -> None:
        headers = {"x-sim-fault": "content-filter-prompt"}
        async with azure_client(simulator, default_headers=headers) as client:
            await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True)

    with pytest.raises(openai.BadRequestError) as info:
        run(main())
    assert info.value.code == "content_filter"
    assert info.value.body["innererror"]["code"] == "ResponsibleAIPolicyViolation"


def test_content_filter_after_ends_stream_with_content_filter(simulator):
    async def main() -> tuple[str, list[Any]]:
        async with azure_client(
            simulator, default_headers={"x-sim-fault": "content-filter-after=4"}
        ) as client:
            stream = await client.chat.completions.create(
                model=DEPLOYMENT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            return await collect(stream)

    text, chunks = run(main())
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "content_filter"
    assert finals[0].choices[0].model_extra["content_filter_results"]["protected_material_text"]["filtered"]
    assert count_tokens(text) == 4 == chunks[-1].usage.completion_tokens


def test_rate_limits_from_config():
    with start_in_thread(SimulatorConfig(ttft_ms=0, token_delay_ms=0, requests_per_minute=2)) as sim:
        body = {"messages": MESSAGES}
        first = httpx.post(chat_url(sim), json=body, headers={"api-key": "k"})
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert httpx.post(chat_url(sim), json=body, headers={"api-key": "k"}).status_code == 200
        limited = httpx.post(chat_url(sim), json=body, headers={"api-key": "k"})
        assert limited.status_code == 429
        assert limited.headers["x-ratelimit-remaining-requests"] == "0"
        assert 0 < float(limited.headers["retry-after"]) <= 60 and limited.headers["retry-after-ms"]
        assert "call rate limit" in limited.json()["error"]["message"]
    with start_in_thread(SimulatorConfig(ttft_ms=0, token_delay_ms=0, tokens_per_minute=100)) as sim:
        body = {"messages": MESSAGES, "max_tokens": 60}
        assert httpx.post(chat_url(sim), json=body, headers={"api-key": "k"}).status_code == 200
        limited = httpx.post(chat_url(sim), json=body, headers={"api-key": "k"})
        assert limited.status_code == 429 and "token rate limit" in limited.json()["error"]["message"]


# -- observability --------------------------------------------------------------------------------


def test_client_disconnect_is_recorded_with_chunk_count(simulator):
    async def main() -> None:
        headers = {"x-sim-token-delay-ms": "20", "x-sim-tokens": "500"}
        async with azure_client(simulator, default_headers=headers) as client:
            stream = await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True)
            seen = 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    seen += 1
                    if seen == 5:
                        break
            assert simulator.open_streams == 1
            await stream.close()

    run(main())
    assert simulator.wait_idle(5)
    record = simulator.last_request()
    assert record["outcome"] == "client_closed" and record["closed_early"] and record["client_disconnected"]
    assert 5 <= record["chunks_sent"] <= 7
    stats = simulator.stats()
    assert stats["streams_closed_early"] == 1 and stats["open_streams"] == 0


def test_cancelled_task_is_recorded_as_closed_early(simulator):
    async def main() -> None:
        async with azure_client(simulator, default_headers={"x-sim-ttft-ms": "5000"}) as client:

            async def consume() -> None:
                stream = await client.chat.completions.create(
                    model=DEPLOYMENT, messages=MESSAGES, stream=True
                )
                async for _ in stream:
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(main())
    assert simulator.wait_idle(5)
    record = simulator.last_request()
    assert record["closed_early"] and record["chunks_sent"] == 0


def test_stats_endpoint_and_reset(simulator):
    post_stream(simulator, {"messages": MESSAGES}, {"x-sim-tokens": "4"})
    stats = httpx.get(f"{simulator.url}/_sim/stats").json()
    assert stats["requests_total"] == 1 and stats["open_streams"] == 0 and stats["chunks_sent_total"] == 4
    assert set(stats["requests"][0]) >= {
        "deployment",
        "messages",
        "stream",
        "max_tokens",
        "chunks_sent",
        "outcome",
        "closed_early",
        "status",
    }
    assert stats == simulator.stats()
    assert httpx.post(f"{simulator.url}/_sim/reset").json() == {"reset": True}
    assert simulator.stats()["requests"] == [] and simulator.stats()["requests_total"] == 0


def test_zero_delay_stream_sends_a_long_answer_whole(simulator):
    """The benchmark's zero-delay rows read a 20,000-token answer sent with no pacing: every chunk,
    then the end. How fast that goes is the benchmark's to report, not a test's."""
    n = 20_000
    response = post_stream(simulator, {"messages": MESSAGES}, {"x-sim-tokens": str(n)})
    assert response.text.count("\n\ndata: ") == n + 3  # prompt filter, role, n tokens, finish, [DONE]
    assert response.text.rstrip().endswith("data: [DONE]")


# -- shape against real Azure transcripts ---------------------------------------------------------


def _keys(obj: Any, prefix: str = "") -> set[str]:
    """Dotted key paths of a chunk, with list items collapsed to []."""
    paths: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            paths |= _keys(value, path)
    elif isinstance(obj, list):
        for item in obj:
            paths |= _keys(item, prefix + "[]")
    return paths


def test_chunk_shapes_match_real_azure_transcripts(simulator):
    ours = sse_events(
        post_stream(simulator, {"messages": MESSAGES, "stream_options": {"include_usage": True}}).text
    )
    ours_prompt, ours_role, ours_content, ours_finish, ours_usage = (
        ours[0],
        ours[1],
        ours[2],
        ours[-3],
        ours[-2],
    )
    ignore_extra = {"obfuscation", "service_tier", "latency_checkpoint"}  # optional Azure extras we omit
    checked = 0
    for path in sorted(FIXTURES.glob("azure_*.sse")):
        events = [e for e in sse_events(path.read_text(encoding="utf-8")) if e != "[DONE]"]
        assert _keys(events[0]) == _keys(ours_prompt) - {"usage"} or "jailbreak" not in json.dumps(events[0])
        content = [e for e in events if e["choices"] and e["choices"][0].get("delta", {}).get("content")]
        finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
        usage = [e for e in events if e.get("usage")]
        if content:
            theirs = _keys(content[0]) - {k for k in _keys(content[0]) if k.split(".")[-1] in ignore_extra}
            top = {k for k in theirs if "." not in k and "[]" not in k} - {"usage"}
            assert top <= _keys(ours_content), path.name
            choice = {k for k in theirs if k.startswith("choices[].") and "content_filter_results." not in k}
            assert choice <= _keys(ours_content), path.name
            checked += 1
        assert {k for k in _keys(finals[-1]) if k.startswith("choices[]")} <= _keys(ours_finish), path.name
        if usage:
            assert _keys(usage[-1]["usage"]) == _keys(ours_usage["usage"]), path.name
    assert checked >= 3
    assert ours_role["choices"][0]["delta"] == {"content": "", "refusal": None, "role": "assistant"}


# -- tokenizer and CLI ----------------------------------------------------------------------------


def test_tokenizer_round_trips_and_answers_have_exact_length():
    text = "Hello,   world 12345 — ok\n\nfoo_bar (x)."
    assert "".join(tokenize(text)) == text and count_tokens(text) == len(tokenize(text))
    for n in [*range(1, 120), 500, 5000]:
        tokens = answer_tokens(MESSAGES, n)
        assert len(tokens) == n and tokenize("".join(tokens)) == list(tokens), n


def test_cli_prints_url_and_serves():
    process = subprocess.Popen(
        [sys.executable, "-m", "aoai_simulator", "--port", "0", "--ttft-ms", "0", "--token-delay-ms", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("aoai_simulator listening on http://127.0.0.1:")
        url = line.split()[-1]
        response = httpx.post(
            f"{url}/openai/deployments/x/chat/completions?api-version={API_VERSION}",
            json={"messages": MESSAGES},
            headers={"api-key": "k"},
            timeout=10,
        )
        assert response.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_error_after_sends_an_in_stream_error_the_sdk_raises(simulator):
    async def main() -> int:
        seen = 0
        async with azure_client(simulator, default_headers={"x-sim-fault": "error-after=3"}) as client:
            stream = await client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True)
            with pytest.raises(openai.APIError):
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        seen += 1
        return seen

    assert run(main()) == 3
    assert simulator.wait_idle(5)
    assert simulator.last_request()["outcome"] == "error"


def test_prompt_bound_faults_and_pacing_only_when_enabled(simulator):
    marker = [{"role": "user", "content": "hi [sim:503]"}]
    assert post_stream(simulator, {"messages": marker}).status_code == 200, "off by default"
    with start_in_thread(SimulatorConfig(ttft_ms=0, token_delay_ms=0, prompt_faults=True)) as sim:
        assert post_stream(sim, {"messages": marker}).status_code == 503
        paced = [{"role": "user", "content": "hi [sim:tokens=7;token-delay=1]"}]
        events = sse_events(post_stream(sim, {"messages": paced}).text)
        contents = [e["choices"][0]["delta"].get("content") for e in events[:-1] if e["choices"]]
        assert len([c for c in contents if c]) == 7
        # The header still wins over the prompt.
        response = post_stream(sim, {"messages": marker}, headers={"x-sim-fault": "429"})
        assert response.status_code == 429
        # A spent `times=N` fault keeps the request's pacing.
        once = [{"role": "user", "content": "x [sim:500;times=1;tokens=4]"}]
        assert post_stream(sim, {"messages": once}).status_code == 500
        events = sse_events(post_stream(sim, {"messages": once}).text)
        assert len([e for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")]) == 4


def test_pacing_items_parse():
    plan = parse_fault("tokens=12;token-delay=2.5;error-after=3")
    assert (plan.tokens, plan.token_delay_ms, plan.error_after) == (12, 2.5, 3)
    assert not plan.before_headers
