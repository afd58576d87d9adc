"""The chat endpoint as a plain Starlette handler: request bytes in, SSE/NDJSON/JSON out.

Nothing here is Azure-specific; `function_app.py` only routes to it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from chatstream import encoding, errors
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.runner import collect
from chatstream.schema import ChatRequest
from chatstream.service import ChatService

log = logging.getLogger("chatstream.endpoint")

#: Headers that keep proxies and browsers from buffering or transforming the stream.
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def request_id_for(request: Request) -> str:
    """The Functions invocation id when there is one, so our logs line up with the host's."""
    return request.headers.get("x-ms-invocation-id") or uuid.uuid4().hex


def error_response(error: ChatError, request_id: str) -> JSONResponse:
    headers = {"X-Request-Id": request_id, "Cache-Control": "no-store", **error.headers}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """Stops reading as soon as the limit is passed, whatever Content-Length claimed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.body_too_large(limit)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise errors.body_too_large(limit)
    return bytes(body)


def parse_request(body: bytes, service: ChatService) -> ChatRequest:
    if not body.strip():
        raise errors.invalid_json("the body is empty")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.invalid_json(str(exc)) from None
    try:
        return ChatRequest.model_validate(data, context={"limits": service.limits})
    except ValidationError as exc:
        raise errors.from_validation_error(exc) from None


async def _prepend(first: Event, rest: AsyncIterator[Event]) -> AsyncIterator[Event]:
    yield first
    async for event in rest:
        yield event


class ChatEndpoint:
    def __init__(self, service: ChatService) -> None:
        self.service = service

    async def handle(self, request: Request) -> Response:
        request_id = request_id_for(request)
        try:
            body = await read_body(request, self.service.settings.max_body_bytes)
            chat_request = parse_request(body, self.service)
            run = self.service.run(chat_request, request_id)
            if not chat_request.stream:
                answer = await collect(run)
                return JSONResponse(answer, headers={"X-Request-Id": request_id, "Cache-Control": "no-store"})
            wire = encoding.choose(request.headers.get("accept"))
            stream = run.events()
            # Hold the response until the upstream accepted the request, so failures get a real status.
            first = await anext(stream)
        except ChatError as error:
            return error_response(error, request_id)
        except Exception:
            log.exception("chat request %s failed", request_id)
            return error_response(errors.internal_error(), request_id)
        return StreamingResponse(
            wire.encode_stream(_prepend(first, stream)),
            media_type=wire.media_type,
            headers={**STREAM_HEADERS, "X-Request-Id": request_id},
        )
