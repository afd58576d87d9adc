"""The streaming response: events on the wire, heartbeats while idle, and a hard deadline.

Heartbeats come from a side task that only writes when nothing else was written for a while, so
the per-event path costs one clock read. The deadline is enforced here, around the whole body,
because the chain's generator may be started in one task and resumed in another (the Functions
worker calls the function and sends the body from different tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import Send

from chatstream.encoding import WireFormat
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.fanout import MultiRun
from chatstream.runner import ChainRun

log = logging.getLogger("chatstream.response")

#: Closing tasks started while the response task itself was being cancelled (client gone).
_closing: set[asyncio.Task[None]] = set()
_active = 0


def active_streams() -> int:
    """Responses between their first byte and their last (for diagnostics)."""
    return _active


def closing_tasks() -> int:
    return len(_closing)


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield b""


class EventStreamResponse(StreamingResponse):
    def __init__(
        self,
        run: ChainRun | MultiRun,
        first: Event | asyncio.Task[Event],
        rest: AsyncIterator[Event],
        wire: WireFormat,
        *,
        heartbeat_seconds: float,
        deadline_at: float,
        deadline_error: ChatError,
        headers: dict[str, str],
    ) -> None:
        super().__init__(_no_body(), media_type=wire.media_type, headers=headers)
        self.run = run
        self.first = first
        self.rest = rest
        self.wire = wire
        self.heartbeat_seconds = heartbeat_seconds
        self.deadline_at = deadline_at
        self.deadline_error = deadline_error
        self._last_write = 0.0

    async def _events(self) -> AsyncIterator[Event]:
        first = self.first
        yield await first if isinstance(first, asyncio.Task) else first
        async for event in self.rest:
            yield event

    async def _write(self, send: Send, body: bytes) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": True})
        self._last_write = asyncio.get_running_loop().time()

    async def _heartbeats(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        heartbeat = self.wire.heartbeat
        assert heartbeat is not None
        with contextlib.suppress(Exception):
            while True:
                wait = self._last_write + self.heartbeat_seconds - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                await self._write(send, heartbeat)

    async def stream_response(self, send: Send) -> None:
        global _active
        _active += 1
        try:
            await self._stream_response(send)
        finally:
            _active -= 1

    async def _stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._last_write = asyncio.get_running_loop().time()
        beat = None
        if self.wire.heartbeat is not None and self.heartbeat_seconds > 0:
            beat = asyncio.create_task(self._heartbeats(send))
        events = self._events()
        encode = self.wire.encode
        closed = False
        try:
            closing: list[Event] = []
            try:
                deadline_at = self.deadline_at
                async with asyncio.timeout_at(deadline_at):
                    async for event in events:
                        await self._write(send, encode(event))
                        # asyncio.timeout cancels once; a layer below that absorbs the cancellation
                        # (langchain awaits a task per chunk) would let the stream run on. The clock
                        # was read by _write anyway, so this check is free.
                        if self._last_write >= deadline_at:
                            raise TimeoutError
            except TimeoutError:
                closing = self.run.fail(self.deadline_error)
            except ChatError as error:  # the model failed after the response was already committed
                closing = self.run.fail(error)
            await self._close_source(events)
            closed = True
            for event in closing:
                await self._write(send, encode(event))
            if self.wire.trailer:
                await self._write(send, self.wire.trailer)
        finally:
            if beat is not None:
                beat.cancel()
            if not closed:
                # Cancelled (the client left): close the chain in a task of its own, which the
                # cancellation of this one cannot interrupt halfway.
                task = asyncio.create_task(self._close_source(events))
                _closing.add(task)
                task.add_done_callback(_closing.discard)
            self.run.log_outcome()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _close_source(self, events: AsyncIterator[Event]) -> None:
        """Close the wrapper and the chain's generator now, so the upstream request ends with them."""
        if isinstance(self.first, asyncio.Task) and not self.first.done():
            self.first.cancel()
            with contextlib.suppress(BaseException):
                await self.first
        for source in (events, self.rest):
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):
                    await aclose()
