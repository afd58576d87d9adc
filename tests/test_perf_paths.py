"""The cheaper per-read and per-request paths keep their guarantees (issue 17, part 2).

- The body's read timeout is one timer per stream, not one re-armed per network read, and still bounds
  every silence of the upstream (never the total length of a stream).
- An http:// upstream never builds a TLS context (loading the CA bundle costs ~0.1 s on the first request).
- Text chunks built without `model_construct` are the same objects LangChain builds.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import pytest

from chatstream import aiohttp_transport
from chatstream.aiohttp_transport import AiohttpTransport
from tests.support.hostile import Conn, HostileUpstream, chunk
from tests.test_resilience import deltas, read_sse

WORDS = [f"w{i} " for i in range(8)]


class _DripServer:
    """A chunked HTTP response of `chunks` small writes, `gap` seconds apart, from a thread of its own
    (so its sleeps are not timers of the loop under test). One connection per request."""

    def __init__(self, chunks: int, gap: float) -> None:
        self.chunks, self.gap = chunks, gap
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                head = conn.recv(65536)
                if not head.startswith(b"POST "):  # a TLS handshake: refuse it
                    continue
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for i in range(self.chunks):
                    data = f"data: {i}\n\n".encode()
                    conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                    time.sleep(self.gap)
                conn.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _count_timers(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Counts `call_at` (which `call_later` uses) on this loop from now on."""
    count = [0]
    original: Callable[..., Any] = loop.call_at

    def counting(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(*args, **kwargs)

    loop.call_at = counting  # type: ignore[method-assign]
    return count


def test_reading_a_body_arms_no_timer_per_network_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp's own sock_read cancels and re-creates a timer on every read (100 reads: ~100 timers)."""
    monkeypatch.delenv("HTTP_PROXY", raising=False)

    async def scenario() -> tuple[int, int]:
        server = _DripServer(100, 0.002)
        url = f"http://127.0.0.1:{server.port}/v1/chat"
        timeout = httpx2.Timeout(10.0, read=5.0)
        async with httpx2.AsyncClient(transport=AiohttpTransport(), timeout=timeout) as client:
            async with client.stream("POST", url, content=b"{}") as response:
                reads = 0
                timers = _count_timers(asyncio.get_running_loop())
                async for _data in response.aiter_raw():
                    reads += 1
        server.close()
        return reads, timers[0]

    reads, timers = asyncio.run(scenario())
    assert reads >= 50, "the server's writes should arrive as separate reads"
    assert timers <= 5, f"{timers} timers armed for {reads} reads"


def test_a_silence_longer_than_the_read_timeout_still_fails_the_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HTTP_PROXY", raising=False)

    async def scenario() -> tuple[list[bytes], float, BaseException | None]:
        gate = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
            await writer.drain()
            await gate.wait()  # then silence, until the test ends
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat"
        received: list[bytes] = []
        failure: BaseException | None = None
        timeout = httpx2.Timeout(10.0, read=0.5)
        started = time.monotonic()
        async with httpx2.AsyncClient(transport=AiohttpTransport(), timeout=timeout) as client:
            try:
                async with asyncio.timeout(20):
                    async with client.stream("POST", url, content=b"{}") as response:
                        async for data in response.aiter_raw():
                            received.append(data)
            except httpx2.ReadTimeout as exc:
                failure = exc
        elapsed = time.monotonic() - started
        gate.set()
        server.close()
        return received, elapsed, failure

    received, elapsed, failure = asyncio.run(scenario())
    assert b"".join(received) == b"hello"
    assert isinstance(failure, httpx2.ReadTimeout)
    assert 0.4 <= elapsed < 15


def test_an_http_upstream_never_builds_a_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    built: list[int] = []
    real = httpx2.create_ssl_context

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(aiohttp_transport.httpx2, "create_ssl_context", counting)

    async def scenario() -> None:
        server = _DripServer(2, 0)
        port = server.port
        async with httpx2.AsyncClient(transport=AiohttpTransport()) as client:
            for _ in range(2):
                response = await client.post(f"http://127.0.0.1:{port}/v1/chat", content=b"{}")
                assert response.status_code == 200
            assert built == [], "an http:// upstream needs no TLS context"
            # An https:// one does (the plain server fails the handshake): built once, in a worker thread.
            for _ in range(2):
                with pytest.raises((httpx2.ConnectError, httpx2.RemoteProtocolError)):
                    await client.post(f"https://127.0.0.1:{port}/v1/chat", content=b"{}")
            assert built == [1]
        server.close()

    asyncio.run(scenario())


def test_text_chunks_are_built_as_langchain_builds_them() -> None:
    from langchain_core.messages import AIMessageChunk

    from chatstream import lean_model

    assert lean_model._text_message is lean_model._direct_text_message, "the fast constructor is in use"
    fast = lean_model._text_message("Hello", "chatcmpl-1")
    stock = AIMessageChunk(content="Hello", id="chatcmpl-1", response_metadata={"model_provider": "openai"})
    assert fast == stock
    assert fast.model_dump() == stock.model_dump()
    assert (fast + fast).content == "HelloHello"
    fast.id = "other"  # assignable, as the lean path does for chunks without an id
    assert fast.id == "other"


def test_a_stream_longer_than_the_read_timeout_is_never_cut_while_text_flows(
    hostile_app, hostile: HostileUpstream
) -> None:
    """The app's read timeout is 2 s: this answer takes ~5.6 s, a word every 0.7 s, and must arrive whole."""

    async def drip(conn: Conn) -> bool:
        await conn.head()
        await conn.event(chunk("", role="assistant"))
        for word in WORDS:
            if await conn.hold(0.7):
                return True
            await conn.event(chunk(word))
        await conn.event(chunk(finish_reason="stop"))
        await conn.send(b"data: [DONE]\n\n")
        return False

    hostile.script("drip", drip)
    with httpx.stream(
        "POST", f"{hostile_app.url}/api/chat", json={"user": "[hostile:drip]"}, timeout=30
    ) as response:
        assert response.status_code == 200
        events, _pings, done = read_sse(response)
    assert done
    assert deltas(events) == "".join(WORDS)
    assert not [e for e in events if e["type"] == "error"]


def test_a_silence_after_steady_text_is_upstream_timeout_counted_from_the_last_read(
    hostile_app, hostile: HostileUpstream
) -> None:
    async def drip_then_stall(conn: Conn) -> bool:
        await conn.head()
        await conn.event(chunk("", role="assistant"))
        for word in WORDS[:5]:
            if await conn.hold(0.6):
                return True
            await conn.event(chunk(word))
        await conn.hold(20)
        return False

    hostile.script("drip-then-stall", drip_then_stall)
    arrivals: list[tuple[float, dict]] = []
    with httpx.stream(
        "POST", f"{hostile_app.url}/api/chat", json={"user": "[hostile:drip-then-stall]"}, timeout=40
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                arrivals.append((time.monotonic(), json.loads(line[6:])))
    events = [e for _t, e in arrivals]
    assert deltas(events) == "".join(WORDS[:5])
    errors = [(t, e) for t, e in arrivals if e["type"] == "error"]
    assert [e["code"] for _t, e in errors] == ["upstream_timeout"]
    last_delta = max(t for t, e in arrivals if e["type"] == "delta")
    # 2 s of silence after the last word (generous bounds: a busy machine is slow, never early).
    assert 1.5 <= errors[0][0] - last_delta < 12
