"""Turning whatever the model client (or a chain) raised into a `ChatError` from the catalogue.

The caller learns the class of failure (rate limit, filter, timeout, ...) and whether a retry
may help; the upstream's own message, URL and headers stay in our logs.
"""

from __future__ import annotations

import email.utils
import logging
import math
from datetime import UTC, datetime
from typing import Any

import openai

from chains.errors import ChainFailure, ThreadStoreUnavailable
from chatstream import errors
from chatstream.errors import ChatError

log = logging.getLogger("chatstream.upstream")


class UpstreamProtocolError(openai.APIError):
    """The model server sent bytes that are not a chat-completion stream (raised by `chunk_stream`)."""


class StreamTruncated(openai.APIError):
    """The stream ended before the answer was complete: no `[DONE]`, no `finish_reason`."""


#: The longest wait we pass on (or sleep on). An upstream hint above it, or `inf`, is clamped to it:
#: five minutes is longer than any Azure OpenAI rate-limit window, and a caller told to wait hours
#: (or forever) by a broken upstream would simply never come back.
MAX_RETRY_AFTER_SECONDS = 300.0


def _hint_seconds(raw: str, divisor: float) -> float | None:
    """One header value as seconds: a number (`retry-after-ms` or `Retry-After`) or, for
    `Retry-After` only, an HTTP-date. NaN, negative and unparsable values are no hint at all."""
    text = raw.strip()
    value: float | None
    try:
        value = float(text) / divisor
    except (ValueError, OverflowError):
        value = _seconds_until(text) if divisor == 1.0 else None
    if value is None or math.isnan(value) or value < 0:
        return None
    return min(value, MAX_RETRY_AFTER_SECONDS)


def _seconds_until(http_date: str) -> float | None:
    """`Retry-After: Wed, 21 Oct 2015 07:28:00 GMT` (RFC 9110) as seconds from now; a past date is 0."""
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _retry_after(headers: Any) -> float | None:
    """The upstream's hint, finite and within `MAX_RETRY_AFTER_SECONDS`, or None."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if not isinstance(raw, str):
            continue
        value = _hint_seconds(raw, divisor)
        if value is not None:
            return value
    return None


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """`Retry-After` for the caller: whole seconds, at least 1, at most `MAX_RETRY_AFTER_SECONDS`."""
    if seconds is None or not math.isfinite(seconds):
        return {}
    return {"Retry-After": str(max(1, min(math.ceil(seconds), int(MAX_RETRY_AFTER_SECONDS))))}


def _azure_error_code(exc: openai.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            code = inner.get("code")
            return str(code) if code is not None else None
    return None


def _status_error(exc: openai.APIStatusError) -> ChatError:
    status = exc.status_code
    if status == 429:
        retry_after = _retry_after(exc.response.headers)
        return errors.rate_limited(retry_after, retry_after_header(retry_after))
    if status == 400 and _azure_error_code(exc) == "content_filter":
        return errors.prompt_filtered()
    if status in (401, 403):
        return errors.upstream_auth_failed()
    if status == 404:
        return errors.deployment_not_found()
    if 300 <= status < 400:  # redirects are never followed (aiohttp_transport)
        return errors.upstream_error()
    if status in (408, 504):
        return errors.upstream_timeout(started=False)
    if status == 503:
        retry_after = _retry_after(exc.response.headers)
        return errors.upstream_overloaded(retry_after, retry_after_header(retry_after))
    if status >= 500:
        return errors.upstream_error()
    return errors.upstream_rejected()


def to_chat_error(exc: BaseException, *, started: bool = False, request_id: str = "-") -> ChatError:
    """Classify `exc`; the status is what the caller gets when nothing was sent yet (`started`
    False), the code and message what an `error` event says after text went out."""
    if isinstance(exc, ChatError):
        return exc
    if isinstance(exc, ThreadStoreUnavailable):
        log.warning("thread store failure request_id=%s: %s", request_id, exc.__cause__ or exc)
        return errors.threads_unavailable()
    if isinstance(exc, ChainFailure):
        log.info("chain failure request_id=%s code=%s: %s", request_id, exc.code, exc.message)
        return errors.chain_failed(exc.code, exc.message, exc.retryable)
    log.warning(
        "upstream failure request_id=%s started=%s: %s: %s", request_id, started, type(exc).__name__, exc
    )
    if isinstance(exc, StreamTruncated):
        return errors.upstream_interrupted("the model service ended the answer before it was complete")
    if isinstance(exc, UpstreamProtocolError):
        return errors.upstream_error("the model service sent something that is not an answer")
    if isinstance(exc, openai.APITimeoutError):
        return errors.upstream_timeout(started)
    if isinstance(exc, openai.APIConnectionError):
        return errors.upstream_interrupted() if started else errors.upstream_unavailable()
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc)
    if isinstance(exc, openai.APIError):  # an error object inside the stream
        return errors.upstream_error()
    log.error("unexpected failure while streaming request_id=%s", request_id, exc_info=exc)
    return errors.internal_error()
