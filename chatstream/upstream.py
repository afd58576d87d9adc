"""Turning whatever the model client raised into a `ChatError` that is safe to show.

The caller learns the class of failure (rate limit, filter, timeout, ...) and whether a retry
may help; the upstream's own message, URL and headers stay in our logs.
"""

from __future__ import annotations

import logging
from typing import Any

import openai

from chatstream.errors import ChatError

log = logging.getLogger("chatstream.upstream")


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / divisor
        except ValueError:
            continue
        if value >= 0:
            return value
    return None


def _azure_error_code(exc: openai.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            code = inner.get("code")
            return str(code) if code is not None else None
    return None


def to_chat_error(exc: BaseException) -> ChatError:
    """Classify `exc`; the returned error's status is what the caller gets before any byte was sent."""
    if isinstance(exc, ChatError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return ChatError(504, "upstream_timeout", "the model did not answer in time", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return ChatError(
            502, "upstream_unavailable", "the model service could not be reached", retryable=True
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            retry_after = _retry_after(exc.response.headers)
            headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else {}
            return ChatError(
                429,
                "rate_limited",
                "the model is rate limited; retry later",
                retryable=True,
                retry_after=retry_after,
                headers=headers,
            )
        if status == 400 and _azure_error_code(exc) == "content_filter":
            return ChatError(
                400,
                "content_filter",
                "the prompt was blocked by the content filter; rephrase it",
                retryable=False,
            )
        if status in (401, 403):
            return ChatError(
                502,
                "upstream_auth_failed",
                "the app is not allowed to call the model; check its identity and role",
                retryable=False,
            )
        if status == 404:
            return ChatError(
                502, "deployment_not_found", "the configured model deployment does not exist", retryable=False
            )
        if status >= 500:
            return ChatError(502, "upstream_error", "the model service failed; retry later", retryable=True)
        return ChatError(502, "upstream_rejected", "the model service rejected the request", retryable=False)
    log.error("unexpected failure while streaming", exc_info=exc)
    return ChatError(500, "internal_error", "the server failed to produce an answer", retryable=True)
