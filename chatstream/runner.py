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

    def __post_init__(self) -> None:
        self.tool_calls = ToolCallAssembler(self.record.deployment)

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

    def log_outcome(self) -> None:
        report(self.record)

    async def events(self) -> AsyncGenerator[Event, None]:
        record = self.record
        deployment = record.deployment
        stream: AsyncIterator[Any] | None = None
        try:
            stream, chunk = await open_stream(
                lambda: self.chain.astream(self.inputs, self.config), self.retry, record
            )
            yield self._start_event()
            if chunk is not NOTHING:
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
                        if answer is not None:
                            answer.append(text)
                        yield events.delta(deployment, text)
                    try:
                        chunk = await next_chunk()
                    except StopAsyncIteration:
                        break
            for event in self.tool_calls.complete():
                yield event
            record.outcome = "completed"
        except (asyncio.CancelledError, GeneratorExit):
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
