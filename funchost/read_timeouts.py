"""Request-read timeouts: a caller that trickles its request in is cut off, as Azure's front end does.

uvicorn bounds only the idle time *between* requests (keep-alive); a client that sends its headers
one byte a second, or a body slower than it should, holds a connection and a task for as long as it
likes. This protocol is uvicorn's httptools protocol plus two timers:

- the head (request line and headers) must be complete within `header_timeout` of the connection
  opening, or of the first byte of a later request on a kept-alive connection;
- the body must be complete within `body_timeout` of the head (a total, not an idle timer: a
  byte every few seconds would reset an idle timer forever).

When one fires on a request that has begun and whose response has not, the client gets `408` with
a JSON error body (the app's error shape) and the connection closes; the app's pending `receive()`
sees a disconnect. A connection that never sent a byte, or whose response has started, just closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("funchost")

#: Defaults: generous for any real client on any network, short enough that trickling costs the
#: attacker more than us. Azure's front end uses comparable request-read limits.
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0

Phase = Literal["headers", "body"]

_MESSAGES: dict[Phase, str] = {
    "headers": "the request headers did not arrive in time",
    "body": "the request body did not arrive in time",
}


def _timeout_response(phase: Phase) -> bytes:
    body = json.dumps({"error": {"code": "request_timeout", "message": _MESSAGES[phase]}}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class HostConfig(uvicorn.Config):
    """uvicorn's Config plus the two read timeouts (seconds; 0 or less turns one off)."""

    def __init__(
        self,
        *args: Any,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout


class ReadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on reading each request (see module docstring)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._header_timeout = float(getattr(config, "header_timeout", DEFAULT_HEADER_TIMEOUT))
        self._body_timeout = float(getattr(config, "body_timeout", DEFAULT_BODY_TIMEOUT))
        self._read_timer: asyncio.TimerHandle | None = None
        #: Some bytes of a request arrived and it is not complete yet.
        self._reading = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading = True
        if self._read_timer is None:  # a later request on a kept-alive connection
            self._arm("headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading = False
        self._disarm()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection belongs to the WebSocket protocol from here on
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: Phase) -> None:
        self._disarm()
        seconds = self._header_timeout if phase == "headers" else self._body_timeout
        if seconds > 0:
            self._read_timer = self.loop.call_later(seconds, self._timed_out, phase)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self, phase: Phase) -> None:
        self._read_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        log.info("request read timeout: %s from %s not complete, closing the connection", phase, client)
        cycle = self.cycle
        if cycle is not None and phase == "body":
            # Nothing more from the app may reach this connection; its receive() sees a disconnect.
            cycle.disconnected = True
            cycle.message_event.set()
        if self._nothing_on_the_wire(phase):
            self.transport.write(_timeout_response(phase))
        self.transport.close()

    def _nothing_on_the_wire(self, phase: Phase) -> bool:
        """True when a 408 cannot land inside another response (one started, or one pipelined ahead)."""
        if self.pipeline or not self._reading:  # no request begun: a silent close, like keep-alive's
            return False
        if phase == "headers":
            return self.cycle is None or self.cycle.response_complete
        return self.cycle is not None and not self.cycle.response_started
