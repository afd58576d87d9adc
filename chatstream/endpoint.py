"""The chat endpoint as a plain Starlette handler: request bytes in, a streamed (or whole) answer out.

What the bytes look like on either side is the protocol's (`chatstream.protocols`); what happens in
between (validation, the run, the first-event wait, disconnects, the deadline) is the same for all.
Nothing here is Azure-specific; `azure_http.py` only routes to it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from chatstream import errors, logcontext
from chatstream.cors import CorsPolicy
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.fallback import FallbackRun
from chatstream.protocols import NATIVE, ChatProtocol, StreamEncoder
from chatstream.protocols.base import ResumableProtocol
from chatstream.response import EventStreamResponse
from chatstream.resumable import LogReader, ResumableStreams
from chatstream.run import Run
from chatstream.runner import ChainRun, collect
from chatstream.schema import ChatRequest
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


#: How long `POST /api/chat/{id}/stop` waits for a local run to end before answering 202.
STOP_WAIT_SECONDS = 5.0


def last_event_id(request: Request) -> int:
    """`Last-Event-ID` (what EventSource sends) or `?last_event_id=`; -1 when neither is there."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or not raw.strip():
        return -1
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 12:
        raise errors.invalid_last_event_id()
    return int(raw)


class ChatEndpoint:
    def __init__(
        self,
        service: ChatService,
        streams: ResumableStreams | None = None,
        protocols: Sequence[ResumableProtocol] = (),
    ) -> None:
        self.service = service
        self.cors = CorsPolicy(service.settings.cors_origin_list)
        self.streams = streams or ResumableStreams(service.settings)
        # Only the other protocols name streams by an id of their own (the AI SDK's chat id).
        self.streams.alias_prefixes = tuple(f"{p.name}:" for p in protocols)
        #: Streams running on this instance, by request id, for `stop` (resumable or not).
        self.live: weakref.WeakValueDictionary[str, Run] = weakref.WeakValueDictionary()
        #: The protocols a resumed stream may be in, by name.
        self.protocols: dict[str, ResumableProtocol] = {p.name: p for p in (NATIVE, *protocols)}

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
            resumable = chat_request.stream and self._resumable(protocol, chat_request)
            # Checked before the model is called: a 406 costs nothing upstream.
            encoder = None
            if resumable:
                encoder = self.protocols[protocol.name].resume_encoder(request, 0)
            elif chat_request.stream:
                encoder = protocol.encoder(request, chat_request)
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
            if resumable:
                return await self._stream_resumable(request, run, protocol, chat_request, encoder, cors)
            self.live[run.request_id] = run
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

    def _resumable(self, protocol: ChatProtocol, chat_request: ChatRequest) -> bool:
        wanted = chat_request.resumable
        if wanted is None:
            wanted = self.service.settings.resumable
        return wanted and protocol.name in self.protocols

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

    async def _stream_resumable(
        self,
        request: Request,
        run: Run,
        protocol: ChatProtocol,
        chat_request: ChatRequest,
        encoder: StreamEncoder,
        cors: dict[str, str],
    ) -> Response:
        """The run goes on in a task of its own; this response is its first reader."""
        settings = self.service.settings
        deadline_at = asyncio.get_running_loop().time() + settings.deadline_seconds
        alias = chat_request.resume_alias
        try:
            stream = self.streams.start(
                run,
                protocol.name,
                alias=f"{protocol.name}:{alias}" if alias else None,
                deadline_at=deadline_at,
                deadline_error=errors.deadline_exceeded(settings.deadline_seconds),
            )
        except ChatError:
            run.log_outcome()
            raise
        self.live[run.request_id] = run
        return await self._stream(request, LogReader(stream, -1), encoder, cors, deadline_at=deadline_at)

    async def resume(self, request: Request) -> Response:
        """`GET /api/chat/{id}/stream`: the events after `Last-Event-ID`, then the live rest.

        `id` is a stream's request id (`start.id`), or an AI SDK chat id: the AI SDK's `resumeStream`
        asks this route for its chat's running stream, and takes 204 as "none"."""
        request_id = request_id_for(request)
        if request.method == "OPTIONS":
            return self.cors.preflight(request, request_id, methods=("GET",))
        cors = self.cors.headers(request)
        headers = {"X-Request-Id": request_id, "Cache-Control": "no-store", **cors}
        key = request.path_params.get("id", "")
        try:
            after = last_event_id(request)
            found = await self.streams.reader(key, after)
            if found is None:
                if after < 0:  # the AI SDK's probe, or a client that never got an event
                    return Response(status_code=204, headers=headers)
                raise errors.stream_not_found(key)
            reader, protocol_name = found
            protocol = self.protocols.get(protocol_name, NATIVE)
            if protocol is not NATIVE and after >= 0:
                # Only native streams resume mid-way; the others replay from their start.
                after = -1
                found = await self.streams.reader(key, after)
                if found is None:
                    raise errors.stream_not_found(key)
                reader = found[0]
            encoder = protocol.resume_encoder(request, after + 1)
            with logcontext.bind(reader.request_id):
                return await self._stream(request, reader, encoder, cors)
        except ClientGone:
            return Response(status_code=499, headers={"X-Request-Id": request_id})
        except ChatError as error:
            return NATIVE.error_response(error, headers)
        except Exception:
            log.exception("chat resume failed request_id=%s", request_id)
            return NATIVE.error_response(errors.internal_error(), headers)

    async def stop(self, request: Request) -> Response:
        """`POST /api/chat/{id}/stop`: end a running stream cleanly; its caller gets `end` with
        `finish_reason: "cancelled"` and the usage so far."""
        request_id = request_id_for(request)
        if request.method == "OPTIONS":
            return self.cors.preflight(request, request_id)
        headers = {"X-Request-Id": request_id, "Cache-Control": "no-store", **self.cors.headers(request)}
        key = request.path_params.get("id", "")
        try:
            run = self.live.get(key)
            stream = self.streams.find(key)
            if run is None and stream is not None:
                run = stream.run
            if run is None:
                if await self.streams.request_stop(key):
                    return JSONResponse({"id": key, "status": "stopping"}, status_code=202, headers=headers)
                raise errors.stream_not_found(key)
            if run.finished:
                raise errors.stream_finished(key)
            if stream is not None:
                stream.stop()
            else:
                run.stop()
            loop = asyncio.get_running_loop()
            give_up = loop.time() + STOP_WAIT_SECONDS
            # Runs have no completion event of their own; a short poll for the rare stop is enough.
            while not run.finished and loop.time() < give_up:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if not run.finished:
                return JSONResponse({"id": key, "status": "stopping"}, status_code=202, headers=headers)
            return JSONResponse({"id": key, "status": "stopped"}, headers=headers)
        except ChatError as error:
            return NATIVE.error_response(error, headers)

    async def _stream(
        self,
        request: Request,
        run: Run,
        encoder: StreamEncoder,
        cors: dict[str, str],
        *,
        deadline_at: float | None = None,
    ) -> Response:
        """Hold the headers until the model accepted the request (so failures get a real status),
        but no longer than the first-event wait, after which heartbeats keep the line alive."""
        settings = self.service.settings
        loop = asyncio.get_running_loop()
        if deadline_at is None:
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
            except StopAsyncIteration:
                # A resume after the last event of a finished stream (EventSource reconnects so once the
                # body ends): nothing to send, and 204 is what tells EventSource to stop reconnecting.
                run.log_outcome()
                return Response(status_code=204, headers={"X-Request-Id": run.request_id, **cors})
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
