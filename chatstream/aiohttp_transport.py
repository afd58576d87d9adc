"""An httpx2 transport on aiohttp, for the openai SDK: cheaper reads with hundreds of open streams.

The SDK ships one (`openai.DefaultAioHttpClient`), but it maps a refused connection to a *timeout*
(`ClientConnectorError` is also a `ClientConnectionError`, which it maps to `ConnectTimeout`), so a
dead upstream would be reported as 504 instead of 502. This one maps failures the way httpx's own
transport does, and exposes the aiohttp response (`AIOHTTP_RESPONSE` in `Response.extensions`) so
`chunk_stream` can read the body without the httpx2 wrapper layers.

Three rules of its own. Redirects are never followed, by aiohttp or by the httpx2 client above it (the
`Location` header of a 3xx is dropped, so the SDK sees a plain status error): the model's endpoint is
configured, and a redirect elsewhere would send the prompt and the key to another host. Idle pooled
connections expire before the upstream's own idle close (`KEEPALIVE_SECONDS`). And a request on a
*reused* connection that the server closed at that very moment (nothing of a response arrived) is sent
again (on the next pooled connection, or a fresh one): the server cannot have answered it, so the caller
cannot see text twice (the model may, rarely, have started work that nobody reads). A request on a
fresh connection, or one that got any byte back, is never sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace

import aiohttp
import httpx2
from aiohttp.helpers import BasicAuth, get_env_proxy_for_url
from yarl import URL

log = logging.getLogger("chatstream.transport")

#: Key of the aiohttp `ClientResponse` in an `httpx2.Response`'s extensions.
AIOHTTP_RESPONSE = "chatstream.aiohttp_response"

#: Idle pooled connections are dropped after this many seconds: clearly below the 5 s idle close of
#: common servers (uvicorn, many proxies), so the pool never hands out one the server is closing.
#: `CHAT_UPSTREAM_POOL_KEEPALIVE_SECONDS` overrides it (internal: tests scale the race down).
KEEPALIVE_SECONDS = 4.0

#: After `[DONE]` the answer ends at once; the connection goes back to the pool only if the body's
#: end arrives within this many seconds (and this many bytes), else it is closed.
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 * 1024

#: A reused connection that failed with one of these before any byte of the response came back.
_STALE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
#: After a burst every idle connection of the pool may be stale: one retry per stale one, at most this many.
_MAX_STALE_RETRIES = 32

if not hasattr(aiohttp.StreamReader, "_read_nowait"):
    # Without it the bytes that arrived just before a dropped connection would be lost (`_buffered`);
    # chatstream.models then falls back to the SDK's own transport.
    raise ImportError("aiohttp.StreamReader._read_nowait is missing")


@contextlib.contextmanager
def mapped_errors(connecting: bool) -> Iterator[None]:
    """aiohttp's exceptions as the httpx2 ones the openai SDK turns into its own."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx2.ConnectTimeout(str(exc)) from exc
    except aiohttp.SocketTimeoutError as exc:  # sock_read: silence after the request was sent
        raise httpx2.ReadTimeout(str(exc) or "read timed out") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:  # SocketTimeoutError included
        raise (httpx2.ConnectTimeout if connecting else httpx2.ReadTimeout)(str(exc) or "timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx2.ConnectError(str(exc)) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise httpx2.RemoteProtocolError(str(exc)) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise (httpx2.ConnectError if connecting else httpx2.ReadError)(str(exc)) from exc


async def read_body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as it arrives, each read whatever the socket had (never waits to fill a buffer).

    When the upstream drops or resets the connection, aiohttp raises on the next read even if bytes
    that arrived before the drop are still buffered; those are forwarded first (httpx does the same)."""
    content = response.content
    while True:
        try:
            with mapped_errors(connecting=False):
                data = await content.readany()
        except (httpx2.RemoteProtocolError, httpx2.ReadError):
            leftover = _buffered(content)
            if leftover:
                yield leftover
            raise
        if not data:
            return
        yield data


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """What aiohttp still holds after the connection broke (private API, hence guarded)."""
    read_nowait = getattr(content, "_read_nowait", None)
    try:
        return bytes(read_nowait(-1)) if read_nowait is not None else b""
    except Exception:
        return b""


#: Responses whose connection `finish` handed to a background drain (`close` leaves them alone).
_LINGER_ATTR = "_chatstream_lingering"
_lingering: set[asyncio.Task[None]] = set()


async def close(response: aiohttp.ClientResponse) -> None:
    """Reuse the connection if the body was read to the end; otherwise close it (the upstream sees it)."""
    if getattr(response, _LINGER_ATTR, False):
        return
    if response.content.is_eof():
        response.release()
    else:
        response.close()


def finish(response: aiohttp.ClientResponse) -> None:
    """The answer is complete (`[DONE]`): the caller goes on at once, whatever the server does next.

    If the body's end is already here the connection is reused; else a background task waits for it a
    short while (`LINGER_SECONDS`), so a server that keeps the stream open after `[DONE]` costs one
    closed connection, never a wait for the read timeout."""
    if response.content.is_eof():
        response.release()
        return
    setattr(response, _LINGER_ATTR, True)
    task = asyncio.get_running_loop().create_task(_linger(response))
    _lingering.add(task)
    task.add_done_callback(_lingering.discard)


async def _linger(response: aiohttp.ClientResponse) -> None:
    content = response.content
    left = LINGER_BYTES
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            while left > 0 and not content.is_eof():
                left -= len(await content.readany()) or 1
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    finally:
        if content.is_eof() and content.exception() is None:
            response.release()
        else:
            response.close()


class _Body(httpx2.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data in read_body(self._response):
            yield data

    async def aclose(self) -> None:
        await close(self._response)


Proxy = tuple[URL | None, BasicAuth | None]


def _env_proxy(url: URL) -> Proxy:
    """HTTP(S)_PROXY / NO_PROXY for this URL, as httpx honours them by default (blocking: reads netrc)."""
    try:
        return get_env_proxy_for_url(url)
    except LookupError:
        return None, None


def _keepalive_seconds() -> float:
    raw = os.environ.get("CHAT_UPSTREAM_POOL_KEEPALIVE_SECONDS")
    try:
        value = float(raw) if raw else KEEPALIVE_SECONDS
    except ValueError:
        value = KEEPALIVE_SECONDS
    return value if value > 0 else KEEPALIVE_SECONDS


async def _on_reuse(_session: object, context: SimpleNamespace, _params: object) -> None:
    context.trace_request_ctx.reused = True


def _stale(exc: BaseException) -> bool:
    """The server closed the connection before a byte of the response (the idle-close race)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return isinstance(exc.message, str)  # otherwise a partial response head arrived
    if isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, aiohttp.ClientConnectorError):
        return exc.errno in _STALE_ERRNOS
    return False


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """One aiohttp session, created on first use inside the serving event loop."""

    def __init__(self, max_connections: int = 1000, keepalive_timeout: float | None = None) -> None:
        self._max_connections = max_connections
        self.keepalive_timeout = keepalive_timeout if keepalive_timeout is not None else _keepalive_seconds()
        self._session: aiohttp.ClientSession | None = None
        #: Proxy per origin, looked up once: aiohttp's `trust_env` would look it up (and parse
        #: ~/.netrc) in a worker thread on every request, two thread hops before the request is sent.
        self._proxies: dict[tuple[str, str, int | None], Proxy] = {}

    async def _proxy(self, url: URL) -> Proxy:
        key = (url.scheme, url.host or "", url.port)
        proxy = self._proxies.get(key)
        if proxy is None:
            proxy = self._proxies[key] = await asyncio.to_thread(_env_proxy, url)
        return proxy

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # aiohttp has no cap on how many connections stay idle; they expire after `keepalive_timeout`.
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self.keepalive_timeout,
                ssl=httpx2.create_ssl_context(),
            )
            reuse = aiohttp.TraceConfig()
            reuse.on_connection_reuseconn.append(_on_reuse)
            reuse.freeze()
            # No trust_env: the proxy comes from `_proxy` (and no ~/.netrc credentials are added).
            self._session = aiohttp.ClientSession(connector=connector, trace_configs=[reuse])
        return self._session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout = request.extensions.get("timeout", {})
        session = self._get_session()
        url = URL(str(request.url), encoded=True)
        proxy, proxy_auth = await self._proxy(url)
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in (b"accept-encoding", b"content-length")
        ]
        client_timeout = aiohttp.ClientTimeout(
            sock_connect=timeout.get("connect"), sock_read=timeout.get("read"), connect=timeout.get("pool")
        )
        data = request.content or None
        with mapped_errors(connecting=True):
            # Each stale pooled connection fails once and is closed, so this ends at the first fresh
            # connection (or a live pooled one); the cap only guards against a pool that never drains.
            for attempt in range(1, _MAX_STALE_RETRIES + 2):
                trace = SimpleNamespace(reused=False)
                try:
                    response = await session.request(
                        request.method,
                        url,
                        proxy=proxy,
                        proxy_auth=proxy_auth,
                        headers=headers,
                        data=data,
                        allow_redirects=False,
                        timeout=client_timeout,
                        trace_request_ctx=trace,
                    )
                    break
                except aiohttp.ClientError as exc:
                    if attempt > _MAX_STALE_RETRIES or not trace.reused or not _stale(exc):
                        raise
                    log.info("upstream closed a pooled connection as it was reused (%r); sending again", exc)
        # aiohttp decodes any content-encoding itself, so httpx2 must not try again. A redirect's
        # Location is dropped: nothing above may follow it.
        raw_headers = [(k, v) for k, v in response.raw_headers if k.lower() != b"content-encoding"]
        if 300 <= response.status < 400:
            log.warning(
                "upstream answered %d with Location %r; redirects are not followed",
                response.status,
                response.headers.get("Location"),
            )
            raw_headers = [(k, v) for k, v in raw_headers if k.lower() != b"location"]
        return httpx2.Response(
            status_code=response.status,
            headers=raw_headers,
            stream=_Body(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1", AIOHTTP_RESPONSE: response},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
