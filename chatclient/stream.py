"""Talk to `POST /api/chat`: stream its events (SSE or NDJSON) or get one JSON answer.

Built on httpx (async) and httpx-sse; depends on nothing else in this repository, so it can be
copied into any program. Leaving the `async for` early (break, exception, task cancelled)
closes the connection, which is how the app learns to cancel the model call.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from httpx_sse import aconnect_sse

Event = dict[str, Any]
Message = dict[str, str]
StreamFormat = Literal["sse", "ndjson"]

#: Connecting should be quick; reading may legitimately wait (heartbeats arrive every 15 s by default).
DEFAULT_TIMEOUT = httpx.Timeout(10.0, read=120.0)


class ChatHttpError(Exception):
    """The app answered with an HTTP error before streaming (validation, rate limit, upstream down...)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @classmethod
    async def from_response(cls, response: httpx.Response) -> ChatHttpError:
        await response.aread()
        code, message = f"http_{response.status_code}", response.reason_phrase or "request failed"
        try:
            error = response.json()["error"]
            code, message = error.get("code", code), error.get("message", message)
        except (ValueError, KeyError, TypeError):
            if response.status_code == 401:  # Azure's own 401 has an empty body
                message = "the app needs a function key (--key or CHAT_FUNCTION_KEY)"
        retry_after = response.headers.get("retry-after")
        try:
            seconds = float(retry_after) if retry_after is not None else None
        except ValueError:
            seconds = None
        return cls(response.status_code, code, message, seconds)


def chat_url(url: str) -> str:
    """Accept the app's base URL (`http://127.0.0.1:7071`) or the full endpoint URL."""
    url = url.rstrip("/")
    path = urlsplit(url).path
    return url if path.endswith("/chat") else f"{url}/api/chat"


def _options(
    chain: str | None, deployments: Sequence[str] | None, max_tokens: int | None, temperature: float | None
) -> dict[str, Any]:
    return {
        "chain": chain,
        "deployments": list(deployments) if deployments else None,
        "max_tokens": max_tokens,
        "temperature": temperature,
    }


def _request(
    messages: Sequence[Message], key: str | None, options: dict[str, Any], stream: bool
) -> tuple[dict[str, str], dict[str, Any]]:
    headers = {"x-functions-key": key} if key else {}
    body: dict[str, Any] = {"messages": list(messages), "stream": stream}
    body.update({k: v for k, v in options.items() if v is not None})
    return headers, body


async def stream_chat(
    url: str,
    messages: Sequence[Message],
    *,
    key: str | None = None,
    format: StreamFormat = "sse",
    client: httpx.AsyncClient | None = None,
    chain: str | None = None,
    deployments: Sequence[str] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> AsyncIterator[Event]:
    """Yield each event (`start`, `delta`, `error`, `end`, ...) as it arrives.

    With several `deployments` their events arrive interleaved (tell them apart by `deployment`):
    one `start`, an `end` per deployment, then `done`.

    Unknown event types are yielded too; skip what you do not handle. Heartbeats never surface
    (SSE comments; blank NDJSON lines, or the `heartbeat` objects older servers sent). Raises
    ChatHttpError for an HTTP error answer.
    """
    headers, body = _request(messages, key, _options(chain, deployments, max_tokens, temperature), True)
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)
    try:
        if format == "sse":
            async with aconnect_sse(http, "POST", chat_url(url), json=body, headers=headers) as source:
                if source.response.is_error:
                    raise await ChatHttpError.from_response(source.response)
                async for sse in source.aiter_sse():
                    if sse.data == "[DONE]":
                        return
                    if sse.data:
                        yield json.loads(sse.data)
        elif format == "ndjson":
            headers["Accept"] = "application/x-ndjson"
            async with http.stream("POST", chat_url(url), json=body, headers=headers) as response:
                if response.is_error:
                    raise await ChatHttpError.from_response(response)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") != "heartbeat":
                        yield event
        else:
            raise ValueError(f"format must be 'sse' or 'ndjson', not {format!r}")
    finally:
        if own_client:
            await http.aclose()


async def ask(
    url: str,
    messages: Sequence[Message],
    *,
    key: str | None = None,
    client: httpx.AsyncClient | None = None,
    chain: str | None = None,
    deployments: Sequence[str] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    """One JSON answer (`"stream": false`): `{id, content, finish_reason, usage, ...}`."""
    headers, body = _request(messages, key, _options(chain, deployments, max_tokens, temperature), False)
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)
    try:
        response = await http.post(chat_url(url), json=body, headers=headers)
        if response.is_error:
            raise await ChatHttpError.from_response(response)
        answer: dict[str, Any] = response.json()
        return answer
    finally:
        if own_client:
            await http.aclose()
