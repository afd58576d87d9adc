"""Running one chain with `astream` and turning its chunks into protocol events.

Knows nothing of HTTP: failures before the first event are raised as `ChatError` (the HTTP layer
can still answer with a real status); after it, `in_band_errors` decides whether they become an
`error` event followed by `end`, or are raised. Retries (`retry`), the rarer translations
(`translate`) and the report of what happened (`outcome`) live in modules of their own; what stays
here is the per-chunk loop, kept inline because it runs once per token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig

from chatstream import errors, events
from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.outcome import RunRecord, report
from chatstream.retry import NOTHING, RetryPolicy, aclose_quietly, open_stream
from chatstream.translate import ToolCallAssembler, add_usage, chain_event, text_of, usage_of
from chatstream.upstream import to_chat_error

#: Events `"stream": false` leaves out of the answer's `events` list (they are its other fields).
_NOT_IN_ANSWER = frozenset({"start", "delta", "end", "tool_call_delta"})


@dataclass(eq=False)  # identity semantics: runs are tracked in a WeakSet
class ChainRun:
    """One deployment's run of one chain for one request (implements `run.Run`)."""

    chain: Runnable
    inputs: dict[str, Any]
    record: RunRecord
    config: RunnableConfig | None = None
    in_band_errors: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    started: bool = False
    #: Set by `stop`: end as soon as possible with `finish_reason: "cancelled"` and the usage so far.
    stop_requested: bool = False

    def __post_init__(self) -> None:
        self.tool_calls = ToolCallAssembler(self.record.deployment)
        #: The task waiting for the upstream's next chunk, while (and only while) it waits: a stop
        #: cancels that wait, and can never land in the consumer's own work (e.g. a socket write).
        self._awaiting: asyncio.Task[Any] | None = None
        self._stop_cancelled: asyncio.Task[Any] | None = None
        self._stop_outcome = "stopped"

    @property
    def request_id(self) -> str:
        return self.record.request_id

    @property
    def span(self) -> Any:
        return self.record.span

    @property
    def deployment(self) -> str:
        return self.record.deployment

    @property
    def outcome(self) -> str:
        return self.record.outcome

    def _start_event(self) -> Event:
        self.started = True
        record = self.record
        return events.start(record.request_id, record.chain_name, record.deployment)

    def _end_event(self) -> Event:
        r = self.record
        return events.end(r.request_id, r.deployment, r.model, r.finish_reason, r.usage)

    def fail(self, error: ChatError) -> list[Event]:
        self.record.outcome = f"error:{error.code}"
        self.record.finish_reason = "error"
        head = [] if self.started else [self._start_event()]
        return [*head, events.error(self.deployment, error), self._end_event()]

    def cancelled(self) -> None:
        self.record.cancelled()

    @property
    def finished(self) -> bool:
        return self.record.outcome != "running"

    def stop(self, *, outcome: str = "stopped") -> None:
        """End the run cleanly: the model call is cancelled and the stream ends with an `end` whose
        `finish_reason` is `cancelled`, carrying the usage so far. `outcome` is what the log line says
        (`stopped` by the caller, `cancelled` when nobody read a resumable run)."""
        if self.stop_requested or self.finished:
            return
        self.stop_requested = True
        self._stop_outcome = outcome
        task = self._awaiting
        if task is not None and not task.done():
            self._stop_cancelled = task
            task.cancel()

    def _stopped(self) -> Event:
        """The `end` of a stopped run (the caller of this has taken our cancellation back)."""
        record = self.record
        record.outcome = self._stop_outcome
        record.finish_reason = "cancelled"
        if record.usage is None:
            record.usage = record.estimated_usage()
        return self._end_event()

    def _took_back_stop(self) -> bool:
        """After a CancelledError: True when it was our stop's (now taken back), False when the task
        is cancelled for another reason too (then it must propagate)."""
        task = self._stop_cancelled
        self._stop_cancelled = None
        if not self.stop_requested or task is None or task is not asyncio.current_task():
            return False
        return task.uncancel() == 0

    def log_outcome(self) -> None:
        report(self.record)

    async def events(self) -> AsyncGenerator[Event, None]:
        record = self.record
        deployment = record.deployment
        stream: AsyncIterator[Any] | None = None
        current_task = asyncio.current_task
        try:
            self._awaiting = current_task()
            try:
                stream, chunk = await open_stream(
                    lambda: self.chain.astream(self.inputs, self.config), self.retry, record
                )
            finally:
                self._awaiting = None
            yield self._start_event()
            if chunk is not NOTHING and not self.stop_requested:
                next_chunk = stream.__anext__
                answer = record.answer
                while True:
                    text = ""
                    if isinstance(chunk, AIMessageChunk):
                        text = text_of(chunk.content)
                        metadata = chunk.response_metadata
                        if metadata:
                            record.finish_reason = metadata.get("finish_reason", record.finish_reason)
                            record.model = metadata.get("model_name", record.model)
                        if chunk.usage_metadata:
                            record.usage = add_usage(record.usage, usage_of(chunk.usage_metadata))  # type: ignore[arg-type]
                        if not text:
                            refused = (
                                chunk.additional_kwargs.get("refusal") if chunk.additional_kwargs else None
                            )
                            if refused:
                                yield events.refusal(deployment, refused)
                            for event in self.tool_calls.feed(chunk):
                                yield event
                    elif isinstance(chunk, str):
                        text = chunk
                    elif isinstance(chunk, dict):
                        own = chain_event(chunk, deployment, record.chain_name)
                        if own is not None:
                            yield own
                    if text:
                        if record.first_delta_at is None:
                            record.first_delta_at = time.perf_counter()
                        record.deltas += 1
                        record.answer_chars += len(text)
                        if answer is not None:
                            answer.append(text)
                        yield events.delta(deployment, text)
                    if self.stop_requested:
                        break
                    self._awaiting = current_task()
                    try:
                        chunk = await next_chunk()
                    except StopAsyncIteration:
                        break
                    finally:
                        self._awaiting = None
            if self.stop_requested:
                # A stop that did not need to cancel (or whose cancellation a layer below absorbed).
                if self._stop_cancelled is current_task():
                    self._took_back_stop()
                yield self._stopped()
                return
            for event in self.tool_calls.complete():
                yield event
            record.outcome = "completed"
        except asyncio.CancelledError:
            if not self._took_back_stop():
                record.cancelled()
                raise
            if stream is not None:
                await aclose_quietly(stream)
                stream = None
            if not self.started:
                yield self._start_event()
            yield self._stopped()
            return
        except GeneratorExit:
            record.cancelled()
            raise
        except Exception as exc:
            error = to_chat_error(exc, started=self.started, request_id=record.request_id)
            if not self.started or not self.in_band_errors:
                record.outcome = f"error:{error.code}"
                if error is exc:
                    raise
                raise error from exc
            for event in self.fail(error):
                yield event
            return
        finally:
            if stream is not None:
                await aclose_quietly(stream)
        if record.finish_reason == "content_filter":
            record.outcome = "content_filter"
            if self.in_band_errors:
                yield events.error(deployment, errors.answer_filtered())
        yield self._end_event()


class OneAnswer(Protocol):
    """What `collect` needs of a run: a `ChainRun`, or a `fallback.FallbackRun` around some."""

    in_band_errors: bool

    @property
    def record(self) -> RunRecord: ...

    def events(self) -> AsyncGenerator[Event, None]: ...


async def collect(run: OneAnswer) -> dict[str, Any]:
    """The whole answer as one object, for `"stream": false`; any failure is raised. The caller
    reports the outcome (`run.log_outcome()`), whatever happens here."""
    run.in_band_errors = False
    parts: list[str] = []
    extra: list[Event] = []
    fallback_from: list[Any] | None = None
    async for event in run.events():
        if event["type"] == "delta":
            parts.append(event["delta_content"])
        elif event["type"] == "start":
            fallback_from = event.get("fallback_from")
        elif event["type"] not in _NOT_IN_ANSWER:
            extra.append(event)
    record = run.record
    if record.outcome not in ("completed", "content_filter"):
        raise errors.internal_error()
    return {
        "id": record.request_id,
        "chain": record.chain_name,
        "deployment": record.deployment,
        "model": record.model,
        "content": "".join(parts),
        "finish_reason": record.finish_reason,
        "usage": record.usage,
        **({"fallback_from": fallback_from} if fallback_from else {}),
        **({"events": extra} if extra else {}),
    }
