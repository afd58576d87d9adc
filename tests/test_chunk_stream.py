"""The lean streaming path: SSE parsing, dict chunks through the real SDK, coalescing, and equality
with LangChain's own path."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AIMessageChunk, HumanMessage

from chains.chat import build_chat_chain
from chains.registry import ChainContext
from chatstream.chunk_stream import EventTooLarge, SSEParser
from chatstream.lean_model import LeanAzureChatOpenAI


def test_sse_parser_handles_split_reads_crlf_comments_and_multiline_data():
    parser = SSEParser()
    wire = b': ping\r\n\r\ndata: {"a":1}\r\n\r\nevent: error\ndata: {"b":\ndata: 2}\n\ndata:{"c":3}\r\r\n'
    events = []
    for i in range(len(wire)):  # one byte per read: every split point, including inside \r\n
        events += parser.feed(wire[i : i + 1])
    assert events == [(None, b'{"a":1}'), (b"error", b'{"b":\n2}'), (None, b'{"c":3}')]


def test_sse_parser_is_linear_in_the_bytes_fed():
    """A 1 MB event in 1-byte reads: the incomplete event only grows (the old parser re-copied and
    re-split the whole buffer on every read: about 10^12 byte operations here, effectively a hang)."""
    event = b"data: " + b"x" * (1 << 20) + b"\n\n"
    parser = SSEParser()
    result: list[list[tuple[bytes | None, bytes]]] = []

    def feed() -> None:
        events = []
        for i in range(len(event)):
            events += parser.feed(event[i : i + 1])
            if i == len(event) // 2:
                assert parser.pending_bytes == i + 1  # held once, not once per read
        result.append(events)

    worker = threading.Thread(target=feed, daemon=True)
    worker.start()
    worker.join(120)  # about a second of work; the bound only stops a quadratic parser from hanging CI
    assert not worker.is_alive(), "feeding 1 MB byte by byte did not finish: the parser is not linear"
    assert result == [[(None, b"x" * (1 << 20))]]
    assert parser.pending_bytes == 0


def test_sse_parser_bounds_an_endless_line():
    parser = SSEParser(max_event_bytes=1000)
    parser.feed(b"data: ok\n\ndata: ")
    with pytest.raises(EventTooLarge):
        for _ in range(100):
            parser.feed(b"a" * 100)
    assert parser.pending_bytes == 0  # the held bytes are let go
    with pytest.raises(EventTooLarge):  # one read over the limit is refused at once
        SSEParser(max_event_bytes=1000).feed(b"data: " + b"a" * 2000)


def test_sse_parser_finds_boundaries_split_across_reads():
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b\r") == [(None, b"a")]
    assert parser.feed(b"\n\r\n") == [(None, b"b")]
    assert parser.feed(b": comment only\n\n") == []
    assert parser.looks_like_sse()
    html = SSEParser()
    assert html.feed(b"<html>\n\n<body>oops</body>\n\n") == []
    assert not html.looks_like_sse()


def _model(url: str, **kwargs: Any) -> LeanAzureChatOpenAI:
    return LeanAzureChatOpenAI(
        azure_endpoint=url,
        azure_deployment="gpt-4o-mini",
        api_version="2024-10-21",
        api_key="test-key",
        stream_usage=True,
        max_retries=0,
        **kwargs,
    )


class _Recorder(AsyncCallbackHandler):
    """Any handler at all sends the model down LangChain's own, unchanged path."""

    def __init__(self) -> None:
        self.tokens = 0

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens += 1


async def _chunks(model: LeanAzureChatOpenAI, config: dict | None = None) -> list[AIMessageChunk]:
    return [c async for c in model.astream([HumanMessage("hello there")], config)]


def _summary(chunks: list[AIMessageChunk]) -> dict:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return {
        "content": total.content,
        "usage": total.usage_metadata,
        "finish_reason": total.response_metadata.get("finish_reason"),
        "model_name": total.response_metadata.get("model_name"),
        "last_position": chunks[-1].chunk_position,
        "ids": {c.id for c in chunks},
    }


def test_lean_path_streams_what_langchains_own_path_streams(simulator):
    model = _model(simulator.url, coalesce_deltas=False)
    recorder = _Recorder()

    async def both() -> tuple[list[AIMessageChunk], list[AIMessageChunk]]:
        # One event loop per model: its aiohttp session belongs to the loop that first used it.
        return await _chunks(model), await _chunks(model, {"callbacks": [recorder]})

    lean, full = asyncio.run(both())
    assert recorder.tokens > 0, "the handler saw nothing: the full path was not taken"
    assert [c.content for c in lean] == [c.content for c in full]
    lean_sum, full_sum = _summary(lean), _summary(full)
    assert len(lean_sum.pop("ids")) == 1 and len(full_sum.pop("ids")) == 1
    assert lean_sum == full_sum
    assert lean_sum["finish_reason"] == "stop" and lean_sum["usage"]["output_tokens"] > 0


def test_buffered_tokens_are_coalesced_and_nothing_is_lost(simulator):
    # Zero delay: the simulator writes up to 128 tokens per send, so reads carry many chunks.
    text = [asyncio.run(_chunks(_model(simulator.url, coalesce_deltas=flag))) for flag in (True, False)]
    coalesced, one_to_one = text
    usage = simulator.requests()[-1]
    assert "".join(c.content for c in coalesced) == "".join(c.content for c in one_to_one)
    content_chunks = [c for c in one_to_one if c.content]
    assert len(content_chunks) == usage["chunks_sent"]
    assert len([c for c in coalesced if c.content]) < len(content_chunks)
    assert _summary(coalesced)["usage"] == _summary(one_to_one)["usage"]


def test_lean_chat_chain_matches_the_plain_sequence(simulator):
    model = _model(simulator.url, coalesce_deltas=False)
    chain = build_chat_chain(ChainContext(model=model, system_prompt="Be {brief}."))
    inputs = {"history": [], "question": "what is {this}?"}

    async def run(config: dict | None) -> list[str]:
        return [c.content async for c in chain.astream(inputs, config)]

    async def both() -> tuple[list[str], list[str]]:
        return await run(None), await run({"callbacks": [_Recorder()]})

    lean, full = asyncio.run(both())
    assert lean == full and "".join(lean)
    # The prompt reached the model intact, braces included.
    assert simulator.last_request()["messages"][0]["content"] == "Be {brief}."


@pytest.mark.parametrize(
    ("fault", "error"),
    [("429", "RateLimitError"), ("drop-after=3", "APIConnectionError")],
    ids=["429", "drop"],
)
def test_upstream_failures_still_raise_the_sdk_exceptions(simulator, fault, error):
    import openai

    model = _model(simulator.url, default_headers={"x-sim-fault": fault})
    with pytest.raises(getattr(openai, error)):
        asyncio.run(_chunks(model))
