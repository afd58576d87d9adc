"""Resumable streams: a run that outlives its connection, and readers that join it at any event.

A resumable run is driven by a producer task of its own, not by the response that asked for it. Every
event goes into the stream's log, and every response (the first POST and each resume) is a reader of
that log from some position. So a dropped connection loses nothing: the run goes on for the grace
period (`CHAT_RESUME_GRACE_SECONDS`), and a reader that comes back with `Last-Event-ID` gets exactly
the events after that id, then the live rest, with no second model call.

The log lives in this instance's memory, bounded per stream (`CHAT_RESUME_MAX_BYTES`, a window of the
latest events) and in number (`CHAT_RESUME_MAX_STREAMS`) and time (`CHAT_RESUME_TTL_SECONDS`). With a
shared store (`chatstream.stream_store`), the producer also mirrors the events into it in small batches
and polls it for a stop or a reader on another instance, so resume and stop work across instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from chatstream import errors, events
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.run import Run
from chatstream.settings import Settings
from chatstream.stream_store import SharedStreamStore, StoredEvents, StreamTooLarge

log = logging.getLogger("chatstream.resumable")

#: What an event counts for besides its text (keys, ids, framing) against CHAT_RESUME_MAX_BYTES.
_EVENT_OVERHEAD = 96
#: New events are written to the shared store at most this often (one append per batch).
MIRROR_SECONDS = 0.1
#: A reader on another instance says it is reading this often.
READER_TOUCH_SECONDS = 1.0
#: How long the producer waits for a reader behind a full window before leaving it behind.
READER_STALL_SECONDS = 5.0
#: Longest a resumable stream's first event waits for the stream to exist in the shared store.
SHARED_CREATE_WAIT_SECONDS = 5.0
#: The producer writes the shared copy at least this often while it runs: an append, else a `beat`.
BEAT_SECONDS = 2.0
#: A reader on another instance that sees no write of the producer for this long (its own monotonic clock)
#: ends with `stream_producer_lost`: several beats, plus a store write held up to the SDK's read timeout
#: (10 s), so a slow store alone does not end a live stream.
PRODUCER_LOST_SECONDS = 15.0
#: A stopped run that has not ended after this is cancelled outright.
STOP_TIMEOUT_SECONDS = 5.0
#: A resume's or a stop's lookups in the shared store together: the SDK's own retries against a store that
#: does not answer would take about 30 s per call, and a lookup by alias makes up to three.
STORE_LOOKUP_SECONDS = 10.0

_tasks: set[asyncio.Task[Any]] = set()


def _keep(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    """Tasks of ours run detached from any request: referenced until done."""
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def _size(event: Event) -> int:
    text = event.get("delta_content")
    if isinstance(text, str):
        return _EVENT_OVERHEAD + len(text)
    return len(orjson.dumps(event))


def _error_event(error: ChatError) -> Event:
    return {
        "type": "error",
        "deployment": None,
        "code": error.code,
        "message": error.message,
        "retryable": error.retryable,
    }


class StreamLog:
    """One resumable stream on the instance that runs it: the run's events and who reads them."""

    def __init__(
        self,
        stream_id: str,
        protocol: str,
        run: Run,
        *,
        max_bytes: int,
        grace_seconds: float,
        deadline_at: float,
        deadline_error: ChatError,
    ) -> None:
        self.stream_id = stream_id
        self.protocol = protocol
        self.run = run
        self.max_bytes = max_bytes
        self.grace_seconds = grace_seconds
        self.deadline_at = deadline_at
        self.deadline_error = deadline_error
        #: The kept window of events; `base` is the position of `events[0]` in the whole stream.
        self.events: list[Event] = []
        self.base = 0
        self.size = 0
        self.finished = False
        #: The run failed before its first event: readers raise it (a real HTTP status for the first).
        self.failure: ChatError | None = None
        self.created = time.monotonic()
        #: When a reader on another instance was last seen (monotonic), via the shared store.
        self.remote_reader_at = float("-inf")
        #: Each attached reader's next position (a one-item list it updates): the window is trimmed past
        #: the slowest of them only once it has waited `READER_STALL_SECONDS` for it.
        self._cursors: list[list[int]] = []
        #: Set while the producer waits for a reader to make room in the window.
        self._room: asyncio.Future[None] | None = None
        self._stopping = False
        #: Set once the stream exists in the shared store (or creating it failed): its first reader
        #: sends nothing before, so a caller that saw an event can resume it on any instance.
        self.shared = asyncio.Event()
        self._waiter: asyncio.Future[None] | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._producer: asyncio.Task[None] | None = None

    @property
    def end(self) -> int:
        """The position after the last event so far (the number of events the stream has had)."""
        return self.base + len(self.events)

    def start(self) -> None:
        self._producer = _keep(asyncio.create_task(self._produce()))

    # -- the producer ---------------------------------------------------------------------------

    async def _produce(self) -> None:
        run = self.run
        stream = run.events()
        loop = asyncio.get_running_loop()
        deadline_at = self.deadline_at
        try:
            async with asyncio.timeout_at(deadline_at):
                async for event in stream:
                    self._append(event)
                    if self.size > self.max_bytes:
                        await self._make_room()
                    # A layer below may absorb the timeout's one cancellation (see response.py).
                    if loop.time() >= deadline_at:
                        raise TimeoutError
        except TimeoutError:
            self._close_with(run.fail(self.deadline_error))
        except ChatError as error:
            if self.end == 0:
                self.failure = error
            else:
                self._close_with(run.fail(error))
        except asyncio.CancelledError:
            run.cancelled()
            raise
        except Exception:
            log.exception("resumable stream failed request_id=%s", self.stream_id)
            if self.end == 0:
                self.failure = errors.internal_error()
            else:
                self._close_with(run.fail(errors.internal_error()))
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()
            self._finish()
            run.log_outcome()

    def _append(self, event: Event) -> None:
        if self.finished:
            return
        self.events.append(event)
        self.size += _size(event)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _make_room(self) -> None:
        """Over the limit: drop what every attached reader has sent. A reader behind (its caller reads
        slower than the model writes) gets up to `READER_STALL_SECONDS` to catch up, so the producer
        waits for it as a stream that is not resumable waits for its caller; after that it is left
        behind, and ends with `stream_not_resumable` rather than holding the memory."""
        self._trim(force=False)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + READER_STALL_SECONDS
        while self.size > self.max_bytes and self._cursors:
            remaining = give_up - loop.time()
            if remaining <= 0:
                break
            room = self._room = loop.create_future()
            try:
                await asyncio.wait_for(room, remaining)
            except TimeoutError:
                pass
            finally:
                self._room = None
            self._trim(force=False)
        if self.size > self.max_bytes:
            self._trim(force=True)

    def _trim(self, *, force: bool) -> None:
        """Keep the latest events only (down to 3/4 of the limit, so trims are rare); unless `force`,
        never the ones an attached reader has yet to send."""
        target = self.max_bytes * 3 // 4
        keep_from = len(self.events) - 1
        if self._cursors and not force:
            keep_from = min(keep_from, min(cursor[0] for cursor in self._cursors) - self.base)
        drop = 0
        while self.size > target and drop < keep_from:
            self.size -= _size(self.events[drop])
            drop += 1
        del self.events[:drop]
        self.base += drop

    def _close_with(self, closing: list[Event]) -> None:
        for event in closing:
            self._append(event)
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.finished_at = time.monotonic()
        if self._grace is not None:
            self._grace.cancel()
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: ChatError) -> None:
        """End the stream now with `error` (a reader's deadline): the closing events go into the log
        for every reader, and the producer is cancelled."""
        if self.finished:
            return
        self._close_with(self.run.fail(error))
        if self._producer is not None:
            self._producer.cancel()

    def stop(self, *, outcome: str = "stopped") -> None:
        """End the run cleanly (`end` with `finish_reason: "cancelled"` and the usage so far)."""
        if self.finished or self._stopping:
            return
        self._stopping = True
        self.run.stop(outcome=outcome)
        asyncio.get_running_loop().call_later(STOP_TIMEOUT_SECONDS, self._force_cancel)

    def _force_cancel(self) -> None:
        """The run did not end in time after a stop: it ends now, with an `error` and its `end`."""
        if not self.finished:
            log.warning("resumable stream did not stop in time request_id=%s", self.stream_id)
            self.fail(errors.internal_error())

    # -- readers --------------------------------------------------------------------------------

    async def read(self, after: int) -> AsyncGenerator[Event, None]:
        """The events after position `after` (-1: all), then the live rest until the end.

        Raises `ChatError`: the run's failure before its first event, or `stream_not_resumable`
        when the events wanted are no longer kept."""
        cursor = [after + 1]
        self._attach(cursor)
        try:
            if not self.shared.is_set():
                # Created in the shared store together with the model call: rarely a wait at all.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.shared.wait(), SHARED_CREATE_WAIT_SECONDS)
            while True:
                while True:
                    position = cursor[0]
                    index = position - self.base
                    if index < 0:
                        raise errors.stream_not_resumable()
                    if index >= len(self.events):
                        break
                    cursor[0] = position + 1
                    room = self._room
                    if room is not None and not room.done():
                        room.set_result(None)  # the producer waits for readers to make room
                    yield self.events[index]
                if self.finished:
                    if self.failure is not None and cursor[0] == 0:
                        raise self.failure
                    return
                if self._waiter is None:
                    self._waiter = asyncio.get_running_loop().create_future()
                await asyncio.shield(self._waiter)
        finally:
            self._detach(cursor)

    def _attach(self, cursor: list[int]) -> None:
        self._cursors.append(cursor)
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def _detach(self, cursor: list[int]) -> None:
        self._cursors.remove(cursor)
        room = self._room
        if room is not None and not room.done():
            room.set_result(None)  # the producer need not wait for a reader that left
        if not self._cursors and not self.finished:
            self._grace = asyncio.get_running_loop().call_later(self.grace_seconds, self._grace_over)

    def _grace_over(self) -> None:
        self._grace = None
        if self._cursors or self.finished:
            return
        since_remote = time.monotonic() - self.remote_reader_at
        if since_remote < max(self.grace_seconds, 2 * READER_TOUCH_SECONDS):
            # Someone reads it through the shared store: look again later.
            self._grace = asyncio.get_running_loop().call_later(READER_TOUCH_SECONDS, self._grace_over)
            return
        log.info(
            "resumable stream abandoned request_id=%s: nobody read it for %g s",
            self.stream_id,
            self.grace_seconds,
        )
        self.stop(outcome="cancelled")

    # -- the shared store -----------------------------------------------------------------------

    async def mirror(self, store: SharedStreamStore, alias: str | None, poll_seconds: float) -> None:
        """Copy the events into the shared store as they come, and act on what other instances ask
        (stop, a reader there). A store failure ends the mirroring, never the stream."""
        stream_id = self.stream_id
        try:
            try:
                await store.create(stream_id, protocol=self.protocol, alias=alias)
            finally:
                self.shared.set()
            sent = 0
            stored_bytes = 0
            polled = 0.0
            wrote = time.monotonic()
            while True:
                done = self.finished
                if self.base > sent:
                    await store.finish(stream_id, truncated=True)
                    return
                batch = [orjson.dumps(event) for event in self.events[sent - self.base :]]
                if batch:
                    stored_bytes += sum(map(len, batch))
                    try:
                        if stored_bytes > self.max_bytes:
                            raise StreamTooLarge(stream_id)
                        await store.append(stream_id, batch)
                    except StreamTooLarge:
                        await store.finish(stream_id, truncated=True)
                        return
                    sent += len(batch)
                    wrote = time.monotonic()
                if done:
                    await store.finish(stream_id)
                    return
                now = time.monotonic()
                if now - wrote >= BEAT_SECONDS:  # a silent model: readers elsewhere must see it is alive
                    await store.beat(stream_id)
                    wrote = now
                if now - polled >= poll_seconds:
                    polled = now
                    control = await store.control(stream_id)
                    if control.stop_requested:
                        self.stop()
                    if control.reader_seen_at is not None:
                        age = max(0.0, time.time() - control.reader_seen_at)
                        self.remote_reader_at = max(self.remote_reader_at, now - age)
                await asyncio.sleep(MIRROR_SECONDS)
        except Exception as exc:
            log.warning(
                "shared stream store failed request_id=%s (%s): the stream goes on, but cannot be resumed "
                "or stopped from another instance",
                stream_id,
                type(exc).__name__,
            )
            # Readers on other instances would otherwise poll a copy that never grows until their
            # deadline: marked truncated, they end at once with `stream_not_resumable`. Best effort
            # (a store that is down refuses this too); never a second append, which could repeat events.
            with contextlib.suppress(Exception):
                await store.finish(stream_id, truncated=True)


class LogReader:
    """A reader of a local `StreamLog` as the `Run` a response drives: it never owns the run, so a
    reader that leaves only starts the grace period."""

    def __init__(self, stream: StreamLog, after: int) -> None:
        self.stream = stream
        self.after = after
        self._position = after + 1
        self._reader: AsyncGenerator[Event, None] | None = None

    @property
    def started(self) -> bool:
        return self.stream.end > 0

    @property
    def request_id(self) -> str:
        return self.stream.stream_id

    @property
    def span(self) -> Any:
        return self.stream.run.span

    @property
    def finished(self) -> bool:
        return self.stream.finished

    async def events(self) -> AsyncGenerator[Event, None]:
        async for event in self.stream.read(self.after):
            self._position += 1
            yield event

    def fail(self, error: ChatError) -> list[Event]:
        """This reader's deadline (or a gap): the stream ends for everyone with `error`, and this
        reader gets what it has not had yet."""
        stream = self.stream
        if error.code != "stream_not_resumable":
            stream.fail(error)
        index = self._position - stream.base
        if index < 0 or error.code == "stream_not_resumable":
            return [_error_event(error)]
        return stream.events[index:]

    def cancelled(self) -> None:
        """The reader left: the run goes on (see `StreamLog._detach`)."""

    def stop(self, *, outcome: str = "stopped") -> None:
        self.stream.stop(outcome=outcome)

    def log_outcome(self) -> None:
        """The producer reports the run."""


class StoreReader:
    """A reader of a stream running on another instance, through the shared store."""

    def __init__(
        self,
        store: SharedStreamStore,
        stream_id: str,
        after: int,
        first: StoredEvents,
        poll_seconds: float,
    ) -> None:
        self.store = store
        self.stream_id = stream_id
        self.after = after
        self.first = first
        self.poll_seconds = poll_seconds
        self.started = True
        #: The `start` event's deployment (the copy is always read from its first event).
        self._deployment: str | None = None

    @property
    def request_id(self) -> str:
        return self.stream_id

    @property
    def span(self) -> Any:
        return None

    @property
    def finished(self) -> bool:
        return False

    async def events(self) -> AsyncGenerator[Event, None]:
        stored: StoredEvents | None = self.first
        position = 0
        touched = 0.0
        beat = None
        beat_at = time.monotonic()
        while True:
            assert stored is not None
            for raw in stored.events:
                if position > self.after or position == 0:
                    event = orjson.loads(raw)
                    if position == 0:  # `start`: its deployment names this reader's closing `error` and `end`
                        self._deployment = event.get("deployment")
                    if position > self.after:
                        yield event
                position += 1
            if stored.finished and not stored.truncated:
                return
            if stored.truncated:
                raise errors.stream_not_resumable()
            now = time.monotonic()
            if stored.beat != beat or stored.events:
                beat, beat_at = stored.beat, now
            elif now - beat_at >= PRODUCER_LOST_SECONDS:
                log.warning(
                    "resumable stream lost request_id=%s: its producer wrote nothing for %g s",
                    self.stream_id,
                    PRODUCER_LOST_SECONDS,
                )
                # Before the caller hears of it, so the resume it may send next is answered at once.
                await _report_lost(self.store, self.stream_id)
                raise errors.stream_producer_lost()
            try:
                if now - touched >= READER_TOUCH_SECONDS:
                    touched = now
                    await self.store.touch_reader(self.stream_id)
                await asyncio.sleep(self.poll_seconds)
                stored = await self.store.read(self.stream_id, stored.cursor)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("shared stream store failed while reading request_id=%s", self.stream_id)
                raise errors.stream_store_unavailable() from None
            if stored is None:
                raise errors.stream_not_found(self.stream_id)

    def fail(self, error: ChatError) -> list[Event]:
        """The closing events of this reader: the `error`, then an `end` (`finish_reason: "error"`), except
        for `stream_not_resumable` (as `LogReader.fail`)."""
        event = _error_event(error)
        if error.code == "stream_not_resumable":
            return [event]
        event["deployment"] = self._deployment
        end = events.end(self.stream_id, self._deployment, None, "error", None)  # type: ignore[arg-type]
        return [event, end]

    def cancelled(self) -> None:
        """The run is another instance's."""

    def stop(self, *, outcome: str = "stopped") -> None:
        _keep(asyncio.ensure_future(self.store.request_stop(self.stream_id)))

    def log_outcome(self) -> None:
        """The producing instance reports the run."""


async def _report_lost(store: SharedStreamStore, stream_id: str) -> None:
    """Best effort and bounded: later resumes of the stream then fail at once."""
    try:
        async with asyncio.timeout(STORE_LOOKUP_SECONDS):
            await store.report_lost(stream_id)
    except Exception:
        log.warning("shared stream store failed while reporting lost request_id=%s", stream_id)


class ResumableStreams:
    """This instance's resumable streams, and the way to those of other instances (the shared store)."""

    def __init__(self, settings: Settings, store: SharedStreamStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self._logs: OrderedDict[str, StreamLog] = OrderedDict()
        self._aliases: dict[str, str] = {}
        #: How protocols name the ids they give streams (`ai-sdk:` + the AI SDK's chat id).
        self.alias_prefixes: tuple[str, ...] = ()

    def start(
        self,
        run: Run,
        protocol: str,
        *,
        alias: str | None,
        deadline_at: float,
        deadline_error: ChatError,
    ) -> StreamLog:
        """Run `run` detached from the caller; raises `resume_capacity` when this instance is full."""
        self._sweep()
        settings = self.settings
        if len(self._logs) >= settings.resume_max_streams:
            oldest = next((key for key, s in self._logs.items() if s.finished), None)
            if oldest is None:
                raise errors.resume_capacity(settings.resume_max_streams)
            self._forget(oldest)
        stream = StreamLog(
            run.request_id,
            protocol,
            run,
            max_bytes=settings.resume_max_bytes,
            grace_seconds=settings.resume_grace_seconds,
            deadline_at=deadline_at,
            deadline_error=deadline_error,
        )
        self._logs[stream.stream_id] = stream
        if alias is not None:
            self._aliases[alias] = stream.stream_id
        stream.start()
        if self.store is None:
            stream.shared.set()
        else:
            _keep(asyncio.create_task(stream.mirror(self.store, alias, settings.stream_store_poll_seconds)))
        return stream

    def _forget(self, stream_id: str) -> None:
        self._logs.pop(stream_id, None)
        for alias in [a for a, s in self._aliases.items() if s == stream_id]:
            del self._aliases[alias]

    def _sweep(self) -> None:
        """Drop streams older than the TTL (oldest first: the dict is in creation order)."""
        limit = time.monotonic() - self.settings.resume_ttl_seconds
        while self._logs:
            stream_id, stream = next(iter(self._logs.items()))
            if stream.created > limit or not stream.finished:
                break
            self._forget(stream_id)

    def local(self, key: str) -> StreamLog | None:
        """The stream named `key` (a request id, or an alias: `ai-sdk:<chat id>`) on this instance."""
        self._sweep()
        stream = self._logs.get(key)
        if stream is None and key in self._aliases:
            stream = self._logs.get(self._aliases[key])
        return stream

    async def _stored(self, key: str) -> tuple[str, StoredEvents] | None:
        """The stream another instance runs named `key` in the shared store, by its id or, if running, by
        an alias (at most one read and one resolve per protocol that gives aliases)."""
        store = self.store
        if store is None:
            return None
        try:
            async with asyncio.timeout(STORE_LOOKUP_SECONDS):
                stored = await store.read(key)
                if stored is not None:
                    return key, stored
                for prefix in self.alias_prefixes:
                    stream_id = await store.resolve(prefix + key)
                    stored = await store.read(stream_id) if stream_id is not None else None
                    if stream_id is not None and stored is not None and not stored.finished:
                        return stream_id, stored
        except Exception:
            log.warning("shared stream store failed while looking for %s", key)
            raise errors.stream_store_unavailable() from None
        return None

    async def request_stop(self, key: str) -> bool:
        """Ask the instance running `key` (an id, or an alias) to stop it, through the shared store.
        Raises `stream_finished` when the stored stream has ended (as a stop on its own instance does);
        a copy finished as truncated may still run on its instance, out of reach: False. Raises
        `stream_producer_lost` when a reader found its instance gone (nobody is left to stop)."""
        found = await self._stored(key)
        if found is None or self.store is None:
            return False
        if found[1].finished and not found[1].truncated:
            raise errors.stream_finished(key)
        if not found[1].finished and await self._lost(found[0]):
            raise errors.stream_producer_lost()
        try:
            async with asyncio.timeout(STORE_LOOKUP_SECONDS):
                return await self.store.request_stop(found[0])
        except Exception:
            log.warning("shared stream store failed while stopping %s", key)
            raise errors.stream_store_unavailable() from None

    async def _lost(self, stream_id: str) -> bool:
        """A reader elsewhere saw the producer of this unfinished copy go silent (`report_lost`)."""
        assert self.store is not None
        try:
            async with asyncio.timeout(STORE_LOOKUP_SECONDS):
                return (await self.store.control(stream_id)).producer_lost
        except Exception:
            log.warning("shared stream store failed while looking for %s", stream_id)
            raise errors.stream_store_unavailable() from None

    def find(self, key: str) -> StreamLog | None:
        """The stream on this instance named `key`: its request id, or the id a protocol gave it (an AI SDK
        chat id, kept as `ai-sdk:<id>`)."""
        stream = self.local(key)
        if stream is None:
            stream = next(filter(None, (self.local(p + key) for p in self.alias_prefixes)), None)
        return stream

    async def reader(self, key: str, after: int) -> tuple[Run, str] | None:
        """A reader of the stream `key` after position `after` and its protocol: this instance's first,
        then the shared store's. None when there is none.

        By an alias (the AI SDK's chat id) only a running stream is found: the SDK asks on every page
        load, and a finished answer is already in its messages."""
        stream = self.find(key)
        if stream is not None:
            if stream.stream_id != key and stream.finished:
                return None
            if after + 1 < stream.base:
                raise errors.stream_not_resumable()
            if after >= stream.end and stream.finished:
                raise errors.invalid_last_event_id()
            return LogReader(stream, after), stream.protocol
        found = await self._stored(key)
        if found is None or self.store is None:
            return None
        stream_id, stored = found
        if stored.truncated:
            raise errors.stream_not_resumable()
        if not stored.finished and await self._lost(stream_id):
            raise errors.stream_producer_lost()
        if stored.finished and after >= len(stored.events):  # as for a stream of this instance
            raise errors.invalid_last_event_id()
        reader = StoreReader(self.store, stream_id, after, stored, self.settings.stream_store_poll_seconds)
        return reader, stored.protocol
