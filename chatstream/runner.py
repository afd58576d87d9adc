"""Running one chain with `astream` and turning its chunks into protocol events.

Knows nothing of HTTP: failures before the first event are raised as `ChatError` (the HTTP layer
can still answer with a real status); after it, `in_band_errors` decides whether they become an
`error` event followed by `end`, or are raised.
"""

from __future__ import annotations

import asyncio
import logging
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
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(metadata.get("total_tokens", prompt + completion)),
    }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    # Content blocks (Responses API, multimodal): keep the text parts, in order.
    parts = [
        block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text"
    ]
    return "".join(parts)


@dataclass
class ChainRun:
    """One request's run; its fields are what the end event and the log line report."""

    chain: Runnable
    inputs: dict[str, Any]
    request_id: str
    chain_name: str
    deployment: str
    config: RunnableConfig | None = None
    in_band_errors: bool = True

    finish_reason: str | None = None
    model: str | None = None
    usage: Usage | None = None
    deltas: int = 0
    outcome: str = "running"
    started_at: float = field(default_factory=time.perf_counter)
    first_delta_at: float | None = None

    started: bool = False
    logged: bool = False
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

    async def events(self) -> AsyncIterator[Event]:
        deployment = self.deployment
        try:
            async for chunk in self.chain.astream(self.inputs, self.config):
                if not self.started:
                    yield self._start_event()
                if isinstance(chunk, AIMessageChunk):
                    text = _text(chunk.content)
                    metadata = chunk.response_metadata
                    if metadata:
                        self.finish_reason = metadata.get("finish_reason", self.finish_reason)
                        self.model = metadata.get("model_name", self.model)
                    if chunk.usage_metadata:
                        self.usage = _usage(chunk.usage_metadata)
                elif isinstance(chunk, str):
                    text = chunk
                else:
                    continue
                if text:
                    if self.first_delta_at is None:
                        self.first_delta_at = time.perf_counter()
                    self.deltas += 1
                    yield events.delta(deployment, text)
            if not self.started:
                yield self._start_event()
            self.outcome = "completed"
        except (asyncio.CancelledError, GeneratorExit):
            if self.outcome == "running":
                self.outcome = "cancelled"
            raise
        except Exception as exc:
            error = to_chat_error(exc)
            if not self.started or not self.in_band_errors:
                self.outcome = f"error:{error.code}"
                raise error from exc
            for event in self.fail(error):
                yield event
            return
        yield self._end_event()

    def log_outcome(self) -> None:
        """One line (and one span) per request, written once by whoever ends the request."""
        if self.logged:
            return
        self.logged = True
        elapsed = time.perf_counter() - self.started_at
        ttft = (self.first_delta_at - self.started_at) if self.first_delta_at else None
        with telemetry.use_span(self.span):
            log.info(
                "chat %s request_id=%s chain=%s deployment=%s deltas=%d finish_reason=%s usage=%s "
                "ttft_ms=%s duration_ms=%.0f",
                self.outcome,
                self.request_id,
                self.chain_name,
                self.deployment,
                self.deltas,
                self.finish_reason,
                self.usage,
                f"{ttft * 1000:.0f}" if ttft is not None else "-",
                elapsed * 1000,
            )
        telemetry.finish(self.span, self, ttft, elapsed)


async def collect(run: ChainRun) -> dict[str, Any]:
    """The whole answer as one object, for `"stream": false`; any failure is raised."""
    run.in_band_errors = False
    parts: list[str] = []
    try:
        async for event in run.events():
            if event["type"] == "delta":
                parts.append(event["delta_content"])
    finally:
        run.log_outcome()
    if run.outcome != "completed":
        raise ChatError(500, "internal_error", "the server failed to produce an answer")
    return {
        "id": run.request_id,
        "chain": run.chain_name,
        "deployment": run.deployment,
        "model": run.model,
        "content": "".join(parts),
        "finish_reason": run.finish_reason,
        "usage": run.usage,
    }
