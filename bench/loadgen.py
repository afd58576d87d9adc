"""A deliberately cheap HTTP/1.1 load generator: one `asyncio.Protocol` per stream, no HTTP library.

It only timestamps arrivals and counts delta events (by a byte marker per contender), so its own cost
per event is a few microseconds; the benchmark reports its CPU so a reader can check that the client
was never the bottleneck. Requests carry `Connection: close`, so end of body = end of connection.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    body: bytes
    #: Bytes that occur once in every forwarded content delta and nowhere else.
    marker: bytes
    #: Bytes that only a complete answer ends with, and that only a failed one contains.
    end_marker: bytes = b"[DONE]"
    error_marker: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def request(self) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\nConnection: close\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in self.headers)
            + f"Content-Length: {len(self.body)}\r\n\r\n"
        )
        return head.encode() + self.body


@dataclass
class StreamResult:
    started: float = 0.0
    status: int = 0
    first_delta: float | None = None
    last_delta: float | None = None
    deltas: int = 0
    gaps: list[float] = field(default_factory=list)
    #: When the gaps over 100 ms ended (perf_counter), to tell a stall from steady slowness.
    long_gaps_at: list[float] = field(default_factory=list)
    ended: float | None = None
    complete: bool = False
    error: str | None = None
    head: bytes = b""

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.deltas > 0 and self.complete


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, target: Target, result: StreamResult, done: asyncio.Future[None]) -> None:
        self.target = target
        self.result = result
        self.done = done
        self.marker = target.marker
        self.keep = max(len(target.marker), len(target.end_marker), len(target.error_marker or b"")) - 1
        self.tail = b""
        self.in_body = False
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.target.request())

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        result = self.result
        if not self.in_body:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            result.head = self.buffer[:end]
            try:
                result.status = int(self.buffer[9:12])
            except ValueError:
                result.status = -1
            data = self.buffer[end + 4 :]
            self.buffer = b""
            self.in_body = True
            if not data:
                return
        window = self.tail + data
        found = window.count(self.marker) - self.tail.count(self.marker)
        if self.target.end_marker in window:
            result.complete = True
        if self.target.error_marker is not None and self.target.error_marker in window:
            result.error = "error event in the stream"
        self.tail = window[-self.keep :] if self.keep else b""
        if found:
            if result.first_delta is None:
                result.first_delta = now
            elif result.last_delta is not None:
                gap = now - result.last_delta
                result.gaps.append(gap)
                if gap > 0.1:
                    result.long_gaps_at.append(now)
            result.last_delta = now
            result.deltas += found

    def connection_lost(self, exc: Exception | None) -> None:
        self.result.ended = time.perf_counter()
        if exc is not None and self.result.error is None:
            self.result.error = repr(exc)
        if not self.done.done():
            self.done.set_result(None)


async def stream_once(target: Target, limit_s: float) -> StreamResult:
    """One request; the result holds timings even when it failed."""
    loop = asyncio.get_running_loop()
    result = StreamResult(started=time.perf_counter())
    done: asyncio.Future[None] = loop.create_future()
    transport = None
    try:
        async with asyncio.timeout(limit_s):
            transport, _ = await loop.create_connection(
                lambda: _StreamProtocol(target, result, done), target.host, target.port
            )
            await done
    except TimeoutError:
        result.error = "timeout"
    except OSError as exc:
        result.error = repr(exc)
    finally:
        if transport is not None:
            transport.close()
    if result.error is None and result.status != 200:
        result.error = f"HTTP {result.status}"
    if result.error is None and not result.complete:
        result.error = "incomplete answer"
    return result


async def many(target: Target, count: int, spread_s: float, limit_s: float) -> list[StreamResult]:
    """`count` concurrent streams, their starts spread evenly over `spread_s` (a realistic ramp)."""

    async def one(i: int) -> StreamResult:
        await asyncio.sleep(spread_s * i / max(1, count))
        return await stream_once(target, limit_s)

    return list(await asyncio.gather(*(one(i) for i in range(count))))
