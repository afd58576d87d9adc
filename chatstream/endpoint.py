"""The chat endpoint as a plain Starlette handler: request bytes in, a streamed (or whole) answer out.

What the bytes look like on either side is the protocol's (`chatstream.protocols`); what happens in
between (validation, the run, the first-event wait, disconnects, the deadline) is the same for all.
Nothing here is Azure-specific; `azure_http.py` only routes to it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from chatstream import errors, logcontext
from chatstream.cors import CorsPolicy
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.fallback import FallbackRun
from chatstream.protocols import NATIVE, ChatProtocol, StreamEncoder
from chatstream.response import EventStreamResponse
from chatstream.run import Run
from chatstream.runner import ChainRun, collect
from chatstream.service import ChatService

log = logging.getLogger("chatstream.endpoint")
T = TypeVar("T")

#: Headers that keep proxies and browsers from buffering or transforming the stream.
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def request_id_for(request: Request) -> str:
    """The Functions invocation id when there is one, so our logs line up with the host's."""
    return request.headers.get("x-ms-invocation-id") or uuid.uuid4().hex


async def read_body(request: Request, limit: int) -> bytes:
    """Stops reading as soon as the limit is passed, whatever Content-Length claimed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.body_too_large(limit)
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise errors.body_too_large(limit)
    except ClientDisconnect:  # gone mid-body (or cut off by the host's read timeout): nobody to answer
        raise ClientGone from None
    return bytes(body)


class ClientGone(Exception):
    """The caller disconnected before there was anything to answer."""


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body was read already, so nothing else can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


#: How often a cancellation is repeated while the cancelled work runs on (a layer below absorbed it).
_CANCEL_REPEAT_SECONDS = 0.5


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel and wait until it is done: langchain awaits a task per chunk, and a cancellation that
    lands as that task completes is absorbed, so one `cancel()` may not stop the work."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_CANCEL_REPEAT_SECONDS)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


async def _unless_client_leaves(
    request: Request, run: Run, work: Awaitable[T], *, deadline_at: float, deadline: ChatError
) -> T:
    """Runs `work` but cancels it (and so the model call) as soon as the client disconnects or the
    deadline passes (then the caller gets `deadline_exceeded`)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        timeout = max(0.0, deadline_at - asyncio.get_running_loop().time())
        await asyncio.wait({task, gone}, timeout=timeout, return_when="FIRST_COMPLETED")
        if not task.done():
            if not gone.done():
                run.fail(deadline)  # the outcome the log line reports
                await _cancel(task)
                raise deadline
            await _cancel(task)
            run.cancelled()
            raise ClientGone
        return task.result()
    except asyncio.CancelledError:
        await _cancel(task)
        raise
    finally:
        gone.cancel()


class ChatEndpoint:
    def __init__(self, service: ChatService) -> None:
        self.service = service
        self.cors = CorsPolicy(service.settings.cors_origin_list)

    async def handle(self, request: Request, *protocols: ChatProtocol) -> Response:
        """Answer in the first of `protocols` that claims the body (the app's own when none is given)."""
        # Bound in the task the function body runs in; the streamed body binds again in its own.
        with logcontext.bind(request_id_for(request)) as bound:
            return await self._handle(request, bound, *protocols)

    async def _handle(
        self, request: Request, bound: logcontext.RequestLog, *protocols: ChatProtocol
    ) -> Response:
        request_id = bound.request_id
        if request.method == "OPTIONS":
            return self.cors.preflight(request, request_id)
        cors = self.cors.headers(request)
        headers = {"X-Request-Id": request_id, "Cache-Control": "no-store", **cors}
        protocol: ChatProtocol = protocols[-1] if protocols else NATIVE
        try:
            body = await read_body(request, self.service.settings.max_body_bytes)
            protocol = next((p for p in protocols if p.claims(body)), protocol)
            chat_request = protocol.parse(body, self.service.limits)
            # Checked before the model is called: a 406 costs nothing upstream.
            encoder = protocol.encoder(request, chat_request) if chat_request.stream else None
            run = self.service.run(chat_request, request_id)
            bound.use_span(run.span)  # the body's records (retries, failures) join the run's operation
            if not chat_request.stream:
                # The schema only lets one deployment (perhaps with fallbacks) answer as JSON.
                assert isinstance(run, ChainRun | FallbackRun)
                settings = self.service.settings
                try:
                    answer = await _unless_client_leaves(
                        request,
                        run,
                        collect(run),
                        deadline_at=asyncio.get_running_loop().time() + settings.deadline_seconds,
                        deadline=errors.deadline_exceeded(settings.deadline_seconds),
                    )
                finally:
                    run.log_outcome()
                return protocol.answer_response(answer, chat_request, headers)
            assert encoder is not None
            return await self._stream(request, run, encoder, cors)
        except ClientGone:
            return Response(status_code=499, headers={"X-Request-Id": request_id})
        except ChatError as error:
            log.info(
                "chat rejected request_id=%s status=%d code=%s param=%s",
                request_id,
                error.status,
                error.code,
                error.param,
            )
            return protocol.error_response(error, headers)
        except Exception:
            log.exception("chat request failed request_id=%s", request_id)
            return protocol.error_response(errors.internal_error(), headers)

    def read_only(self, request: Request, respond: Callable[[Mapping[str, str]], Response]) -> Response:
        """A GET route under the same CORS allow-list (its preflight included); `respond` gets the
        headers every answer carries."""
        request_id = request_id_for(request)
        if request.method == "OPTIONS":
            return self.cors.preflight(request, request_id, methods=("GET",))
        return respond(
            {"X-Request-Id": request_id, "Cache-Control": "no-cache", **self.cors.headers(request)}
        )

    def catalog(self, request: Request) -> Response:
        """The chains and deployments a request may name; `no-cache` so a changed setting shows at once."""
        return JSONResponse(self.service.catalog(), headers={"Cache-Control": "no-cache"})

    async def _stream(
        self, request: Request, run: Run, encoder: StreamEncoder, cors: dict[str, str]
    ) -> Response:
        """Hold the headers until the model accepted the request (so failures get a real status),
        but no longer than the first-event wait, after which heartbeats keep the line alive."""
        settings = self.service.settings
        loop = asyncio.get_running_loop()
        deadline_at = loop.time() + settings.deadline_seconds
        stream = run.events()
        waiting: asyncio.Task[Event] = asyncio.ensure_future(anext(stream))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait(
                {waiting, gone}, timeout=settings.first_event_wait_seconds, return_when="FIRST_COMPLETED"
            )
            if gone.done() and not waiting.done():
                raise ClientGone
        except (asyncio.CancelledError, ClientGone):
            await _cancel(waiting)
            await stream.aclose()
            run.cancelled()  # perhaps before its generator ever ran
            run.log_outcome()
            raise
        finally:
            gone.cancel()
        first: Event | asyncio.Task[Event] = waiting
        if waiting.done():
            try:
                first = waiting.result()
            except ChatError:
                run.log_outcome()
                raise
        return EventStreamResponse(
            run,
            first,
            stream,
            encoder,
            heartbeat_seconds=settings.heartbeat_seconds,
            deadline_at=deadline_at,
            deadline_error=errors.deadline_exceeded(settings.deadline_seconds),
            headers={**STREAM_HEADERS, "X-Request-Id": run.request_id, **cors},
        )
