"""Real uvicorn, configured so each chunk a function yields leaves at once.

No compression middleware, no response buffering; `on_ready` fires only once the
socket is listening, so the banner never advertises a URL that does not answer yet.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from funchost import worker
from funchost.read_timeouts import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    HostConfig,
    ReadTimeoutProtocol,
)

ReadyCallback = Callable[[str, int], None]


def make_config(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "info",
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> uvicorn.Config:
    """uvicorn settings for streaming: plain HTTP/1.1, no lifespan needs, short drain, and a deadline
    on reading each request (funchost/read_timeouts.py).

    The loop is plain asyncio, as in Azure, where the Functions Python worker owns its loop and does not
    use uvloop (uvicorn's "auto" would pick uvloop whenever it is installed); `python -m funchost
    --loop uvloop` sets `config.loop` to try uvloop."""
    return HostConfig(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        access_log=False,
        # We are the proxy: a caller's own X-Forwarded-* must not become the client address or scheme
        # (uvicorn trusts them from 127.0.0.1 by default); the host layer sets them (asgi.py).
        proxy_headers=False,
        # Let open streams finish briefly on Ctrl+C instead of hanging forever.
        timeout_graceful_shutdown=5,
        log_config=None,
        http=ReadTimeoutProtocol,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        loop="asyncio",
    )


class ReadyServer(uvicorn.Server):
    """uvicorn.Server that reports the actually bound host/port once listening."""

    def __init__(self, config: uvicorn.Config, on_ready: ReadyCallback | None = None) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self.bound: tuple[str, int] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Before the first connection: every request task is then one the worker's log handler can read.
        worker.install(asyncio.get_running_loop())
        await super().startup(sockets=sockets)
        if self.should_exit or not self.servers:
            return
        for server in self.servers:
            for sock in server.sockets or ():
                name = sock.getsockname()
                self.bound = (str(name[0]), int(name[1]))
                break
            if self.bound:
                break
        if self.bound and self._on_ready is not None:
            try:
                self._on_ready(*self.bound)
            except Exception:
                logging.getLogger("funchost").exception("startup callback failed")
