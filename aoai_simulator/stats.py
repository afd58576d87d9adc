"""Per-request records and live counters, so tests can assert what the server actually saw.

The event loop thread writes, the test thread reads: all structural changes happen under a lock and
`snapshot()` returns plain dicts, never live objects.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

#: Outcomes a stream can end with; "in_progress" until it does.
OUTCOMES = (
    "in_progress",
    "completed",
    "client_closed",
    "dropped",
    "stalled",
    "reset",
    "timeout",
    "error",
    "cancelled",
)


@dataclass
class RequestRecord:
    request_id: str
    path: str
    deployment: str | None = None
    api_version: str | None = None
    status: int | None = None
    stream: bool = False
    max_tokens: int | None = None
    #: Every request field except `messages` and `tools`, as sent (what a test checks the app sent).
    params: dict[str, Any] = field(default_factory=dict)
    #: Hidden tokens a reasoning deployment spent (0 elsewhere).
    reasoning_tokens: int = 0
    include_usage: bool = False
    messages: list[Any] = field(default_factory=list)
    prompt_tokens: int = 0
    #: Content chunks (one per token) handed to the server; for non-streaming, tokens in the answer.
    chunks_sent: int = 0
    finish_reason: str | None = None
    fault: str | None = None
    attempt: int = 1
    outcome: str = "in_progress"
    #: The client went away before the response was complete (cancel, timeout, closed stream).
    client_disconnected: bool = False
    started_at: float = field(default_factory=time.time)
    duration_ms: float | None = None

    @property
    def closed_early(self) -> bool:
        return self.client_disconnected and self.outcome != "completed"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["closed_early"] = self.closed_early
        return data


class SimulatorStats:
    """Bounded history plus counters that survive the history's rotation."""

    def __init__(self, history_size: int = 1000) -> None:
        self._lock = threading.Lock()
        self._records: deque[RequestRecord] = deque(maxlen=history_size)
        self._open_streams = 0
        self._totals = {
            "requests_total": 0,
            "streams_total": 0,
            "streams_completed": 0,
            "streams_closed_early": 0,
            "chunks_sent_total": 0,
        }

    def record(self, record: RequestRecord) -> RequestRecord:
        with self._lock:
            self._records.append(record)
            self._totals["requests_total"] += 1
        return record

    def stream_opened(self) -> None:
        with self._lock:
            self._open_streams += 1
            self._totals["streams_total"] += 1

    def stream_closed(self, record: RequestRecord) -> None:
        with self._lock:
            self._open_streams -= 1
            self._totals["chunks_sent_total"] += record.chunks_sent
            if record.outcome == "completed":
                self._totals["streams_completed"] += 1
            if record.closed_early:
                self._totals["streams_closed_early"] += 1

    @property
    def open_streams(self) -> int:
        return self._open_streams

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            records = [r.to_dict() for r in self._records]
            return {**self._totals, "open_streams": self._open_streams, "requests": records}

    def reset(self) -> None:
        """Forget history and totals; open streams keep counting so `open_streams` stays truthful."""
        with self._lock:
            self._records.clear()
            for key in self._totals:
                self._totals[key] = 0
