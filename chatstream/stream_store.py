"""The seam between resumable streams and where their events are shared: `SharedStreamStore`.

The instance that runs a resumable stream always keeps its events in memory (`chatstream.resumable`), so
a reader on the same instance never touches a store. A shared store is what lets a reader, or a stop, on
another instance reach the stream: the producing instance mirrors its events into it in small batches and
polls it for a stop or a reader elsewhere. Only the events the caller would have received are stored
(never the request, a key or a header), bounded per stream in bytes and in time (TTL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoredEvents:
    """What a read found: the events after the cursor, and where the next read starts."""

    #: Each event's JSON (one native event object), in stream order.
    events: list[bytes]
    #: Opaque position after the last event returned; pass it to the next `read`.
    cursor: int
    #: The producer wrote its last event: nothing will follow `events`.
    finished: bool
    #: The producer stopped recording (the stream outgrew its byte limit): it cannot be resumed.
    truncated: bool
    #: The wire protocol the stream was started in (`native` or `ai-sdk`).
    protocol: str
    #: Opaque; changes whenever the producer writes the stream (an append, or `beat` when it has nothing to
    #: append). A reader that sees it unchanged for `PRODUCER_LOST_SECONDS` of its own clock knows the
    #: producing instance is gone: no wall clocks of two instances are compared. Compare for equality only.
    beat: str = ""


@dataclass(frozen=True)
class StreamControl:
    """What other instances asked of a running stream."""

    stop_requested: bool
    #: Wall-clock time (`time.time()`) a reader on another instance last said it is reading; None: never.
    reader_seen_at: float | None
    #: A reader saw the producer's beat stop (`report_lost`): a resume of the unfinished copy fails at once.
    producer_lost: bool = False


class SharedStreamStore(Protocol):
    """A store of resumable streams shared by every instance of the app (e.g. Azure Blob Storage).

    Streams are named by their request id. Every method is safe to call concurrently from several
    instances; only the producing instance writes a stream's events. Implementations enforce the TTL
    (`read`, `resolve` and `control` treat an expired stream as unknown) and clean up after themselves.

    Liveness: the producer writes the stream (`append`, else `beat`) every few seconds while it runs, and
    every write changes `StoredEvents.beat`; a reader times the changes on its own monotonic clock.
    """

    async def create(self, stream_id: str, *, protocol: str, alias: str | None = None) -> None:
        """Start an empty stream; `alias` (e.g. an AI SDK chat id) then resolves to it."""
        ...

    async def append(self, stream_id: str, events: Sequence[bytes]) -> None:
        """Add events (each one JSON object) at the end, in order."""
        ...

    async def finish(self, stream_id: str, *, truncated: bool = False) -> None:
        """No more events will come; `truncated`: the recording stopped early (not resumable)."""
        ...

    async def beat(self, stream_id: str) -> None:
        """The producer is alive but has nothing to append: change the stream's `StoredEvents.beat` (one
        cheap write, no event). The producer calls it every `BEAT_SECONDS` without an append."""
        ...

    async def read(self, stream_id: str, cursor: int = 0) -> StoredEvents | None:
        """The events from `cursor` (0: the first); None when the stream is unknown or expired."""
        ...

    async def resolve(self, alias: str) -> str | None:
        """The stream `alias` names, if it is known and not expired."""
        ...

    async def request_stop(self, stream_id: str) -> bool:
        """Ask the producing instance to stop the stream; False when it is unknown or finished."""
        ...

    async def touch_reader(self, stream_id: str) -> None:
        """A reader on this instance is reading the stream (keeps its producer past the grace period)."""
        ...

    async def report_lost(self, stream_id: str) -> None:
        """A reader saw the producer's beat stop: later resumes of the unfinished stream learn it from
        `control` (`producer_lost`) at once instead of waiting for the beat themselves."""
        ...

    async def control(self, stream_id: str) -> StreamControl:
        """What other instances asked of the stream (the producer polls this), or said of it."""
        ...

    async def aclose(self) -> None: ...


class StreamStoreError(Exception):
    """The shared store failed (unreachable, refused, throttled, timed out); the message names the
    operation and the service's error code, never an account URL or a credential."""


class StreamNotFound(StreamStoreError):
    """`append` or `finish` on a stream the store does not have (never created, or expired)."""


class StreamTooLarge(StreamStoreError):
    """`append` would pass the stream's byte limit (or the store's own): the events already stored stay;
    finish the stream with `truncated=True`."""
