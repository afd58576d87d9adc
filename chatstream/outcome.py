"""What one run did, and the one place that reports it: a log line and a telemetry span per run.

The record is filled in by the run as it streams; whoever ends the request (the response for a
stream, the endpoint otherwise) calls `report` once, through `Run.log_outcome`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from chatstream import telemetry
from chatstream.events import Usage

log = logging.getLogger("chatstream.run")


@dataclass(eq=False)
class RunRecord:
    request_id: str
    chain_name: str
    deployment: str
    finish_reason: str | None = None
    model: str | None = None
    usage: Usage | None = None
    deltas: int = 0
    retries: int = 0
    #: Characters of the prompt (system prompt and messages) and of the answer's text so far: the
    #: estimate of a stopped stream's usage.
    prompt_chars: int = 0
    answer_chars: int = 0
    #: running, completed, content_filter, cancelled, stopped, or error:<code>
    outcome: str = "running"
    started_at: float = field(default_factory=time.perf_counter)
    first_delta_at: float | None = None
    #: The request's telemetry span (None unless Application Insights export is on).
    span: Any = None
    #: The question and the answer's text, kept only with CHAT_LOG_CONTENT=true.
    question: str | None = None
    answer: list[str] | None = None
    reported: bool = False

    def cancelled(self) -> None:
        """The caller left (or the run was stopped) before it could finish."""
        if self.outcome == "running":
            self.outcome = "cancelled"

    def estimated_usage(self) -> Usage:
        """What a stream stopped before its end cost, by the usual ~4 characters per token (the
        upstream reports usage in its last chunk only); at least one token per delta."""
        completion = max(self.deltas, -(-self.answer_chars // 4))
        prompt = -(-self.prompt_chars // 4)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "estimated": True,
        }

    @property
    def ttft(self) -> float | None:
        return (self.first_delta_at - self.started_at) if self.first_delta_at else None


def report(record: RunRecord) -> None:
    """One line (and one span) per run; a second call does nothing."""
    if record.reported:
        return
    record.reported = True
    elapsed = time.perf_counter() - record.started_at
    ttft = record.ttft
    usage = record.usage
    # Azure reports usage in the last chunk only: a cancelled stream's completion tokens are
    # estimated from its deltas (one chunk per token), which is what the model was paid for.
    completion = usage["completion_tokens"] if usage else record.deltas
    with telemetry.use_span(record.span):
        log.info(
            "chat %s request_id=%s chain=%s deployment=%s deltas=%d completion_tokens=%d%s "
            "finish_reason=%s usage=%s retries=%d ttft_ms=%s duration_ms=%.0f",
            record.outcome,
            record.request_id,
            record.chain_name,
            record.deployment,
            record.deltas,
            completion,
            "" if usage else "(estimated)",
            record.finish_reason,
            usage,
            record.retries,
            f"{ttft * 1000:.0f}" if ttft is not None else "-",
            elapsed * 1000,
        )
        if record.answer is not None:
            log.info(
                "chat content request_id=%s question=%r answer=%r",
                record.request_id,
                record.question,
                "".join(record.answer),
            )
    telemetry.finish(record, elapsed)
