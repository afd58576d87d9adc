"""The streaming response: events on the wire, heartbeats while idle, and a hard deadline.

An ASGI response of our own (not Starlette's StreamingResponse) so that one lock serialises every
body write: the heartbeat side task and the event loop never call `send` at the same time, whatever
the server does inside `send`. The per-event path costs one uncontended lock and one clock read.

The deadline is enforced here, around the whole body, because the chain's generator may be started
in one task and resumed in another (the Functions worker calls the function and sends the body from
different tasks). After it, the closing events get a short, bounded time on the wire: a caller that
stopped reading (a full socket buffer blocks `send` forever) cannot hold the run, the model's stream
or their memory past the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatstream import logcontext
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.protocols import StreamEncoder
from chatstream.run import Run

log = logging.getLogger("chatstream.response")

#: How long the closing events (deadline or late failure), the trailer and the end of the body may
#: take on the wire. A caller that does not take them in this time has stopped reading: the response
#: is abandoned (the server closes the connection), so it cannot outlive the deadline by more.
CLOSING_WRITES_SECONDS = 5.0

#: Closing tasks of the chains' generators, kept referenced until they finish.
_closing: set[asyncio.Task[None]] = set()
_active = 0


def active_streams() -> int:
    """Responses between their first byte and their last (for diagnostics)."""
    return _active


def closing_tasks() -> int:
    return len(_closing)


class _ClientLeft(Exception):
    """The caller disconnected: nothing more is written."""


class EventStreamResponse(Response):
    """Starlette's Response for the headers and media type; the body is ours (`__call__`)."""

    def __init__(
        self,
        run: Run,
        first: Event | asyncio.Task[Event],
        rest: AsyncIterator[Event],
        encoder: StreamEncoder,
        *,
        heartbeat_seconds: float,
        deadline_at: float,
        deadline_error: ChatError,
        headers: dict[str, str],
    ) -> None:
        # Not Response.__init__: it would add `Content-Length: 0` for the empty `content`.
        self.status_code = 200
        self.media_type = encoder.media_type
        self.background = None
        self.init_headers({**encoder.headers, **headers})
        self.run = run
        self.first = first
        self.rest = rest
        self.encoder = encoder
        self.heartbeat_seconds = heartbeat_seconds
        self.deadline_at = deadline_at
        self.deadline_error = deadline_error
        self._lock = asyncio.Lock()
        self._last_write = 0.0
        #: Set by the disconnect watcher; checked after each write (a cancellation can be absorbed).
        self._client_left = False
        self._watcher_cancelled = False
        #: Once the end of the body is sent, a disconnect is no longer the client leaving early.
        self._finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The body is sent from another task than the one the endpoint ran in (the Functions worker's
        # server task): the request is bound here again, before any task of ours is created.
        with logcontext.bind(self.run.request_id, self.run.span):
            await self._send_all(receive, send)

    async def _send_all(self, receive: Receive, send: Send) -> None:
        global _active
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(self._watch_disconnect(receive, task))
        _active += 1
        try:
            await self._body(send)
        except (asyncio.CancelledError, _ClientLeft):
            if not self._client_left:
                raise
            # Our watcher's cancellation, not the server's: the response simply ends.
            if self._watcher_cancelled:
                task.uncancel()
            if task.cancelling():
                raise asyncio.CancelledError from None
        except OSError:  # servers on ASGI spec 2.4 raise on a send after the client left
            self._client_left = True
        finally:
            _active -= 1
            watcher.cancel()

    async def _watch_disconnect(self, receive: Receive, task: asyncio.Task[object]) -> None:
        """The request body was read already, so the next message is the client leaving."""
        with contextlib.suppress(Exception):
            while (await receive())["type"] != "http.disconnect":
                pass
            if not self._finished:
                self._client_left = True
                self._watcher_cancelled = True
                task.cancel()

    async def _events(self) -> AsyncIterator[Event]:
        first = self.first
        if isinstance(first, asyncio.Task):
            try:
                first = await first
            except StopAsyncIteration:  # a resumed stream that ended with nothing more for this reader
                return
        yield first
        async for event in self.rest:
            yield event

    async def _write(self, send: Send, body: bytes) -> None:
        async with self._lock:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        self._last_write = asyncio.get_running_loop().time()

    async def _heartbeats(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        heartbeat = self.encoder.heartbeat
        assert heartbeat is not None
        interval = self.heartbeat_seconds
        message = {"type": "http.response.body", "body": heartbeat, "more_body": True}
        with contextlib.suppress(Exception):
            while True:
                wait = self._last_write + interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                async with self._lock:
                    # An event may have gone out while we waited for the lock.
                    if self._last_write + interval <= loop.time():
                        await send(message)
                        self._last_write = loop.time()

    async def _body(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._last_write = loop.time()
        # The heartbeat task only starts once a heartbeat may be due: most answers end before that.
        beats: list[asyncio.Task[None]] = []
        timer = None
        if self.encoder.heartbeat is not None and self.heartbeat_seconds > 0:
            timer = loop.call_later(
                self.heartbeat_seconds, lambda: beats.append(loop.create_task(self._heartbeats(send)))
            )
        events = self._events()
        encode = self.encoder.encode
        closed = False
        try:
            closing: list[Event] = []
            try:
                deadline_at = self.deadline_at
                async with asyncio.timeout_at(deadline_at):
                    async for event in events:
                        body = encode(event)
                        if body:  # a protocol may have nothing to say for an event
                            await self._write(send, body)
                        # asyncio.timeout cancels once; a layer below that absorbs the cancellation
                        # (langchain awaits a task per chunk) would let the stream run on. The clock
                        # was read by _write anyway, so these checks are free.
                        if self._last_write >= deadline_at:
                            raise TimeoutError
                        if self._client_left:
                            raise _ClientLeft
                ended = True  # the events ran out: the chain's generator is finished, nothing to close
            except TimeoutError:
                ended, closing = False, self.run.fail(self.deadline_error)
            except ChatError as error:  # the model failed after the response was already committed
                ended, closing = False, self.run.fail(error)
            if timer is not None:
                timer.cancel()
            for beat in beats:
                # It may be holding the lock in a `send` that will never return (a caller not reading).
                await _stop(beat)
            closed = True
            if not ended:
                await asyncio.shield(self._close_in_background(events))
            # The closing events and the end of the body in one write.
            tail = b"".join(body for body in (*map(encode, closing), self.encoder.close()) if body)
            try:
                async with asyncio.timeout(CLOSING_WRITES_SECONDS):
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
            except TimeoutError:
                # Ending without the end of the body makes the server drop the connection.
                log.warning(
                    "chat stream abandoned request_id=%s: the caller took nothing for %g s",
                    self.run.request_id,
                    CLOSING_WRITES_SECONDS,
                )
                return
            self._finished = True
        finally:
            if timer is not None:
                timer.cancel()
            for beat in beats:
                beat.cancel()
            if not closed:
                # Cancelled (the client left): close the chain in a task of its own, which the
                # cancellation of this one cannot interrupt halfway.
                self._close_in_background(events)
                self.run.cancelled()  # its generator was paused at a `yield`
            self.run.log_outcome()

    def _close_in_background(self, events: AsyncIterator[Event]) -> asyncio.Task[None]:
        task = asyncio.create_task(self._close_source(events))
        _closing.add(task)
        task.add_done_callback(_closing.discard)
        return task

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


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel and wait, without swallowing a cancellation of the caller."""
    task.cancel()
    await asyncio.wait({task})
