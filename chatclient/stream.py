"""Talk to `POST /api/chat`: stream its events (SSE or NDJSON) or get one JSON answer.

Built on httpx (async) and httpx-sse; depends on nothing else in this repository, so it can be
copied into any program (with `result.py`). Streams are resumable by default: a dropped connection
is picked up where it broke, and closing a stream early stops the answer (see `ChatStream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource

from chatclient.result import ChatResult

Event = dict[str, Any]
Message = dict[str, str]
StreamFormat = Literal["sse", "ndjson"]

#: Connecting should be quick; reading may legitimately wait (heartbeats arrive every 15 s by default).
DEFAULT_TIMEOUT = httpx.Timeout(10.0, read=120.0)
#: Reconnects in a row that may fail (a reconnect that brings events resets the count).
DEFAULT_MAX_RESUMES = 5
#: Wait before a reconnect: BACKOFF * 2**failures seconds, at most MAX_BACKOFF.
BACKOFF, MAX_BACKOFF = 0.25, 4.0
#: The stop answers once the stream has ended, or after 5 s with 202.
STOP_TIMEOUT = httpx.Timeout(10.0, read=15.0)
#: After a stop, how long the stream's `end` may take to arrive before the connection is closed.
STOP_END_WAIT = 10.0

#: Called before each reconnect with its number (1, 2, ...) and what ended the last connection.
ResumeCallback = Callable[[int, BaseException], None]


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


class StreamCut(Exception):
    """The connection dropped before the stream's last event and it could not be resumed."""


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


def _auth(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k == "x-functions-key"}


def _request(
    messages: Sequence[Message], key: str | None, options: dict[str, Any], stream: bool
) -> tuple[dict[str, str], dict[str, Any]]:
    headers = {"x-functions-key": key} if key else {}
    body: dict[str, Any] = {"messages": list(messages), "stream": stream}
    body.update({k: v for k, v in options.items() if v is not None})
    return headers, body


class ChatStream:
    """One streamed answer: `async for event in stream`, resumed across dropped connections, stoppable.

    With `resumable` (the default) the app runs the answer independently of the connection and numbers
    its events; when the connection drops mid-stream (a read error, a timeout, or the body ending
    before the last event) this reconnects to `GET /api/chat/{id}/stream` with `Last-Event-ID` and
    goes on, up to `max_resumes` times in a row with backoff. Events already seen are skipped by id,
    so no text is lost or repeated. `result` is kept up to date: text, deployment, `fallback_from`,
    usage, how it ended.

    `stop()` asks the app to end the answer and reads on to its `end`: the partial answer and its
    (estimated) usage. Leaving the loop early and closing the stream (`aclose`, `async with`) also
    stops a resumable answer, which would otherwise run on unread for the app's grace period.
    Use it as `async with ChatStream(...) as stream:` (or call `aclose()`): that closes its client.
    """

    def __init__(
        self,
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
        resumable: bool = True,
        max_resumes: int = DEFAULT_MAX_RESUMES,
        on_resume: ResumeCallback | None = None,
    ) -> None:
        if format not in ("sse", "ndjson"):
            raise ValueError(f"format must be 'sse' or 'ndjson', not {format!r}")
        options = _options(chain, deployments, max_tokens, temperature)
        self._headers, self._body = _request(messages, key, options, True)
        if resumable:
            self._body["resumable"] = True
        if format == "ndjson":
            self._headers["Accept"] = "application/x-ndjson"
        self.url = chat_url(url)
        self.format = format
        self.resumable = resumable
        self.max_resumes = max_resumes
        self.on_resume = on_resume
        self.result = ChatResult()
        self._own_client = client is None
        self._http = client or httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)
        self._events: AsyncGenerator[Event, None] | None = None
        self._lock = asyncio.Lock()
        self._finished = asyncio.Event()
        self._stop_sent = False

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> Event:
        if self._events is None:
            self._events = self._run()
        async with self._lock:
            return await self._events.__anext__()

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (stopping a resumable answer that has not ended) and the client."""
        if self._events is not None:
            await self._events.aclose()
        if self._own_client:
            await self._http.aclose()
        self._finished.set()

    async def request_stop(self) -> bool:
        """POST the stop; True when the app took it (the stream's `end` is on its way) or had finished.

        The caller keeps reading the stream: its last events (`end` with `finish_reason: "cancelled"`
        and the usage so far) arrive as usual."""
        if self.result.id is None:
            return False
        self._stop_sent = True
        try:
            response = await self._http.post(
                f"{self.url}/{self.result.id}/stop", headers=_auth(self._headers), timeout=STOP_TIMEOUT
            )
        except httpx.HTTPError:
            return False
        # 202: another instance runs it; 409: it had already finished (its end is there to read).
        return response.status_code in (200, 202, 409)

    async def stop(self) -> ChatResult:
        """End the answer now; returns the result with the partial text and its estimated usage.

        Before the app named the stream (no `start` yet) or when the app refuses the stop, the
        connection is closed instead. Called while another task iterates, this waits for that task
        to read the `end`; otherwise it reads the rest itself."""
        if self.result.ended or self._finished.is_set():
            return self.result
        if not await self.request_stop():
            await self.aclose()
            return self.result
        try:
            async with asyncio.timeout(STOP_END_WAIT):
                if self._lock.locked():
                    await self._finished.wait()
                else:
                    async for _ in self:
                        pass
        except TimeoutError:
            if not self._lock.locked():  # a reader in another task closes its own stream
                await self.aclose()
        return self.result

    async def _run(self) -> AsyncGenerator[Event, None]:
        """Every event once, in order, across as many connections as it takes."""
        last_id = -1
        failures = 0
        try:
            while True:
                progressed = False
                try:
                    async with contextlib.aclosing(self._connect(last_id)) as events:
                        async for event_id, event in events:
                            if event_id is not None:
                                if event_id <= last_id:
                                    continue  # already seen on an earlier connection
                                last_id = event_id
                            progressed = True
                            self.result.observe(event)
                            yield event
                    if self.result.ended or not self.resumable:
                        return
                    reason: BaseException = StreamCut("the stream ended before its last event")
                except httpx.TransportError as exc:
                    if self.result.ended:
                        return
                    if not self.resumable or self.result.id is None:
                        raise
                    reason = exc
                failures = 0 if progressed else failures + 1
                if failures >= self.max_resumes:
                    raise StreamCut(f"the stream could not be resumed after {failures} attempts") from reason
                await asyncio.sleep(min(MAX_BACKOFF, BACKOFF * 2**failures))
                self.result.resumes += 1
                if self.on_resume:
                    self.on_resume(self.result.resumes, reason)
        finally:
            # Left early (closed, cancelled, failed, given up): a resumable answer would run on unread.
            if self.resumable and not self.result.ended and not self._stop_sent:
                with contextlib.suppress(Exception):
                    await self.request_stop()
            self._finished.set()

    async def _connect(self, last_id: int) -> AsyncGenerator[tuple[int | None, Event], None]:
        """(id, event) for each event of one connection: the POST, or a resume after `last_id`."""
        headers = dict(self._headers)
        if self.result.id is None:
            request = self._http.build_request("POST", self.url, json=self._body, headers=headers)
        else:
            if last_id >= 0:
                headers["Last-Event-ID"] = str(last_id)
            request = self._http.build_request("GET", f"{self.url}/{self.result.id}/stream", headers=headers)
        if self.format == "sse":
            request.headers["Accept"] = "text/event-stream"
        response = await self._http.send(request, stream=True)
        try:
            if response.is_error:
                raise await ChatHttpError.from_response(response)
            if response.status_code == 204:
                raise ChatHttpError(204, "stream_not_found", "the app has no stream to resume")
            self.result.id = self.result.id or response.headers.get("x-request-id")
            if self.format == "sse":
                async for sse in EventSource(response).aiter_sse():
                    if sse.data == "[DONE]":
                        return
                    if sse.data:
                        yield (int(sse.id) if sse.id else None), json.loads(sse.data)
            else:
                # NDJSON has no ids: an event's id is its line number (blank lines left out), from 0.
                line_id = last_id
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "heartbeat":  # older servers
                        continue
                    line_id += 1
                    yield (line_id if self.resumable else None), event
        finally:
            await response.aclose()


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
    resumable: bool = True,
    max_resumes: int = DEFAULT_MAX_RESUMES,
) -> AsyncIterator[Event]:
    """Yield each event (`start`, `delta`, `error`, `end`, ...) as it arrives.

    With several `deployments` their events arrive interleaved (tell them apart by `deployment`):
    one `start`, an `end` per deployment, then `done`.

    Unknown event types are yielded too; skip what you do not handle. Heartbeats never surface
    (SSE comments; blank NDJSON lines, or the `heartbeat` objects older servers sent). A dropped
    connection is resumed (see `ChatStream`, which also gives the result and `stop()`). Raises
    ChatHttpError for an HTTP error answer, StreamCut when a dropped stream cannot be resumed.
    """
    stream = ChatStream(
        url,
        messages,
        key=key,
        format=format,
        client=client,
        chain=chain,
        deployments=deployments,
        max_tokens=max_tokens,
        temperature=temperature,
        resumable=resumable,
        max_resumes=max_resumes,
    )
    try:
        async for event in stream:
            yield event
    finally:
        await stream.aclose()


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
