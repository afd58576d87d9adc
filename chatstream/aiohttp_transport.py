"""An httpx2 transport on aiohttp, for the openai SDK: cheaper reads with hundreds of open streams.

The SDK ships one (`openai.DefaultAioHttpClient`), but it maps a refused connection to a *timeout*
(`ClientConnectorError` is also a `ClientConnectionError`, which it maps to `ConnectTimeout`), so a
dead upstream would be reported as 504 instead of 502. This one maps failures the way httpx's own
transport does, and exposes the aiohttp response (`AIOHTTP_RESPONSE` in `Response.extensions`) so
`chunk_stream` can read the body without the httpx2 wrapper layers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx2
from aiohttp.helpers import BasicAuth, get_env_proxy_for_url
from yarl import URL

#: Key of the aiohttp `ClientResponse` in an `httpx2.Response`'s extensions.
AIOHTTP_RESPONSE = "chatstream.aiohttp_response"

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

    When the upstream drops the connection, aiohttp raises on the next read even if bytes that
    arrived before the drop are still buffered; those are forwarded first (httpx does the same)."""
    content = response.content
    while True:
        try:
            with mapped_errors(connecting=False):
                data = await content.readany()
        except httpx2.RemoteProtocolError:
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


async def close(response: aiohttp.ClientResponse) -> None:
    """Reuse the connection if the body was read to the end; otherwise close it (the upstream sees it)."""
    if response.content.is_eof():
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


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """One aiohttp session, created on first use inside the serving event loop."""

    def __init__(self, max_connections: int = 1000) -> None:
        self._max_connections = max_connections
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
            # Idle connections expire after 5 s, as with httpx; aiohttp has no cap on how many stay idle.
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=5.0, ssl=httpx2.create_ssl_context()
            )
            # No trust_env: the proxy comes from `_proxy` (and no ~/.netrc credentials are added).
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeout = request.extensions.get("timeout", {})
        session = self._get_session()
        url = URL(str(request.url), encoded=True)
        proxy, proxy_auth = await self._proxy(url)
        with mapped_errors(connecting=True):
            response = await session.request(
                request.method,
                url,
                proxy=proxy,
                proxy_auth=proxy_auth,
                headers=[
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in request.headers.raw
                    if k.lower() not in (b"accept-encoding", b"content-length")
                ],
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
                ),
            )
        # aiohttp decodes any content-encoding itself, so httpx2 must not try again.
        headers = [(k, v) for k, v in response.raw_headers if k.lower() != b"content-encoding"]
        return httpx2.Response(
            status_code=response.status,
            headers=headers,
            stream=_Body(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1", AIOHTTP_RESPONSE: response},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
