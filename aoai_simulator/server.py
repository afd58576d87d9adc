"""Running the simulator on a real socket with real uvicorn, in-process or standalone.

Binding the socket ourselves (port 0 by default) means the URL is known before the server thread
starts, and tests never race each other for ports.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn

from .app import SimulatorApp
from .config import SimulatorConfig


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _uvicorn_config(app: SimulatorApp, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        # Held connections (stall/timeout faults) must not block shutdown for long.
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
    )


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class SimulatorHandle:
    """A running simulator: its URL, live stats, and a way to stop it."""

    def __init__(self, app: SimulatorApp, server: uvicorn.Server, thread: threading.Thread, url: str) -> None:
        self.app = app
        self.url = url
        self._server = server
        self._thread = thread

    @property
    def config(self) -> SimulatorConfig:
        return self.app.config

    @property
    def azure_endpoint(self) -> str:
        """Pass as `azure_endpoint=` to AzureOpenAI / AzureChatOpenAI."""
        return self.url

    @property
    def openai_base_url(self) -> str:
        """Pass as `base_url=` to an OpenAI-compatible client."""
        return self.url + "/v1"

    def stats(self) -> dict[str, Any]:
        """Same JSON shape as `GET /_sim/stats`."""
        return self.app.stats.snapshot()

    def requests(self) -> list[dict[str, Any]]:
        return self.stats()["requests"]

    def last_request(self) -> dict[str, Any] | None:
        records = self.requests()
        return records[-1] if records else None

    @property
    def open_streams(self) -> int:
        return self.app.stats.open_streams

    def reset(self) -> None:
        self.app.reset()

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> bool:
        """Poll stats until `predicate(stats)` holds; the server notices disconnects asynchronously."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.stats()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once no stream is open."""
        return self.wait_until(lambda s: s["open_streams"] == 0, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_in_thread(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    startup_timeout: float = 10.0,
) -> SimulatorHandle:
    """Start uvicorn on its own event loop in a daemon thread; returns once it accepts connections."""
    app = SimulatorApp(config)
    sock = _bind(host, port)
    server = uvicorn.Server(_uvicorn_config(app, log_level))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # surfaced by the waiting caller
            errors.append(exc)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"aoai-simulator-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError("simulator failed to start") from (errors[0] if errors else None)
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError("simulator did not start in time")
        time.sleep(0.005)
    return SimulatorHandle(app, server, thread, _url(sock))


async def serve(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve on the current event loop until cancelled or signalled; `on_ready(url)` once listening."""
    app = SimulatorApp(config)
    sock = _bind(host, port)
    server = uvicorn.Server(_uvicorn_config(app, log_level))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        # uvicorn exposes readiness only as a flag.
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if on_ready is not None and server.started:
            on_ready(_url(sock))
        await task
    finally:
        if not task.done():
            server.should_exit = True
            await task
        sock.close()
