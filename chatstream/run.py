"""The one interface the endpoint and the response drive: a single chain run (`runner.ChainRun`) and
several deployments merged into one stream (`fanout.MultiRun`) both implement it."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol

from chatstream.errors import ChatError
from chatstream.events import Event


class Run(Protocol):
    @property
    def started(self) -> bool:
        """Whether the `start` event was produced (after it, failures are events, not statuses)."""
        ...

    @property
    def request_id(self) -> str: ...

    @property
    def span(self) -> Any:
        """The telemetry span log records written for the run belong to (None: export off, or one
        span per deployment)."""
        ...

    def events(self) -> AsyncGenerator[Event, None]:
        """The run's events; a failure before the first one is raised as `ChatError`."""
        ...

    def fail(self, error: ChatError) -> list[Event]:
        """The events that close a stream the run can no longer finish (late failure, deadline)."""
        ...

    def cancelled(self) -> None:
        """The caller left, or the run was stopped, before it finished."""
        ...

    @property
    def finished(self) -> bool:
        """Nothing more will happen: completed, failed, cancelled or stopped."""
        ...

    def stop(self, *, outcome: str = "stopped") -> None:
        """End the run cleanly, now: its stream ends with `end` (`finish_reason: "cancelled"`, the
        usage so far) instead of stopping mid-air; `outcome` is what its log line reports."""
        ...

    def log_outcome(self) -> None:
        """Report what the run did (once; later calls do nothing)."""
        ...
