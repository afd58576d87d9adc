"""What a wire protocol is: a request parser, a per-response event encoder and an error shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.schema import ChatRequest, Limits


class StreamEncoder(Protocol):
    """Events to bytes for one response. May keep state (open message parts, ids), so one per response."""

    @property
    def media_type(self) -> str: ...

    @property
    def heartbeat(self) -> bytes | None:
        """Written when the line has been idle for the heartbeat interval; None: this protocol has none."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Extra response headers the protocol's clients look for."""
        ...

    def encode(self, event: Event) -> bytes:
        """The bytes for `event`; empty when the protocol has nothing to say for it."""
        ...

    def close(self) -> bytes:
        """The end of the stream, after the last event (e.g. `data: [DONE]`)."""
        ...


class ChatProtocol(Protocol):
    @property
    def name(self) -> str: ...

    def claims(self, body: bytes) -> bool:
        """Whether a body sent to a shared route (`/api/chat`) is in this protocol's shape."""
        ...

    def parse(self, body: bytes, limits: Limits) -> ChatRequest:
        """The validated request; a `ChatError` (400) naming the field otherwise."""
        ...

    def encoder(self, request: Request, chat: ChatRequest) -> StreamEncoder:
        """The encoder for a streamed answer (may raise `ChatError`, e.g. 406 for `Accept`)."""
        ...

    def answer_response(
        self, answer: dict[str, Any], request: ChatRequest, headers: dict[str, str]
    ) -> Response:
        """The whole answer for `"stream": false` (the native shape comes from `runner.collect`)."""
        ...

    def error_response(self, error: ChatError, headers: dict[str, str]) -> Response:
        """An error before the stream started, in this protocol's error shape."""
        ...


class ResumableProtocol(ChatProtocol, Protocol):
    """A protocol whose streams can be resumed (`GET /api/chat/{id}/stream`)."""

    def resume_encoder(self, request: Request, first_id: int) -> StreamEncoder:
        """The encoder for a resumed stream whose first event sent is `first_id`."""
        ...
