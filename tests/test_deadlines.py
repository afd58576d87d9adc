"""Every deadline is a deadline, and heartbeats never tear an event apart.

End to end (client -> app subprocess -> simulated deployment, real sockets): `"stream": false` ends
in a 504 at the deadline; a caller that stops reading cannot hold the run past it; a multi-deployment
stream closes every unfinished deployment with its own `error` + `end` and lists it in `done.failed`;
a tiny heartbeat interval never interleaves with data on the wire. In process: the response's one
lock serialises writes even when the server's `send` yields halfway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from aoai_simulator import SimulatorConfig, SimulatorHandle, start_in_thread
from chatstream import encoding, errors, response
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.response import EventStreamResponse
from funchost.testing import SubprocessServer
from tests.conftest import start_app
from tests.support.hostile import Conn, HostileUpstream, chunk
from tests.test_resilience import read_sse, wait_for_log

DEADLINE_SECONDS = 2
#: A deployment whose first token comes long after the deadline (the simulator's name convention).
SLOW = "fault-slow-first-token=30000"
#: One that fails before its first token.
BROKEN = "fault-400"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = start_in_thread(
        SimulatorConfig(ttft_ms=0, token_delay_ms=0, hold_seconds=60, prompt_faults=True)
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def deadline_app(sim: SimulatorHandle) -> Iterator[SubprocessServer]:
    """Deadline 2 s; headers after at most 0.5 s; coalesced deltas, so a fast answer is many bytes."""
    server = start_app(
        AZURE_OPENAI_ENDPOINT=sim.url,
        AZURE_OPENAI_API_KEY="test-key",
        AZURE_OPENAI_DEPLOYMENT="gpt-4o-mini",
        CHAT_DEPLOYMENTS=f"{SLOW},{BROKEN}",
        CHAT_DEADLINE_SECONDS=str(DEADLINE_SECONDS),
        CHAT_FIRST_EVENT_WAIT_SECONDS="0.5",
        CHAT_UPSTREAM_MAX_RETRIES="0",
        CHAT_UPSTREAM_READ_TIMEOUT_SECONDS="60",
        CHAT_COALESCE_DELTAS="true",
        CHAT_DIAGNOSTICS="true",
    )
    yield server
    server.stop()


@pytest.fixture
def app(deadline_app: SubprocessServer, sim: SimulatorHandle) -> SubprocessServer:
    if deadline_app.process.poll() is not None:
        pytest.fail(f"the app process died:\n{deadline_app.output}")
    assert sim.wait_idle(15)
    sim.reset()
    return deadline_app


def diag(app: SubprocessServer) -> dict[str, Any]:
    return httpx.get(f"{app.url}/api/_diag", timeout=10).json()


def wait_for_diag(app: SubprocessServer, predicate: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        now = diag(app)
        if predicate(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# "stream": false
# ---------------------------------------------------------------------------------------------


def test_a_non_streaming_answer_past_the_deadline_is_a_504_and_the_model_call_is_cancelled(app, sim):
    # 3000 tokens 20 ms apart: a minute of answer, unless the deadline stops it.
    prompt = "a long essay [sim:tokens=3000;token-delay=20]"
    reply = httpx.post(f"{app.url}/api/chat", json={"user": prompt, "stream": False}, timeout=30)
    assert reply.status_code == 504, reply.text
    assert reply.json()["error"]["code"] == "deadline_exceeded"
    assert reply.json()["error"]["retryable"] is True
    request_id = reply.headers["x-request-id"]
    assert sim.wait_idle(5), sim.stats()["requests"][-1]
    record = sim.last_request()
    assert record is not None and record["closed_early"] and record["chunks_sent"] < 3000
    wait_for_log(app, rf"chat error:deadline_exceeded request_id={request_id} ")


def test_a_non_streaming_answer_within_the_deadline_is_unchanged(app, sim):
    reply = httpx.post(f"{app.url}/api/chat", json={"user": "hello", "stream": False}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"] and reply.json()["finish_reason"] == "stop"


# ---------------------------------------------------------------------------------------------
# A caller that stops reading
# ---------------------------------------------------------------------------------------------


def _open_and_stop_reading(url: str, prompt: str) -> tuple[socket.socket, str]:
    """POST over a raw socket with a tiny receive window, read only the headers, then read no more."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"user": prompt}).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(15)
    sock.connect((host, int(port)))
    sock.sendall(
        b"POST /api/chat HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body)
    )
    head = b""
    while b"\r\n\r\n" not in head:
        part = sock.recv(1024)
        assert part, "the app closed the connection before the headers"
        head += part
    lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 200"), lines
    headers = dict(line.split(": ", 1) for line in lines[1:])
    request_id = {k.lower(): v for k, v in headers.items()}["x-request-id"]
    return sock, request_id


@pytest.fixture
def flood_app(hostile: HostileUpstream) -> Iterator[SubprocessServer]:
    """The app on the hostile upstream, which answers `[hostile:flood]` with megabytes at once."""

    async def flood(conn: Conn) -> bool:
        await conn.head()
        await conn.event(chunk("", role="assistant"))
        piece = "x" * 16_000
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(2_000):  # 32 MB at most; the app stops reading long before
                await conn.event(chunk(piece))
        return False

    hostile.script("flood", flood)
    server = start_app(
        AZURE_OPENAI_ENDPOINT=hostile.url,
        AZURE_OPENAI_API_KEY="test-key",
        AZURE_OPENAI_DEPLOYMENT="gpt-4o-mini",
        CHAT_DEADLINE_SECONDS=str(DEADLINE_SECONDS),
        CHAT_FIRST_EVENT_WAIT_SECONDS="0.5",
        CHAT_HEARTBEAT_SECONDS="0.05",
        CHAT_UPSTREAM_MAX_RETRIES="0",
        CHAT_UPSTREAM_READ_TIMEOUT_SECONDS="60",
        CHAT_DIAGNOSTICS="true",
    )
    yield server
    server.stop()


def test_a_caller_that_stops_reading_cannot_hold_the_stream_past_the_deadline(flood_app, hostile):
    """Slow by design (about 7 s): a 2 s deadline, then the 5 s the response gives its closing events."""
    # Megabytes in the first second: the socket buffers fill and the app's `send` blocks.
    sock, request_id = _open_and_stop_reading(flood_app.url, "everything [hostile:flood]")
    try:
        # The deadline, then a few seconds for the closing events, plus a generous margin.
        wait_for_log(flood_app, rf"chat error:deadline_exceeded request_id={request_id} ", timeout=40)
        wait_for_log(flood_app, rf"chat stream abandoned request_id={request_id}", timeout=10)
        now = wait_for_diag(
            flood_app,
            lambda d: d["active_streams"] == 0 and d["live_runs"] == 0 and d["closing_tasks"] == 0,
            timeout=20,
        )
        assert (now["active_streams"], now["live_runs"], now["closing_tasks"]) == (0, 0, 0), now
        assert hostile.wait_closed(10), "the model's stream is still open"
    finally:
        sock.close()
    assert flood_app.output.count(f"request_id={request_id} chain=") == 1, "one outcome line per request"


# ---------------------------------------------------------------------------------------------
# Several deployments
# ---------------------------------------------------------------------------------------------


def _by_deployment(events: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for event in events:
        if event.get("deployment"):
            out.setdefault(event["deployment"], []).append(event)
    return out


def _multi(app: SubprocessServer, deployments: list[str]) -> list[dict]:
    body = {"user": "compare yourselves", "deployments": deployments}
    with httpx.stream("POST", f"{app.url}/api/chat", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        events, _, done = read_sse(reply)
    assert done
    return events


def test_deadline_closes_every_unfinished_deployment_and_done_lists_each_failure(app, sim):
    events = _multi(app, ["gpt-4o-mini", BROKEN, SLOW])
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    per = _by_deployment(events[1:-1])
    fast, broken, slow = per["gpt-4o-mini"], per[BROKEN], per[SLOW]
    assert fast[-1]["type"] == "end" and fast[-1]["finish_reason"] == "stop"
    assert not [e for e in fast if e["type"] == "error"]
    assert [e["type"] for e in broken] == ["error", "end"] and broken[0]["code"] != "deadline_exceeded"
    assert [e["type"] for e in slow] == ["error", "end"] and slow[0]["code"] == "deadline_exceeded"
    assert [e["type"] for e in events].count("end") == 3
    assert events[-1]["deployments"] == ["gpt-4o-mini", BROKEN, SLOW]
    assert events[-1]["failed"] == [BROKEN, SLOW]
    assert sim.wait_idle(5), "the slow deployment's request is still open"


def test_a_deployment_that_failed_before_the_deadline_gets_its_own_end_when_none_started(app, sim):
    # Nothing starts before the deadline: the early failure was waiting for the merged start.
    events = _multi(app, [BROKEN, SLOW])
    types = [e["type"] for e in events]
    assert types == ["start", "error", "end", "error", "end", "done"], events
    per = _by_deployment(events[1:-1])
    assert per[BROKEN][0]["code"] != "deadline_exceeded"
    assert per[SLOW][0]["code"] == "deadline_exceeded"
    assert events[-1]["failed"] == [BROKEN, SLOW]
    assert sim.wait_idle(5)


# ---------------------------------------------------------------------------------------------
# Heartbeats and data share one writer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heartbeat_app(sim: SimulatorHandle) -> Iterator[SubprocessServer]:
    """A heartbeat every 10 ms on a stream paced at 15 ms: pings land between nearly all events."""
    server = start_app(
        AZURE_OPENAI_ENDPOINT=sim.url,
        AZURE_OPENAI_API_KEY="test-key",
        AZURE_OPENAI_DEPLOYMENT="gpt-4o-mini",
        CHAT_HEARTBEAT_SECONDS="0.01",
        CHAT_FIRST_EVENT_WAIT_SECONDS="0",
    )
    yield server
    server.stop()


def test_sse_heartbeats_never_interleave_with_events_on_the_wire(heartbeat_app, sim):
    prompt = "pace it [sim:tokens=150;token-delay=15]"
    with httpx.stream("POST", f"{heartbeat_app.url}/api/chat", json={"user": prompt}, timeout=60) as reply:
        assert reply.status_code == 200
        events, pings, done = read_sse(reply)  # every block is exactly `: ping` or `data: ...`
    assert done and events[0]["type"] == "start" and events[-1]["type"] == "end"
    assert [e["type"] for e in events[1:-1]] == ["delta"] * 150
    assert pings > 0


def test_ndjson_heartbeats_never_interleave_with_events_on_the_wire(heartbeat_app, sim):
    prompt = "pace it [sim:tokens=150;token-delay=15]"
    headers = {"Accept": "application/x-ndjson"}
    with httpx.stream(
        "POST", f"{heartbeat_app.url}/api/chat", json={"user": prompt}, headers=headers, timeout=60
    ) as reply:
        assert reply.status_code == 200
        text = reply.read().decode()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert "" in lines, "the test must exercise heartbeats (blank lines)"
    data = [json.loads(line)["type"] for line in lines if line]  # each other line one whole JSON object
    assert data[0] == "start" and data[-1] == "end" and data[1:-1] == ["delta"] * 150


# ---------------------------------------------------------------------------------------------
# In process: the response against servers whose `send` misbehaves
# ---------------------------------------------------------------------------------------------


@dataclass
class FakeRun:
    """What the response needs of a run (`chatstream.run.Run`)."""

    request_id: str = "r1"
    span: object = None
    outcome: str = "running"
    started: bool = True
    logged: list[str] = field(default_factory=list)

    def cancelled(self) -> None:
        if self.outcome == "running":
            self.outcome = "cancelled"

    def fail(self, error: ChatError) -> list[Event]:
        self.outcome = f"error:{error.code}"
        return [{"type": "error", "code": error.code}, {"type": "end"}]

    def log_outcome(self) -> None:
        self.logged.append(self.outcome)


@dataclass
class Source:
    """The chain's events: `count` deltas, `gap` seconds apart; records being closed."""

    count: int
    gap: float
    closed: bool = False

    async def events(self) -> AsyncIterator[Event]:
        try:
            for i in range(self.count):
                await asyncio.sleep(self.gap)
                yield {"type": "delta", "delta_content": f"t{i}"}
        finally:
            self.closed = True


def _response(run: FakeRun, source: Source, *, heartbeat: float, deadline_in: float) -> EventStreamResponse:
    loop = asyncio.get_running_loop()
    return EventStreamResponse(
        run,  # type: ignore[arg-type]
        {"type": "start"},
        source.events(),
        encoding.SSE,
        heartbeat_seconds=heartbeat,
        deadline_at=loop.time() + deadline_in,
        deadline_error=errors.deadline_exceeded(deadline_in),
        headers={},
    )


async def _never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


def _blocks(wire: bytes) -> list[str]:
    text = wire.decode()
    assert text.endswith("\n\n"), text[-80:]
    blocks = text.split("\n\n")[:-1]
    for block in blocks:
        assert block == ": ping" or block == "data: [DONE]" or json.loads(block.removeprefix("data: ")), block
        assert block.startswith((": ping", "data: ")), block
    return blocks


def test_heartbeats_and_events_never_overlap_even_when_send_yields_halfway():
    """A server's `send` may suspend mid-write (backpressure): a heartbeat must wait for the event."""

    async def main() -> tuple[bytes, int, FakeRun, Source]:
        run, source = FakeRun(), Source(count=120, gap=0.001)
        wire = bytearray()
        overlaps = 0
        busy = False

        async def send(message: dict[str, Any]) -> None:
            nonlocal busy, overlaps
            if message["type"] != "http.response.body":
                return
            overlaps += busy
            busy = True
            body = message["body"]
            wire.extend(body[: len(body) // 2])
            await asyncio.sleep(0.002)
            wire.extend(body[len(body) // 2 :])
            busy = False

        reply = _response(run, source, heartbeat=0.0005, deadline_in=60)
        await reply({"type": "http"}, _never_disconnects, send)
        return bytes(wire), overlaps, run, source

    wire, overlaps, run, source = asyncio.run(main())
    assert overlaps == 0
    blocks = _blocks(wire)
    assert blocks.count(": ping") > 0, "the test must exercise heartbeats"
    assert [b for b in blocks if b != ": ping"][-1] == "data: [DONE]"
    assert len([b for b in blocks if b.startswith('data: {"type":"delta"')]) == 120
    assert run.logged == ["running"] and source.closed


def test_a_send_that_never_returns_cannot_hold_the_response_past_the_deadline(monkeypatch):
    """A caller that stopped reading: after the deadline the closing writes get a bounded time."""
    monkeypatch.setattr(response, "CLOSING_WRITES_SECONDS", 0.3)

    async def main() -> tuple[FakeRun, Source, int]:
        run, source = FakeRun(), Source(count=100_000, gap=0)
        writes = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal writes
            writes += 1
            if writes > 50:  # the socket buffers are full: `send` waits for a reader that never comes
                await asyncio.Event().wait()

        reply = _response(run, source, heartbeat=0.01, deadline_in=0.5)
        # Without a bound on the closing writes this waits forever (the test's own timeout fails it).
        await asyncio.wait_for(reply({"type": "http"}, _never_disconnects, send), timeout=30)
        return run, source, response.closing_tasks()

    run, source, closing = asyncio.run(main())
    assert run.logged == ["error:deadline_exceeded"]
    assert source.closed and closing == 0


def test_a_client_disconnect_ends_the_response_quietly_and_closes_the_chain():
    async def main() -> tuple[FakeRun, Source, int]:
        run, source = FakeRun(), Source(count=100_000, gap=0.001)
        writes = 0
        left = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            nonlocal writes
            writes += 1
            if writes == 20:
                left.set()

        async def receive() -> dict[str, Any]:
            await left.wait()
            return {"type": "http.disconnect"}

        reply = _response(run, source, heartbeat=0.01, deadline_in=60)
        await asyncio.wait_for(reply({"type": "http"}, receive, send), timeout=30)  # no exception
        for _ in range(100):
            if source.closed:
                break
            await asyncio.sleep(0.01)
        return run, source, writes

    run, source, writes = asyncio.run(main())
    assert source.closed and run.logged == ["cancelled"]
    assert writes < 1000
