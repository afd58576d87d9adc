"""Running one chain with `astream` and turning its chunks into protocol events.

Knows nothing of HTTP: failures before the first event are raised as `ChatError` (the HTTP layer
can still answer with a real status); after it, `in_band_errors` decides whether they become an
`error` event followed by `end`, or are raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig

from chatstream import events, telemetry
from chatstream.errors import ChatError
from chatstream.events import Event, Usage
from chatstream.upstream import to_chat_error

log = logging.getLogger("chatstream.run")


def _usage(metadata: Any) -> Usage | None:
    if not metadata:
        return None
    prompt = int(metadata.get("input_tokens", 0))
    completion = int(metadata.get("output_tokens", 0))
    usage: Usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(metadata.get("total_tokens", prompt + completion)),
    }
    # Hidden tokens of reasoning models (part of completion_tokens), when the upstream reports them.
    reasoning = (metadata.get("output_token_details") or {}).get("reasoning")
    if reasoning is not None:
        usage["reasoning_tokens"] = int(reasoning)
    return usage


def _add_usage(total: Usage | None, more: Usage) -> Usage:
    """Chains that call the model several times (tool rounds) report the sum."""
    if total is None:
        return more
    keys = dict.fromkeys([*total, *more])  # one usage may report reasoning tokens, another not
    return {key: total.get(key, 0) + more.get(key, 0) for key in keys}  # type: ignore[return-value,misc]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    # Content blocks (Responses API, multimodal): keep the text parts, in order.
    parts = [
        block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text"
    ]
    return "".join(parts)


#: Events `"stream": false` leaves out of the answer's `events` list (they are its other fields).
_NOT_IN_ANSWER = frozenset({"start", "delta", "end", "tool_call_delta"})

#: Failures worth another attempt while nothing has been sent (the rest will not get better).
#: `upstream_interrupted` before the first chunk is an empty or cut 200 body: nothing reached the caller.
RETRYABLE_CODES = frozenset(
    {
        "rate_limited",
        "upstream_timeout",
        "upstream_unavailable",
        "upstream_error",
        "upstream_overloaded",
        "upstream_interrupted",
    }
)
_BACKOFF_BASE_SECONDS = 0.5
_BACKOFF_CAP_SECONDS = 4.0
_NOTHING: Any = object()


def content_filtered() -> ChatError:
    return ChatError(200, "content_filter", "the answer was stopped by the content filter", retryable=False)


@dataclass(eq=False)  # identity semantics: runs are tracked in a WeakSet
class ChainRun:
    """One request's run; its fields are what the end event and the log line report."""

    chain: Runnable
    inputs: dict[str, Any]
    request_id: str
    chain_name: str
    deployment: str
    config: RunnableConfig | None = None
    in_band_errors: bool = True
    #: Retries before the first chunk, each only if its wait ends within `retry_window` seconds
    #: of the start (the first-event wait), so a failure still gets a real HTTP status.
    max_retries: int = 0
    retry_window: float = 0.0
    log_content: bool = False

    finish_reason: str | None = None
    model: str | None = None
    usage: Usage | None = None
    deltas: int = 0
    retries: int = 0
    outcome: str = "running"
    started_at: float = field(default_factory=time.perf_counter)
    first_delta_at: float | None = None
    answer: list[str] | None = None

    started: bool = False
    logged: bool = False
    #: Tool calls being streamed, by index: the parts of each `tool_call` event so far.
    pending_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: The request's telemetry span (None unless Application Insights export is on).
    span: Any = None

    def _start_event(self) -> Event:
        self.started = True
        return events.start(self.request_id, self.chain_name, self.deployment)

    def _end_event(self) -> Event:
        return events.end(self.request_id, self.deployment, self.model, self.finish_reason, self.usage)

    def fail(self, error: ChatError) -> list[Event]:
        """The events that close a stream this run can no longer finish (late failure, deadline)."""
        self.outcome = f"error:{error.code}"
        self.finish_reason = "error"
        head = [] if self.started else [self._start_event()]
        return [*head, events.error(self.deployment, error), self._end_event()]

    def _retry_delay(self, error: ChatError) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now. The server's hint wins;
        a hint that does not fit in the window is not slept on (the caller gets it as Retry-After)."""
        if error.code not in RETRYABLE_CODES or self.retries >= self.max_retries:
            return None
        if error.retry_after is not None:
            delay = error.retry_after
        else:
            backoff = min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2**self.retries)
            delay = backoff * (0.5 + random.random() / 2)
        if time.perf_counter() + delay > self.started_at + self.retry_window:
            return None
        return delay

    async def _open(self) -> tuple[AsyncIterator[Any], Any]:
        """The chain's stream and its first chunk, retrying failures that happen before it."""
        while True:
            stream = aiter(self.chain.astream(self.inputs, self.config))
            try:
                return stream, await anext(stream)
            except StopAsyncIteration:
                return stream, _NOTHING
            except Exception as exc:
                await _aclose(stream)
                error = to_chat_error(exc, request_id=self.request_id)
                delay = self._retry_delay(error)
                if delay is None:
                    raise error from exc
                self.retries += 1
                log.info(
                    "chat retry request_id=%s attempt=%d code=%s wait_ms=%.0f",
                    self.request_id,
                    self.retries + 1,
                    error.code,
                    delay * 1000,
                )
                await asyncio.sleep(delay)
            except BaseException:
                await _aclose(stream)
                raise

    async def events(self) -> AsyncIterator[Event]:
        deployment = self.deployment
        stream: AsyncIterator[Any] | None = None
        try:
            stream, chunk = await self._open()
            yield self._start_event()
            if chunk is not _NOTHING:
                next_chunk = stream.__anext__
                answer = self.answer = [] if self.log_content else None
                while True:
                    text = ""
                    if isinstance(chunk, AIMessageChunk):
                        text = _text(chunk.content)
                        metadata = chunk.response_metadata
                        if metadata:
                            self.finish_reason = metadata.get("finish_reason", self.finish_reason)
                            self.model = metadata.get("model_name", self.model)
                        if chunk.usage_metadata:
                            self.usage = _add_usage(self.usage, _usage(chunk.usage_metadata))
                        if not text:
                            refused = (
                                chunk.additional_kwargs.get("refusal") if chunk.additional_kwargs else None
                            )
                            if refused:
                                yield events.refusal(deployment, refused)
                            for event in self._tool_call_events(chunk):
                                yield event
                    elif isinstance(chunk, str):
                        text = chunk
                    elif isinstance(chunk, dict):
                        event = self._chain_event(chunk)
                        if event is not None:
                            yield event
                    if text:
                        if self.first_delta_at is None:
                            self.first_delta_at = time.perf_counter()
                        self.deltas += 1
                        if answer is not None:
                            answer.append(text)
                        yield events.delta(deployment, text)
                    try:
                        chunk = await next_chunk()
                    except StopAsyncIteration:
                        break
            for event in self._complete_calls():
                yield event
            self.outcome = "completed"
        except (asyncio.CancelledError, GeneratorExit):
            if self.outcome == "running":
                self.outcome = "cancelled"
            raise
        except Exception as exc:
            error = to_chat_error(exc, started=self.started, request_id=self.request_id)
            if not self.started or not self.in_band_errors:
                self.outcome = f"error:{error.code}"
                if error is exc:
                    raise
                raise error from exc
            for event in self.fail(error):
                yield event
            return
        finally:
            if stream is not None:
                await _aclose(stream)
        if self.finish_reason == "content_filter":
            self.outcome = "content_filter"
            if self.in_band_errors:
                yield events.error(deployment, content_filtered())
        yield self._end_event()

    # -- the rare cases, kept out of the per-delta path -------------------------------------------

    def _tool_call_events(self, chunk: AIMessageChunk) -> list[Event]:
        """`tool_call_delta` per fragment; complete `tool_call`s once the model finished the turn."""
        out: list[Event] = []
        deployment = self.deployment
        for part in chunk.tool_call_chunks:
            index = part.get("index")
            index = len(self.pending_calls) if index is None else index
            call = self.pending_calls.setdefault(
                index, {"index": index, "id": None, "name": None, "args": []}
            )
            if part.get("id"):
                call["id"] = part["id"]
            if part.get("name"):
                call["name"] = part["name"]
            if part.get("args"):
                call["args"].append(part["args"])
            out.append(
                events.tool_call_delta(
                    deployment, index, part.get("id"), part.get("name"), part.get("args") or ""
                )
            )
        if chunk.response_metadata.get("finish_reason"):
            out.extend(self._complete_calls())
        return out

    def _complete_calls(self) -> list[Event]:
        calls = [self.pending_calls[index] for index in sorted(self.pending_calls)]
        self.pending_calls.clear()
        return [
            events.tool_call(self.deployment, c["index"], c["id"], c["name"], "".join(c["args"]))
            for c in calls
        ]

    def _chain_event(self, chunk: dict[str, Any]) -> Event | None:
        """A chain's own event (progress, citations, tool results): forwarded, tagged with the deployment."""
        kind = chunk.get("type")
        if not isinstance(kind, str) or kind in events.RUNNER_TYPES:
            log.warning("chain %s yielded a dict without a usable 'type'; dropped", self.chain_name)
            return None
        return {"type": kind, "deployment": self.deployment, **chunk}

    def log_outcome(self) -> None:
        """One line (and one span) per request, written once by whoever ends the request."""
        if self.logged:
            return
        self.logged = True
        elapsed = time.perf_counter() - self.started_at
        ttft = (self.first_delta_at - self.started_at) if self.first_delta_at else None
        # Azure reports usage in the last chunk only: a cancelled stream's completion tokens are
        # estimated from its deltas (one chunk per token), which is what the model was paid for.
        completion = self.usage["completion_tokens"] if self.usage else self.deltas
        with telemetry.use_span(self.span):
            log.info(
                "chat %s request_id=%s chain=%s deployment=%s deltas=%d completion_tokens=%d%s "
                "finish_reason=%s usage=%s retries=%d ttft_ms=%s duration_ms=%.0f",
                self.outcome,
                self.request_id,
                self.chain_name,
                self.deployment,
                self.deltas,
                completion,
                "" if self.usage else "(estimated)",
                self.finish_reason,
                self.usage,
                self.retries,
                f"{ttft * 1000:.0f}" if ttft is not None else "-",
                elapsed * 1000,
            )
            if self.log_content:
                log.info(
                    "chat content request_id=%s question=%r answer=%r",
                    self.request_id,
                    self.inputs.get("question"),
                    "".join(self.answer or ()),
                )
        telemetry.finish(self.span, self, ttft, elapsed)


async def collect(run: ChainRun) -> dict[str, Any]:
    """The whole answer as one object, for `"stream": false`; any failure is raised."""
    run.in_band_errors = False
    parts: list[str] = []
    extra: list[Event] = []
    try:
        async for event in run.events():
            if event["type"] == "delta":
                parts.append(event["delta_content"])
            elif event["type"] not in _NOT_IN_ANSWER:
                extra.append(event)
    finally:
        run.log_outcome()
    if run.outcome not in ("completed", "content_filter"):
        raise ChatError(500, "internal_error", "the server failed to produce an answer")
    return {
        "id": run.request_id,
        "chain": run.chain_name,
        "deployment": run.deployment,
        "model": run.model,
        "content": "".join(parts),
        "finish_reason": run.finish_reason,
        "usage": run.usage,
        **({"events": extra} if extra else {}),
    }


async def _aclose(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
