"""Fallback across deployments: when a deployment fails before its first token, the next one answers.

Only a failure another deployment may not share moves on (rate limited, overloaded, 5xx, unreachable,
timed out, an empty answer), and only before the `start` event: once a candidate has started, its
stream is the answer, failures included, so no text is ever sent twice or by two deployments. Each
candidate is a `ChainRun` with its own record (so each deployment's outcome line is logged), built
when its turn comes; its own retries (`retry.RetryPolicy`) come first. Everything a `run.Run` does
is delegated to the candidate running now.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from chatstream.errors import ChatError
from chatstream.events import Event
from chatstream.outcome import RunRecord
from chatstream.runner import ChainRun

log = logging.getLogger("chatstream.run")

#: Failures before the first token that the next deployment may not have. Not: the content filter
#: (the same prompt is blocked everywhere), the caller's own mistakes (400), auth (one identity for
#: every deployment), `deployment_not_found` (a configuration error, left loud) and chain failures.
FALLBACK_CODES = frozenset(
    {
        "rate_limited",
        "upstream_overloaded",
        "upstream_error",
        "upstream_unavailable",
        "upstream_timeout",
        "upstream_interrupted",
    }
)


class FallbackRun:
    """One-deployment request with fallbacks, as one `run.Run`.

    `first` is the requested deployment's run; `build(name)` makes the run of fallback `name`. A next
    candidate is started only while at least `first_event_wait` seconds of the deadline remain; if
    every candidate fails, the last failure is raised (the one that ended the sequence: its status,
    code and `Retry-After` describe the deployment tried last).
    """

    def __init__(
        self,
        first: ChainRun,
        fallbacks: list[str],
        build: Callable[[str], ChainRun],
        *,
        first_event_wait: float,
        deadline_seconds: float,
    ) -> None:
        self.current = first
        self.fallbacks = list(fallbacks)
        self.build = build
        self.first_event_wait = first_event_wait
        self.deadline_at = time.monotonic() + deadline_seconds
        #: `{"deployment", "code", "status"}` of each candidate that failed before its first token.
        self.fallback_from: list[dict[str, Any]] = []
        self._in_band_errors = first.in_band_errors
        #: A stop was asked for: no further candidate is tried.
        self._stopping = False

    # -- delegated to the candidate running now -------------------------------------------------

    @property
    def started(self) -> bool:
        return self.current.started

    @started.setter
    def started(self, value: bool) -> None:
        self.current.started = value

    @property
    def in_band_errors(self) -> bool:
        return self._in_band_errors

    @in_band_errors.setter
    def in_band_errors(self, value: bool) -> None:
        self._in_band_errors = value
        self.current.in_band_errors = value

    @property
    def request_id(self) -> str:
        return self.current.request_id

    @property
    def span(self) -> Any:
        return self.current.span

    @property
    def record(self) -> RunRecord:
        """The record of the candidate running now (after the stream: the one that answered)."""
        return self.current.record

    @property
    def deployment(self) -> str:
        return self.current.deployment

    def fail(self, error: ChatError) -> list[Event]:
        closing = self.current.fail(error)
        return [self._with_fallbacks(event) for event in closing]

    def cancelled(self) -> None:
        self.current.cancelled()

    @property
    def finished(self) -> bool:
        return self.current.finished

    def stop(self, *, outcome: str = "stopped") -> None:
        self._stopping = True
        self.current.stop(outcome=outcome)

    def log_outcome(self) -> None:
        """The current candidate's line; those that failed before it were reported as they failed."""
        self.current.log_outcome()

    # -- the sequence ---------------------------------------------------------------------------

    def _with_fallbacks(self, event: Event) -> Event:
        if event["type"] == "start" and self.fallback_from:
            return {**event, "fallback_from": list(self.fallback_from)}
        return event

    def _may_fall_back(self, error: ChatError) -> bool:
        if error.code not in FALLBACK_CODES or not self.fallbacks or self._stopping:
            return False
        remaining = self.deadline_at - time.monotonic()
        if remaining < self.first_event_wait:
            log.info(
                "chat fallback skipped request_id=%s code=%s remaining_s=%.1f",
                self.request_id,
                error.code,
                remaining,
            )
            return False
        return True

    def _next(self, error: ChatError) -> None:
        failed = self.current
        self.fallback_from.append(
            {"deployment": failed.deployment, "code": error.code, "status": error.status}
        )
        failed.log_outcome()
        name = self.fallbacks.pop(0)
        log.info(
            "chat fallback request_id=%s from=%s code=%s status=%d to=%s",
            self.request_id,
            failed.deployment,
            error.code,
            error.status,
            name,
        )
        self.current = self.build(name)
        self.current.in_band_errors = self._in_band_errors

    async def events(self) -> AsyncGenerator[Event, None]:
        while True:
            stream = self.current.events()
            try:
                try:
                    first = await anext(stream)
                except ChatError as error:  # before its `start`: nothing reached the caller
                    if not self._may_fall_back(error):
                        raise
                    self._next(error)
                    continue
                yield self._with_fallbacks(first)
                async for event in stream:
                    yield event
                return
            finally:
                await stream.aclose()
