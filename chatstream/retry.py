"""Retrying a chain that failed before its first chunk, and only then: nothing has reached the caller,
so another attempt cannot duplicate text, and a failure still gets a real HTTP status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from chatstream.errors import ChatError
from chatstream.outcome import RunRecord
from chatstream.upstream import to_chat_error

log = logging.getLogger("chatstream.run")

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

#: The first chunk of a chain that streamed nothing at all.
NOTHING: Any = object()


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_retries` more attempts, each only if its wait ends within `window` seconds of the
    run's start (the first-event wait)."""

    max_retries: int = 0
    window: float = 0.0

    def delay(self, error: ChatError, retries: int, started_at: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now. The server's hint wins;
        a hint that does not fit in the window is not slept on (the caller gets it as Retry-After)."""
        if error.code not in RETRYABLE_CODES or retries >= self.max_retries:
            return None
        if error.retry_after is not None:
            delay = error.retry_after
        else:
            backoff = min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2**retries)
            delay = backoff * (0.5 + random.random() / 2)
        if time.perf_counter() + delay > started_at + self.window:
            return None
        return delay


async def open_stream(
    start: Callable[[], AsyncIterator[Any]], policy: RetryPolicy, record: RunRecord
) -> tuple[AsyncIterator[Any], Any]:
    """The chain's stream and its first chunk (`NOTHING` if it ended at once); a failure before that
    chunk is retried by `policy`, then raised as the `ChatError` the caller gets."""
    while True:
        stream = aiter(start())
        try:
            return stream, await anext(stream)
        except StopAsyncIteration:
            return stream, NOTHING
        except Exception as exc:
            await aclose_quietly(stream)
            error = to_chat_error(exc, request_id=record.request_id)
            delay = policy.delay(error, record.retries, record.started_at)
            if delay is None:
                raise error from exc
            record.retries += 1
            log.info(
                "chat retry request_id=%s attempt=%d code=%s wait_ms=%.0f",
                record.request_id,
                record.retries + 1,
                error.code,
                delay * 1000,
            )
            await asyncio.sleep(delay)
        except BaseException:
            await aclose_quietly(stream)
            raise


async def aclose_quietly(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
