"""Wire encodings of the event stream: SSE (default), NDJSON, and one JSON answer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

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
    """A stateless `protocols.StreamEncoder`: every event is one JSON object between a prefix and a suffix."""

    media_type: str
    prefix: bytes
    suffix: bytes
    trailer: bytes
    heartbeat: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)

    def encode(self, event: Event) -> bytes:
        return self.prefix + _dumps(event) + self.suffix

    def close(self) -> bytes:
        return self.trailer


SSE = WireFormat("text/event-stream", b"data: ", b"\n\n", SSE_DONE, SSE_HEARTBEAT)


class NumberedSSE:
    """SSE with an `id:` on every event, its position in the stream (0, 1, ...): what a client sends
    back as `Last-Event-ID` to resume after it. One per response (it counts)."""

    media_type = SSE.media_type
    heartbeat = SSE_HEARTBEAT
    headers: Mapping[str, str] = {}

    def __init__(self, first_id: int = 0) -> None:
        self.next_id = first_id

    def encode(self, event: Event) -> bytes:
        number = self.next_id
        self.next_id = number + 1
        return b"id: %d\ndata: %b\n\n" % (number, _dumps(event))

    def close(self) -> bytes:
        return SSE_DONE


#: NDJSON has no comment syntax; its keep-alive is a blank line, which NDJSON readers skip (a
#: `{"type":"heartbeat"}` object, as sent before, surprised readers that expect only events).
NDJSON = WireFormat("application/x-ndjson", b"", b"\n", b"", b"\n")


#: More media ranges than any real client sends; the rest of a longer header is ignored.
_MAX_RANGES = 32


def _quality(item: str) -> tuple[str, str, float] | None:
    """(type, subtype, q) of one media range; None for junk. q is clamped to [0, 1] (RFC 9110)."""
    media, *params = item.split(";")
    kind, slash, subtype = media.strip().lower().partition("/")
    if not slash or not kind or not subtype:
        return None
    q = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            if math.isnan(q):
                return None
            q = min(1.0, max(0.0, q))
    return kind, subtype, q


def _q_for(fmt: WireFormat, ranges: list[tuple[str, str, float]]) -> float | None:
    """q of the most specific range matching `fmt` (exact, then `type/*`, then `*/*`); None if none does."""
    kind, subtype = fmt.media_type.split("/")
    best: tuple[int, float] | None = None
    for r_kind, r_subtype, q in ranges:
        if (r_kind, r_subtype) == (kind, subtype):
            rank = 2
        elif r_kind == kind and r_subtype == "*":
            rank = 1
        elif (r_kind, r_subtype) == ("*", "*"):
            rank = 0
        else:
            continue
        if best is None or rank > best[0] or (rank == best[0] and q > best[1]):
            best = (rank, q)
    return None if best is None else best[1]


def choose(accept: str | None) -> WireFormat | None:
    """The stream encoding `Accept` prefers, honouring q-values; None when it refuses both (q=0).

    The highest q wins and SSE wins ties. A format the header does not mention at all is still
    acceptable, after any it does (so `Accept: application/json` keeps getting SSE, as before), but one
    it gives q=0 never is: `text/event-stream;q=0` alone gives NDJSON, and `*/*;q=0` gives None (406).
    Junk ranges are skipped, never an error.
    """
    if not accept or not accept.strip():
        return SSE
    ranges = [r for r in map(_quality, accept.split(",", _MAX_RANGES)[:_MAX_RANGES]) if r is not None]
    scored = []
    for preference, fmt in enumerate((SSE, NDJSON)):
        q = _q_for(fmt, ranges)
        if q is None:
            scored.append((1, 0.0, -preference, fmt))  # unmentioned: after every mentioned format
        elif q > 0:
            scored.append((2, q, -preference, fmt))
    if not scored:
        return None
    return max(scored, key=lambda item: item[:3])[3]
