"""An httpx2 transport on aiohttp, for the openai SDK: cheaper reads with hundreds of open streams.

The SDK ships one (`openai.DefaultAioHttpClient`), but it maps a refused connection to a *timeout*
(`ClientConnectorError` is also a `ClientConnectionError`, which it maps to `ConnectTimeout`), so a
dead upstream would be reported as 504 instead of 502. This one maps failures the way httpx's own
transport does, and exposes the aiohttp response and a `BodyReader` of its body (`AIOHTTP_RESPONSE`,
`BODY_READER` in `Response.extensions`) so `chunk_stream` can read the body without the httpx2
wrapper layers.

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
import ssl
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace

import aiohttp
import httpx2
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import BasicAuth, get_env_proxy_for_url
from yarl import URL

log = logging.getLogger("chatstream.transport")

#: Key of the aiohttp `ClientResponse` in an `httpx2.Response`'s extensions.
AIOHTTP_RESPONSE = "chatstream.aiohttp_response"
#: Key of its `BodyReader` (what `chunk_stream` reads the body with, past the httpx2 wrapper layers).
BODY_READER = "chatstream.body_reader"

#: Idle pooled connections are dropped after this many seconds: clearly below the 5 s idle close of
#: common servers (uvicorn, many proxies), so the pool never hands out one the server is closing.
#: `CHAT_UPSTREAM_POOL_KEEPALIVE_SECONDS` overrides it (internal: tests scale the race down).
KEEPALIVE_SECONDS = 4.0

#: After `[DONE]` the answer ends at once; the connection goes back to the pool only if the body's
#: end arrives within this many seconds (and this many bytes), else it is closed.
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 * 1024

#: Whether the body's read timeout can be taken from aiohttp's protocol (private names, hence checked):
#: else aiohttp keeps it, re-arming its timer per read.
_OWN_READ_TIMEOUT = hasattr(ResponseHandler, "_reschedule_timeout") and isinstance(
    getattr(ResponseHandler, "read_timeout", None), property
)

#: A reused connection that failed with one of these before any byte of the response came back.
_STALE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
#: After a burst every idle connection of the pool may be stale: one retry per stale one, at most this many.
_MAX_STALE_RETRIES = 32

if not hasattr(aiohttp.StreamReader, "_read_nowait"):
    # Without it the bytes that arrived just before a dropped connection would be lost (`_buffered`);
    # chatstream.models then falls back to the SDK's own transport.
    raise ImportError("aiohttp.StreamReader._read_nowait is missing")


def mapped(exc: BaseException, connecting: bool) -> Exception:
    """An aiohttp (or socket) failure as the httpx2 one the openai SDK turns into its own."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx2.ConnectTimeout(str(exc))
    if isinstance(exc, aiohttp.SocketTimeoutError):  # sock_read: silence after the request was sent
        return httpx2.ReadTimeout(str(exc) or "read timed out")
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):  # SocketTimeoutError included
        return (httpx2.ConnectTimeout if connecting else httpx2.ReadTimeout)(str(exc) or "timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(str(exc))
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return httpx2.RemoteProtocolError(str(exc))
    return (httpx2.ConnectError if connecting else httpx2.ReadError)(str(exc))


#: What `mapped` translates (anything else passes through untouched).
_MAPPED = (aiohttp.ClientError, OSError, TimeoutError)


@contextlib.contextmanager
def mapped_errors(connecting: bool) -> Iterator[None]:
    """aiohttp's exceptions as the httpx2 ones the openai SDK turns into its own."""
    try:
        yield
    except _MAPPED as exc:
        raise mapped(exc, connecting) from exc


class BodyReader:
    """Reads a streamed response body, each read whatever the socket had (never waits to fill a buffer).

    Per read it costs one await: no context manager, and no timer re-armed. aiohttp's own `sock_read`
    timeout cancels and re-creates a timer on every network read; here the read timeout is one timer
    per stream that fires at most once per `read_timeout` and checks whether a read has been waiting
    that long (then the read fails with `httpx2.ReadTimeout`, as with `sock_read`). Time spent while
    nobody waits on the upstream (the caller writing to a slow client) is not upstream silence.

    When the upstream drops or resets the connection, aiohttp raises on the next read even if bytes
    that arrived before the drop are still buffered; those are returned first, the failure after
    (httpx does the same)."""

    __slots__ = ("_content", "_failure", "_handle", "_loop", "_read_timeout", "_waiting_since", "response")

    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float | None = None) -> None:
        self.response = response
        self._content = response.content
        self._failure: Exception | None = None
        self._loop = asyncio.get_running_loop()
        self._read_timeout = read_timeout if read_timeout and read_timeout > 0 else None
        self._waiting_since: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        if self._read_timeout is not None:
            self._handle = self._loop.call_later(self._read_timeout, self._check)

    def _check(self) -> None:
        timeout = self._read_timeout
        assert timeout is not None
        since = self._waiting_since
        now = self._loop.time()
        if since is not None and now - since >= timeout:
            self._handle = None
            self._content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
            return
        self._handle = self._loop.call_at((now if since is None else since) + timeout, self._check)

    def stop_timer(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    async def read(self) -> bytes:
        """The next bytes of the body; b"" at its end."""
        if self._failure is not None:
            raise self._failure
        self._waiting_since = self._loop.time()
        try:
            data = await self._content.readany()
        except _MAPPED as exc:
            self._waiting_since = None
            self.stop_timer()
            failure = mapped(exc, connecting=False)
            failure.__cause__ = exc
            leftover = (
                _buffered(self._content)
                if isinstance(failure, (httpx2.RemoteProtocolError, httpx2.ReadError))
                else b""
            )
            if leftover:
                self._failure = failure
                return leftover
            raise failure from exc
        self._waiting_since = None
        if not data:
            self.stop_timer()
        return data

    async def close(self) -> None:
        """Reuse the connection if the body was read to the end; otherwise close it (the upstream sees it)."""
        self.stop_timer()
        await close(self.response)

    def finish(self) -> None:
        """The answer is complete: see `finish`."""
        self.stop_timer()
        finish(self.response)


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
    def __init__(self, reader: BodyReader) -> None:
        self._reader = reader

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = self._reader.read
        while data := await read():
            yield data

    async def aclose(self) -> None:
        await self._reader.close()


Proxy = tuple[URL | None, BasicAuth | None]


def client_timeout(timeout: dict[str, float | None]) -> aiohttp.ClientTimeout:
    """httpx2's timeout extension (`connect`, `read`, `pool`) as aiohttp's."""
    return aiohttp.ClientTimeout(
        sock_connect=timeout.get("connect"), sock_read=timeout.get("read"), connect=timeout.get("pool")
    )


def _take_over_read_timeout(response: aiohttp.ClientResponse) -> float | None:
    """Once the head is here, the body's read timeout is the `BodyReader`'s: aiohttp's is turned off
    for this response (its protocol re-arms a timer on every network read). Returns the timeout the
    reader must keep, or None when aiohttp keeps it (no timeout, or an aiohttp without these names)."""
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    if protocol is None or not _OWN_READ_TIMEOUT:
        return None
    timeout = protocol.read_timeout
    if not timeout:
        return None
    protocol.read_timeout = None
    protocol._reschedule_timeout()  # cancels the timer armed for the head
    return timeout


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
        #: The TLS context httpx would use (certifi's CAs), built on the first https request only, in a
        #: worker thread: loading the CA bundle takes about 0.1 s, which an http:// upstream never needs.
        self._ssl: asyncio.Future[ssl.SSLContext] | None = None

    async def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None or (self._ssl.done() and self._ssl.exception() is not None):
            self._ssl = asyncio.ensure_future(asyncio.to_thread(httpx2.create_ssl_context))
        return await asyncio.shield(self._ssl)

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
            )
            reuse = aiohttp.TraceConfig()
            reuse.on_connection_reuseconn.append(_on_reuse)
            reuse.freeze()
            # No trust_env: the proxy comes from `_proxy` (and no ~/.netrc credentials are added).
            self._session = aiohttp.ClientSession(connector=connector, trace_configs=[reuse])
        return self._session

    async def open(
        self,
        method: str,
        url: URL,
        headers: list[tuple[str, str]],
        data: bytes | None,
        limits: aiohttp.ClientTimeout,
    ) -> tuple[aiohttp.ClientResponse, list[tuple[bytes, bytes]], BodyReader]:
        """Send one request and return once its head is here: the aiohttp response, its headers as
        httpx2 should see them, and the reader of its body. Failures are raised as httpx2's (`mapped`).

        What `handle_async_request` does without the httpx2 objects: `chatstream.direct` opens
        streamed chat completions with this."""
        session = self._get_session()
        proxy, proxy_auth = await self._proxy(url)
        tls: ssl.SSLContext | bool = await self._ssl_context() if url.scheme == "https" else True
        with mapped_errors(connecting=True):
            # Each stale pooled connection fails once and is closed, so this ends at the first fresh
            # connection (or a live pooled one); the cap only guards against a pool that never drains.
            for attempt in range(1, _MAX_STALE_RETRIES + 2):
                trace = SimpleNamespace(reused=False)
                try:
                    response = await session.request(
                        method,
                        url,
                        proxy=proxy,
                        proxy_auth=proxy_auth,
                        headers=headers,
                        data=data,
                        allow_redirects=False,
                        ssl=tls,
                        timeout=limits,
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
        return response, raw_headers, BodyReader(response, _take_over_read_timeout(response))

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in (b"accept-encoding", b"content-length")
        ]
        response, raw_headers, reader = await self.open(
            request.method,
            URL(str(request.url), encoded=True),
            headers,
            request.content or None,
            client_timeout(request.extensions.get("timeout", {})),
        )
        return httpx2.Response(
            status_code=response.status,
            headers=raw_headers,
            stream=_Body(reader),
            request=request,
            extensions={"http_version": b"HTTP/1.1", AIOHTTP_RESPONSE: response, BODY_READER: reader},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
