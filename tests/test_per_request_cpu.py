"""The per-request paths of issue 17 part 2 (round 2) keep their guarantees while doing less.

- Azure's text chunks (they carry `"usage": null`) take the decoder's inline path, decoded as before.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import pytest

from chatstream import chunk_stream
from tests.support.hostile import chunk

AZURE_TEXT = {
    **chunk("Hello"),
    "system_fingerprint": "fp_1",
    "usage": None,
}
AZURE_TEXT["choices"][0]["content_filter_results"] = {"hate": {"filtered": False, "severity": "safe"}}


def test_azure_text_chunks_take_the_inline_decoder_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`"usage": null` on every Azure chunk sent each token through the full shape checks."""
    payload = json.dumps(AZURE_TEXT).encode()
    decoder = chunk_stream._Decoder(None)  # type: ignore[arg-type]
    slow: list[Any] = []
    original = chunk_stream._Decoder._decode_rest

    def counted(self: Any, value: Any, raw: bytes) -> Any:
        slow.append(raw)
        return original(self, value, raw)

    monkeypatch.setattr(chunk_stream._Decoder, "_decode_rest", counted)
    assert decoder.decode(payload) == AZURE_TEXT
    assert slow == [] and decoder.answered and not decoder.finished
    # Usage, errors and finishes still take the checked path.
    for other in ({**AZURE_TEXT, "usage": {"prompt_tokens": 1}}, chunk(finish_reason="stop")):
        decoder.decode(json.dumps(other).encode())
    assert len(slow) == 2


# --- The response: one write for the end, tasks only when they have work --------------------------


class _Encoder:
    media_type = "text/event-stream"
    heartbeat = b": ping\n\n"
    headers: ClassVar[dict[str, str]] = {}

    def encode(self, event: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(event)}\n\n".encode()

    def close(self) -> bytes:
        return b"data: [DONE]\n\n"


class _Run:
    request_id = "r-1"
    span = None

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def fail(self, error: Any) -> list[dict[str, Any]]:
        return [{"type": "error", "code": error.code}, {"type": "end"}]

    def cancelled(self) -> None:
        self.outcomes.append("cancelled")

    def log_outcome(self) -> None:
        self.outcomes.append("logged")


async def _events(gaps: list[float]) -> Any:
    for n, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield {"type": "delta", "n": n}
    yield {"type": "end"}


def _respond(
    gaps: list[float], heartbeat: float, deadline: float = 30
) -> tuple[list[dict[str, Any]], list[str], _Run]:
    """Drive the response's ASGI call with `send` recorded, counting the tasks it creates."""
    from chatstream import errors
    from chatstream.response import EventStreamResponse

    sent: list[dict[str, Any]] = []
    created: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            created.append(coro.__qualname__)
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)  # type: ignore[arg-type]
        disconnect = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        response = EventStreamResponse(
            run,  # type: ignore[arg-type]
            {"type": "start"},
            _events(gaps),
            _Encoder(),
            heartbeat_seconds=heartbeat,
            deadline_at=loop.time() + deadline,
            deadline_error=errors.deadline_exceeded(30),
            headers={},
        )
        await asyncio.wait_for(response({"type": "http"}, receive, send), 30)
        disconnect.set()

    run = _Run()
    asyncio.run(main())
    return sent, created, run


def test_a_quick_answer_ends_in_one_write_with_no_heartbeat_or_closing_task() -> None:
    sent, created, run = _respond([0, 0], heartbeat=15)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    # start, two deltas, end, then the stream's close and the end of the body together.
    assert [m.get("more_body") for m in sent[1:]] == [True, True, True, True, False]
    assert bodies[-1] == b"data: [DONE]\n\n"
    assert b'"start"' in bodies[0] and b'"n": 0' in bodies[1] and b'"n": 1' in bodies[2]
    assert not any("_heartbeats" in name or "_close_source" in name for name in created), created
    assert run.outcomes == ["logged"]


def test_past_the_deadline_the_closing_events_and_the_end_go_out_in_one_write() -> None:
    from chatstream import response as response_module

    sent, created, run = _respond([0, 5], heartbeat=15, deadline=0.3)
    last = sent[-1]
    assert last["more_body"] is False
    assert last["body"] == (
        b'data: {"type": "error", "code": "deadline_exceeded"}\n\ndata: {"type": "end"}\n\ndata: [DONE]\n\n'
    )
    assert sum("_close_source" in name for name in created) == 1  # the chain's generator is closed
    assert run.outcomes == ["logged"] and response_module.closing_tasks() == 0


def test_a_slow_answer_still_gets_heartbeats_between_events() -> None:
    sent, created, _run = _respond([0.0, 0.5], heartbeat=0.1)
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    between = bodies[bodies.index(next(b for b in bodies if b'"n": 0' in b)) + 1 : -3]
    assert between and set(between) == {b": ping\n\n"}, bodies
    assert bodies[-1].endswith(b"data: [DONE]\n\n") and sent[-1]["more_body"] is False
    assert sum("_heartbeats" in name for name in created) == 1
