"""The fast path is LangChain's path: stock `AzureChatOpenAI.astream` (stock SDK client, stock httpx
transport) and the app's model (chatstream.models: the lean model on the aiohttp transport) stream the
same chunks, field by field, over the simulator and over every recorded transcript served byte for byte
on a real socket. Two differences are intended and asserted as exactly that: only choice 0 of an n>1
stream is forwarded, and refusal text is surfaced in `additional_kwargs["refusal"]`.

Also here: `with_structured_output` on the lean model, `CHAT_LEAN_STREAMING=false` end to end, and the
fallback to the stock path when a private name the fast path imports is missing.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from langchain_openai import AzureChatOpenAI
from pydantic import BaseModel

from aoai_simulator import SimulatorHandle
from chatstream.lean_model import LeanAzureChatOpenAI
from chatstream.models import build_model
from chatstream.settings import DEFAULT_AZURE_API_VERSION, Settings
from funchost.testing import SubprocessServer, serve_in_thread
from tests.conftest import FAULT_APP_ENV, SHARED_FIXTURES, start_app
from tests.support.replay import Replay
from tests.test_resilience import read_sse

TRANSCRIPTS = sorted(SHARED_FIXTURES.glob("*.sse"))
FIELDS = (
    "content",
    "additional_kwargs",
    "response_metadata",
    "usage_metadata",
    "tool_call_chunks",
    "tool_calls",
    "invalid_tool_calls",
    "id",
    "chunk_position",
)
QUESTION = [HumanMessage("What is 12 * (3 + 4)? Answer briefly.")]


@tool
def calculator(expression: str) -> str:
    """Evaluate arithmetic."""
    return expression


def stock_model(url: str, **kwargs: Any) -> AzureChatOpenAI:
    """LangChain's own model, SDK client and httpx transport, as a LangChain user would build it."""
    return AzureChatOpenAI(
        azure_endpoint=url,
        azure_deployment="gpt-4o-mini",
        api_version=DEFAULT_AZURE_API_VERSION,
        api_key="test-key",
        stream_usage=True,
        max_retries=0,
        **kwargs,
    )


def app_model(url: str, *, coalesce: bool = False) -> LeanAzureChatOpenAI:
    """The model exactly as the app builds it."""
    settings = Settings(
        AZURE_OPENAI_ENDPOINT=url,
        AZURE_OPENAI_API_KEY="test-key",
        AZURE_OPENAI_DEPLOYMENT="gpt-4o-mini",
        CHAT_COALESCE_DELTAS=coalesce,
        CHAT_LEAN_STREAMING=True,
    )
    model = build_model(settings).model
    assert isinstance(model, LeanAzureChatOpenAI)
    return model


def stream(model: Any, *, tools: bool = False, **kwargs: Any) -> list[AIMessageChunk]:
    """One stream in its own event loop (the aiohttp session belongs to the loop that opened it), with
    a fixed run id so LangChain's generated message ids are comparable."""
    runnable = model.bind_tools([calculator]) if tools else model
    config = {"run_id": uuid.UUID(int=7)}

    async def run() -> list[AIMessageChunk]:
        try:
            return [chunk async for chunk in runnable.astream(QUESTION, config, **kwargs)]
        finally:
            if isinstance(model, LeanAzureChatOpenAI) and model.http_async_client is not None:
                await model.http_async_client.aclose()  # our transport's aiohttp session

    return asyncio.run(run())


def fields(chunk: AIMessageChunk) -> dict[str, Any]:
    return {name: getattr(chunk, name) for name in FIELDS}


def merged(chunks: list[AIMessageChunk]) -> dict[str, Any]:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return fields(total)


def assert_same_stream(lean: list[AIMessageChunk], stock: list[AIMessageChunk]) -> None:
    assert len(lean) == len(stock), ([c.content for c in lean], [c.content for c in stock])
    for index, (ours, theirs) in enumerate(zip(lean, stock, strict=True)):
        assert type(ours) is type(theirs)
        assert fields(ours) == fields(theirs), f"chunk {index}"
    assert merged(lean) == merged(stock)


def summary(chunks: list[AIMessageChunk]) -> dict[str, Any]:
    """What coalescing must keep: the text, the calls, the usage and the finish reason."""
    total = merged(chunks)
    return {
        "content": total["content"],
        "tool_calls": total["tool_calls"],
        "usage": total["usage_metadata"],
        "finish_reason": total["response_metadata"].get("finish_reason"),
    }


# --- The simulator -------------------------------------------------------------------------------


@pytest.mark.parametrize("tools", [False, True], ids=["answer", "tool_call"])
def test_lean_model_streams_stock_langchains_chunks_over_the_simulator(simulator: SimulatorHandle, tools):
    stock = stream(stock_model(simulator.url), tools=tools)
    lean = stream(app_model(simulator.url), tools=tools)
    assert_same_stream(lean, stock)
    total = merged(lean)
    assert total["usage_metadata"]["output_tokens"] > 0  # the usage chunk is in both
    if tools:
        assert [c["name"] for c in total["tool_calls"]] == ["calculator"]
        assert total["tool_calls"][0]["args"] == {"expression": "12 * (3 + 4)"}
    else:
        assert total["content"] and not total["tool_calls"]
    # With coalescing (the product default) the same answer arrives in fewer chunks.
    coalesced = stream(app_model(simulator.url, coalesce=True), tools=tools)
    assert summary(coalesced) == summary(stock)


# --- Every recorded transcript ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    replay = Replay()
    server = serve_in_thread(replay.app())
    replay.url = server.url  # type: ignore[attr-defined]
    yield replay
    server.stop()


def events(body: bytes) -> list[Any]:
    out: list[Any] = []
    for block in body.decode().split("\n\n"):
        data = block.strip().removeprefix("data: ")
        if data:
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def sse(chunks: list[Any]) -> bytes:
    return b"".join(
        b"data: " + (c.encode() if isinstance(c, str) else json.dumps(c).encode()) + b"\n\n" for c in chunks
    )


def choice_zero_only(body: bytes) -> bytes:
    """The documented difference for n>1: only choice 0 is forwarded; a chunk left with nothing (no
    choice 0, no usage) is dropped."""
    kept: list[Any] = []
    for chunk in events(body):
        if isinstance(chunk, dict) and chunk.get("choices"):
            choices = [c for c in chunk["choices"] if c.get("index", 0) == 0]
            if not choices and not chunk.get("usage"):
                continue
            chunk = {**chunk, "choices": choices}
        kept.append(chunk)
    return sse(kept)


def refusal_text(body: bytes) -> list[str]:
    return [
        (c["choices"][0].get("delta") or {}).get("refusal") or ""
        for c in events(body)
        if isinstance(c, dict) and c.get("choices")
    ]


def replayed(replay: Replay, body: bytes, model: Any) -> list[AIMessageChunk]:
    replay.load(body)
    return stream(model)


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=lambda p: p.stem)
def test_lean_model_streams_stock_langchains_chunks_for_every_recording(replay, transcript: Path):
    url: str = replay.url  # type: ignore[attr-defined]
    body = transcript.read_bytes()
    lean = replayed(replay, body, app_model(url))
    n_choices = {
        c.get("index", 0) for e in events(body) if isinstance(e, dict) for c in e.get("choices") or []
    }
    if len(n_choices) > 1:
        # Stock LangChain reads `choices[0]` of every chunk whatever its index (mixing the answers);
        # the lean path forwards choice 0 only: exactly stock over the choice-0 part of the stream.
        mixed = replayed(replay, body, stock_model(url))
        assert merged(mixed)["content"] != merged(lean)["content"]
        body = choice_zero_only(body)
    stock = replayed(replay, body, stock_model(url))
    refusals = [text for text in refusal_text(body) if text]
    if refusals:
        # Stock LangChain drops `delta.refusal`; the lean path keeps it, and changes nothing else.
        surfaced = [c.additional_kwargs.pop("refusal", "") for c in lean]
        assert [text for text in surfaced if text] == refusals
        assert_same_stream(lean, stock)
        refused = [c for c in lean]
        for chunk, text in zip(refused, surfaced, strict=True):
            if text:
                chunk.additional_kwargs["refusal"] = text
        assert merged(refused)["additional_kwargs"]["refusal"] == "".join(refusals)
        assert merged(refused)["additional_kwargs"]["refusal"].startswith("I'm sorry")
    else:
        assert_same_stream(lean, stock)
    # Coalescing on (the product default): the same text, calls, usage and finish reason.
    coalesced = replayed(
        replay, body if len(n_choices) == 1 else transcript.read_bytes(), app_model(url, coalesce=True)
    )
    assert summary(coalesced) == summary(stock)


# --- with_structured_output ------------------------------------------------------------------------


class Weather(BaseModel):
    city: str
    degrees: int


WEATHER = {"city": "Paris", "degrees": 21}


def _chunk(delta: dict, finish: str | None = None) -> dict:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {
        "id": "chatcmpl-so",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [choice],
    }


def structured_stream(method: str) -> bytes:
    """A response shaped like the recorded ones: role chunk, the JSON in 5-character pieces, finish, usage."""
    text = json.dumps(WEATHER)
    pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
    if method == "json_schema":
        body = [_chunk({"role": "assistant", "content": "", "refusal": None})]
        body += [_chunk({"content": piece}) for piece in pieces]
        finish = "stop"
    else:
        call = {
            "index": 0,
            "id": "call_so",
            "type": "function",
            "function": {"name": "Weather", "arguments": ""},
        }
        body = [_chunk({"role": "assistant", "content": None, "tool_calls": [call]})]
        body += [_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}) for piece in pieces]
        finish = "tool_calls"
    usage = {"prompt_tokens": 20, "completion_tokens": len(pieces), "total_tokens": 20 + len(pieces)}
    body += [_chunk({}, finish), {**_chunk({}), "choices": [], "usage": usage}, "[DONE]"]
    return sse(body)


def structured_completion(method: str) -> bytes:
    text = json.dumps(WEATHER)
    if method == "json_schema":
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    else:
        call = {"id": "call_so", "type": "function", "function": {"name": "Weather", "arguments": text}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    usage = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
    body = {"id": "chatcmpl-so", "object": "chat.completion", "created": 1, "model": "gpt-4o"}
    return json.dumps({**body, "choices": [choice], "usage": usage}).encode()


# langchain-openai's `model_dump()` of the SDK's parsed-stream events warns about `parsed` (both models).
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_works_on_the_lean_model(replay, method):
    """`with_structured_output` binds tracing-only kwargs (`ls_structured_output_format`) that stock
    `astream` pops; the lean path must drop them too instead of sending them to the SDK."""
    url: str = replay.url  # type: ignore[attr-defined]

    def run(model: Any, streaming: bool) -> Any:
        structured = model.with_structured_output(Weather, method=method)

        async def go() -> Any:
            try:
                if streaming:
                    return [part async for part in structured.astream("Weather in Paris?")]
                return await structured.ainvoke("Weather in Paris?")
            finally:
                if isinstance(model, LeanAzureChatOpenAI) and model.http_async_client is not None:
                    await model.http_async_client.aclose()

        return asyncio.run(go())

    replay.load(structured_stream(method))
    replay.requests.clear()
    lean_parts = run(app_model(url), streaming=True)
    stock_parts = run(stock_model(url), streaming=True)
    assert lean_parts == stock_parts and lean_parts[-1] == Weather(**WEATHER)
    lean_request, stock_request = replay.requests
    assert lean_request == stock_request
    assert not {"ls_structured_output_format", "structured_output_format"} & set(lean_request)
    if method == "json_schema":
        assert lean_request["response_format"]["json_schema"]["name"] == "Weather"
    else:
        assert lean_request["tools"][0]["function"]["name"] == "Weather"

    replay.load(structured_completion(method), content_type="application/json")
    assert (
        run(app_model(url), streaming=False) == run(stock_model(url), streaming=False) == Weather(**WEATHER)
    )


# --- CHAT_LEAN_STREAMING=false: the app on LangChain's stock model and transport -------------------


def chat(url: str, prompt: str, **body: Any) -> tuple[httpx.Response, list[dict], bool]:
    with httpx.stream("POST", f"{url}/api/chat", json={"user": prompt, **body}, timeout=60) as response:
        if response.status_code != 200:
            response.read()
            return response, [], False
        events, _, done = read_sse(response)
    return response, events, done


def answer(events: list[dict]) -> dict[str, Any]:
    return {
        "text": "".join(e["delta_content"] for e in events if e["type"] == "delta"),
        "usage": events[-1]["usage"],
        "finish_reason": events[-1]["finish_reason"],
    }


@pytest.fixture(scope="module")
def stock_app(fault_simulator: SimulatorHandle) -> Iterator[SubprocessServer]:
    # Coalescing asked for, but it belongs to the fast path: the stock path must give one delta per chunk.
    server = start_app(
        AZURE_OPENAI_ENDPOINT=fault_simulator.url,
        **FAULT_APP_ENV,
        CHAT_LEAN_STREAMING="false",
        CHAT_COALESCE_DELTAS="true",
    )
    yield server
    server.stop()


def test_lean_streaming_off_streams_the_same_answer_through_the_stock_path(
    stock_app, fault_app, fault_simulator
):
    prompt = "tell me something [sim:tokens=60]"
    _, ours, done = chat(stock_app.url, prompt)
    assert done and ours[0]["type"] == "start" and ours[-1]["type"] == "end"
    sent = fault_simulator.last_request()["chunks_sent"]
    # One delta per upstream chunk although they arrive together: nothing of the fast path (coalescing) ran.
    assert len([e for e in ours if e["type"] == "delta"]) == sent == 60
    _, lean, _ = chat(fault_app.url, prompt)
    assert answer(ours) == answer(lean)
    assert answer(ours)["finish_reason"] == "stop" and answer(ours)["usage"]["completion_tokens"] == 60
    assert "fast streaming path unavailable" not in stock_app.output  # switched off, not broken


@pytest.mark.parametrize(
    ("fault", "code", "deltas"),
    [("drop-after=3", "upstream_interrupted", 3), ("stall-after=4", "upstream_timeout", 4)],
    ids=["drop", "stall"],
)
def test_lean_streaming_off_reports_mid_stream_failures_as_the_fast_path_does(stock_app, fault, code, deltas):
    _, events, done = chat(stock_app.url, f"break [sim:{fault};tokens=40]")
    assert done and [e["type"] for e in events][-2:] == ["error", "end"]
    assert events[-2]["code"] == code
    assert len([e for e in events if e["type"] == "delta"]) == deltas
    assert events[-1]["finish_reason"] == "error"


def test_lean_streaming_off_keeps_statuses_and_tool_calls(stock_app):
    response, _, _ = chat(stock_app.url, "hi [sim:429:retry-after=30]")
    assert response.status_code == 429 and response.headers["retry-after"] == "30"
    assert response.json()["error"]["code"] == "rate_limited"
    _, events, done = chat(stock_app.url, "What is 12 * (3 + 4)?", chain="tools")
    assert done and events[-1]["finish_reason"] == "stop"
    calls = [e for e in events if e["type"] == "tool_call"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("calculator", {"expression": "12 * (3 + 4)"})
    ]


def test_the_chat_chain_is_langchains_own_sequence_around_a_stock_model(simulator):
    """LeanSequence takes its shortcut only in front of the lean model (bound or not)."""
    from chains.lean import streams_lean

    assert streams_lean(app_model(simulator.url)) and streams_lean(
        app_model(simulator.url).bind(max_tokens=5)
    )
    assert not streams_lean(stock_model(simulator.url)) and not streams_lean(
        stock_model(simulator.url).bind()
    )
    settings = Settings(
        AZURE_OPENAI_ENDPOINT=simulator.url, AZURE_OPENAI_API_KEY="k", CHAT_LEAN_STREAMING=False
    )
    assert type(build_model(settings).model) is AzureChatOpenAI


# --- A private name the fast path imports is missing: the stock path, one warning -----------------

#: Run at interpreter start-up in the app process (sitecustomize on PYTHONPATH): the name disappears
#: after the library itself has loaded, as if an upgrade had removed it.
SHIMS = {
    "langchain_private_name": (
        "import langchain_core.language_models.chat_models\n"
        "import langchain_core.language_models._utils as m\n"
        "del m._normalize_messages\n"
    ),
    "aiohttp_private_name": "import aiohttp\nimport aiohttp.helpers as m\ndel m.get_env_proxy_for_url\n",
    "aiohttp_private_method": "import aiohttp\ndel aiohttp.StreamReader._read_nowait\n",
}


@pytest.mark.parametrize("shim", SHIMS.values(), ids=SHIMS.keys())
def test_a_missing_private_name_falls_back_to_the_stock_path_with_one_warning(tmp_path, simulator, shim):
    (tmp_path / "sitecustomize.py").write_text(shim)
    app = start_app(
        PYTHONPATH=str(tmp_path),
        AZURE_OPENAI_ENDPOINT=simulator.url,
        AZURE_OPENAI_API_KEY="test-key",
        CHAT_DEPLOYMENTS="gpt-4o",
        CHAT_COALESCE_DELTAS="true",
    )
    try:
        for deployment in ("gpt-4o-mini", "gpt-4o"):  # two models built, still one warning
            _, events, done = chat(app.url, "hello [sim:tokens=30]", deployments=[deployment])
            assert done and answer(events)["finish_reason"] == "stop"
            assert answer(events)["text"].startswith('You asked: "hello')
            # One delta per chunk with coalescing on: the stock path streamed it.
            assert len([e for e in events if e["type"] == "delta"]) == simulator.last_request()["chunks_sent"]
        assert app.output.count("fast streaming path unavailable") == 1, app.output
    finally:
        app.stop()
