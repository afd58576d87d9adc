"""The app's own protocol: `POST /api/chat` with `ChatRequest`, events as SSE (or NDJSON) JSON objects,
errors as `{"error": {"code", "message", ...}}` (docs/protocol.md)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstream import encoding, errors
from chatstream.errors import ChatError
from chatstream.protocols.base import StreamEncoder
from chatstream.schema import ChatRequest, Limits


def parse_request(body: bytes, limits: Limits) -> ChatRequest:
    """Strict JSON-mode validation: `"stream": "yes"` or `"max_tokens": 5.0` are errors, not guesses."""
    if not body.strip():
        raise errors.invalid_json("the body is empty")
    try:
        return ChatRequest.model_validate_json(body, strict=True, context={"limits": limits})
    except ValidationError as exc:
        raise errors.from_validation_error(exc) from None


def error_response(error: ChatError, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers={**error.headers, **headers})


class NativeProtocol:
    name = "native"

    def claims(self, body: bytes) -> bool:
        return True

    def parse(self, body: bytes, limits: Limits) -> ChatRequest:
        return parse_request(body, limits)

    def encoder(self, request: Request, chat: ChatRequest) -> StreamEncoder:
        """SSE or NDJSON as `Accept` prefers; 406 when it refuses both."""
        wire = encoding.choose(request.headers.get("accept"))
        if wire is None:
            raise errors.not_acceptable()
        return wire

    def resume_encoder(self, request: Request, first_id: int) -> StreamEncoder:
        """The encoder of a resumable stream that starts at event `first_id`: SSE events carry their
        `id:`. NDJSON has no ids: an event's id is its line number among the non-blank lines, from 0."""
        wire = encoding.choose(request.headers.get("accept"))
        if wire is None:
            raise errors.not_acceptable()
        return encoding.NumberedSSE(first_id) if wire is encoding.SSE else wire

    def answer_response(
        self, answer: dict[str, Any], request: ChatRequest, headers: dict[str, str]
    ) -> Response:
        return JSONResponse(answer, headers=headers)

    def error_response(self, error: ChatError, headers: dict[str, str]) -> Response:
        return error_response(error, headers)


NATIVE = NativeProtocol()
