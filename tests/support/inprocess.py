"""The app built from a test's own `Settings` and served in this process over a real socket.

Configuration tests need an app per configuration; building it in-process (`azure_http.create_app`,
served by funchost's ASGI adapter under real uvicorn in a thread) costs milliseconds where a
`python -m funchost` subprocess costs a cold start. Tests that need process isolation (start-up logs,
the environment, signals) still use `tests.conftest.start_app`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from azure_http import create_app
from chatstream.settings import Settings
from funchost.asgi import build_asgi_app
from funchost.testing import ThreadServer, serve_in_thread
from tests.conftest import REPO_ROOT


def settings_for(**values: object) -> Settings:
    """Settings from explicit values (by their environment names), as a test means them.

    Test defaults: anonymous access (no function keys in-process) and one delta per upstream chunk."""
    defaults: dict[str, object] = {"CHAT_ALLOW_ANONYMOUS": True, "CHAT_COALESCE_DELTAS": False}
    return Settings(**{**defaults, **values})  # type: ignore[arg-type]


@contextmanager
def serve(settings: Settings) -> Iterator[ThreadServer]:
    """The app for `settings` on a free 127.0.0.1 port until the block ends."""
    server = serve_in_thread(build_asgi_app(create_app(settings), "api", REPO_ROOT))
    try:
        yield server
    finally:
        server.stop()
