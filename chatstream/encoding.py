"""Wire encodings of the event stream: SSE (default), NDJSON, and one JSON answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from chatstream.events import Event

SSE_DONE = b"data: [DONE]\n\n"
#: An SSE comment: ignored by every SSE parser, but it keeps proxies from calling the stream idle.
SSE_HEARTBEAT = b": ping\n\n"


def _dumps(event: Event) -> bytes:
    """Compact UTF-8 JSON (orjson: several times faster than json.dumps, same bytes for our events)."""
    return orjson.dumps(event)


@dataclass(frozen=True)
class WireFormat:
    media_type: str
    prefix: bytes
    suffix: bytes
    trailer: bytes
    heartbeat: bytes | None

    def encode(self, event: Event) -> bytes:
        return self.prefix + _dumps(event) + self.suffix

    async def encode_stream(self, events: AsyncIterator[Event | None]) -> AsyncIterator[bytes]:
        """`None` in the event stream means 'nothing to say yet': a heartbeat where the format has one."""
        async for event in events:
            if event is None:
                if self.heartbeat is not None:
                    yield self.heartbeat
                continue
            yield self.prefix + _dumps(event) + self.suffix
        if self.trailer:
            yield self.trailer


SSE = WireFormat("text/event-stream", b"data: ", b"\n\n", SSE_DONE, SSE_HEARTBEAT)
#: NDJSON has no comment syntax, so its keep-alive is an event of its own that readers skip.
NDJSON = WireFormat("application/x-ndjson", b"", b"\n", b"", b'{"type":"heartbeat"}\n')


def choose(accept: str | None) -> WireFormat:
    """SSE unless the caller asks for NDJSON and does not prefer SSE."""
    if accept and "application/x-ndjson" in accept and "text/event-stream" not in accept:
        return NDJSON
    return SSE
