"""A hostile model server: raw sockets on 127.0.0.1 that misbehave exactly as a test scripts them.

The simulator is ours and well-behaved; this server is for what the network and a broken upstream do:
junk bytes, truncated streams, resets, stalls, huge lines, redirects, absurd headers, idle keep-alive
closes. The app under test is pointed at it as if it were Azure OpenAI (`AZURE_OPENAI_ENDPOINT`).

A test picks a script by name in the prompt (`[hostile:NAME]`), because the app forwards the prompt and
nothing else of ours; `HostileUpstream.script(NAME, fn)` registers one. A script is an async function of
a `Conn`: it writes whatever it likes (status line, headers, body) and returns True to keep the
connection open for another request (keep-alive), False to close it.

Everything is bounded: each connection waits at most `idle_timeout` for a request, and `stop()` ends
the server and every connection it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = "127.0.0.1"
_SCRIPT = re.compile(rb"\[hostile:([A-Za-z0-9_.=-]+)\]")


@dataclass
class Seen:
    """One request as the server read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    script: str | None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Conn:
    """The server's side of one request; scripts write to it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    request: Seen
    #: Set when the peer (the app) closed its side, as far as the server can tell.
    peer_closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(
        self,
        status: int = 200,
        *,
        content_type: str = "text/event-stream",
        headers: dict[str, str] | None = None,
        length: int | None = None,
        close: bool = True,
    ) -> None:
        """Status line and headers. Without `length` the body runs until the connection closes."""
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines.append("Connection: close" if close else "Connection: keep-alive")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def event(self, payload: dict[str, Any] | str) -> None:
        """One SSE event (`data: ...` and a blank line)."""
        text = payload if isinstance(payload, str) else json.dumps(payload)
        await self.send(f"data: {text}\n\n".encode())

    async def json_response(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        await self.head(status, content_type="application/json", headers=headers, length=len(data))
        await self.send(data)

    async def hold(self, seconds: float) -> bool:
        """Say nothing for `seconds`, or until the app closes the connection (then True)."""

        async def until_eof() -> None:
            while await self.reader.read(65536):
                pass

        try:
            await asyncio.wait_for(until_eof(), seconds)
        except TimeoutError:
            return False
        except (ConnectionError, OSError):
            pass
        self.peer_closed.set()
        return True

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a crashed server or a middlebox does."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Script = Callable[[Conn], Awaitable[bool | None]]


def chunk(
    content: str | None = None,
    *,
    finish_reason: str | None = None,
    role: str | None = None,
    usage: dict[str, int] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    chunk_id: str = "chatcmpl-hostile",
    model: str = "gpt-4o-mini-2024-07-18",
) -> dict[str, Any]:
    """An Azure-shaped chat.completion.chunk."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    choices = (
        []
        if usage is not None and content is None and finish_reason is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    )
    body: dict[str, Any] = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class HostileUpstream:
    """The server, on its own event loop in a daemon thread."""

    def __init__(self, idle_timeout: float = 30.0) -> None:
        self.idle_timeout = idle_timeout
        self.scripts: dict[str, Script] = {}
        self.seen: list[Seen] = []
        self.open_connections = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hostile-upstream")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("hostile upstream did not start")
        assert self._server is not None
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}"

    def script(self, name: str, fn: Script) -> None:
        self.scripts[name] = fn

    def reset(self) -> None:
        self.seen.clear()

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once the server holds no connection (the app let go of every one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open_connections == 0:
                return True
            time.sleep(0.02)
        return False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, LOOPBACK, 0, limit=1 << 20)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _read_request(self, reader: asyncio.StreamReader) -> Seen | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        match = _SCRIPT.search(body)
        return Seen(method, path, headers, body, match.group(1).decode() if match else None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self._writers.add(writer)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                self.seen.append(request)
                conn = Conn(reader, writer, request)
                fn = self.scripts.get(request.script or "")
                if fn is None:
                    await conn.json_response(404, {"error": {"code": "NoScript", "message": "no script"}})
                    return
                if not await fn(conn):
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self._writers.discard(writer)
            self.open_connections -= 1
            with contextlib.suppress(Exception):
                writer.close()


_REASONS = {
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
