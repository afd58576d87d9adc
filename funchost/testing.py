"""Run the host on a free loopback port for tests: in a thread, or as `python -m funchost`.

Streaming can only be observed over a real socket (httpx.ASGITransport buffers the
whole body), so both helpers start real uvicorn and return once the port answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from starlette.types import ASGIApp

from funchost.server import ReadyServer, make_config

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port that was free a moment ago (for subprocesses that must bind it themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"funchost exited early with code {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout:.0f}s")


@dataclass
class ThreadServer:
    """A running in-thread server; `url` has no trailing slash."""

    url: str
    _server: ReadyServer
    _thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(asgi_app: ASGIApp, startup_timeout: float = 10.0, **config: float) -> ThreadServer:
    """Serve asgi_app with real uvicorn on a free 127.0.0.1 port in a daemon thread; `config` passes
    `make_config` options (the read timeouts)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = int(sock.getsockname()[1])
    server = ReadyServer(make_config(asgi_app, LOOPBACK, port, log_level="warning", **config))
    # uvicorn installs signal handlers only in the main thread; this is not it.
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"funchost-{port}"
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("in-thread funchost did not start")
        time.sleep(0.02)
    return ThreadServer(f"http://{LOOPBACK}:{port}", server, thread)


class SubprocessServer:
    """A running `python -m funchost`; its merged stdout/stderr is drained continuously."""

    def __init__(self, url: str, port: int, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.port = port
        self.process = process
        self._chunks: list[str] = []
        # Drain the pipe so a chatty child can never block on a full buffer.
        self._reader = threading.Thread(target=self._drain, daemon=True, name=f"funchost-out-{port}")
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            self._chunks.append(line.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self._chunks)

    def stop(self, timeout: float = 10.0) -> str:
        """Terminate (then kill if needed) and return everything the child printed."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.output

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_subprocess(
    app_dir: str | Path,
    env: Mapping[str, str] | None = None,
    port: int = 0,
    startup_timeout: float = 30.0,
    port_flag: bool = True,
    extra_args: Sequence[str] = (),
) -> SubprocessServer:
    """Start `python -m funchost --app-dir app_dir` and wait until its port answers.

    `env` replaces the child's environment (os.environ when None); port 0 picks a free
    port.  With port_flag=False no --port is passed, so PORT/local.settings.json decide
    and `port` is only where we wait.
    """
    port = port or free_port()
    child_env = dict(os.environ if env is None else env)
    # Make sure the child can import funchost even when run from another directory.
    root = str(Path(__file__).resolve().parent.parent)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH", "")) if p)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "funchost", "--app-dir", str(app_dir), "--host", LOOPBACK]
    if port_flag:
        cmd += ["--port", str(port)]
    cmd += list(extra_args)
    proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    handle = SubprocessServer(f"http://{LOOPBACK}:{port}", port, proc)
    try:
        wait_for_port(port, startup_timeout, proc=proc)
    except BaseException as exc:
        output = handle.stop()
        raise RuntimeError(f"funchost did not start ({exc}):\n{output}") from None
    return handle
