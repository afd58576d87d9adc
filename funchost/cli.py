"""`python -m funchost`: what `func start` does for this app, minus Core Tools.

Order matters and mirrors Core Tools: local.settings.json goes into the environment
*before* function_app is imported (module-level code reads settings at import time).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from funchost.asgi import build_asgi_app
from funchost.banner import banner
from funchost.read_timeouts import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT
from funchost.registry import FunctionLoadError, import_function_app
from funchost.routing import RouteTemplateError
from funchost.server import ReadyServer, make_config
from funchost.settings import (
    BODY_TIMEOUT_ENV,
    HEADER_TIMEOUT_ENV,
    LocalSettings,
    SettingsError,
    load_local_settings,
    read_timeout,
    resolve_port,
    route_prefix,
)
from funchost.worker import LOG_FORMAT, WorkerLogFormatter

log = logging.getLogger("funchost")
LOOP_ENV = "FUNCHOST_LOOP"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m funchost", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port (default: $PORT, else local.settings.json Host.LocalHttpPort, else 7071)",
    )
    parser.add_argument(
        "--app-dir",
        type=Path,
        default=Path("."),
        help="folder with function_app.py and host.json (default: .)",
    )
    parser.add_argument(
        "--no-local-settings",
        action="store_true",
        help="ignore local.settings.json (tests use this so a developer's Azure settings never leak in)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        help=f"seconds a request's headers may take to arrive (default: ${HEADER_TIMEOUT_ENV}, "
        f"else {DEFAULT_HEADER_TIMEOUT:g}; 0 = no limit)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=None,
        help=f"seconds a request's body may take to arrive after its headers (default: ${BODY_TIMEOUT_ENV}, "
        f"else {DEFAULT_BODY_TIMEOUT:g}; 0 = no limit)",
    )
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default=os.environ.get(LOOP_ENV) or "asyncio",
        help=f"event loop (default: ${LOOP_ENV}, else asyncio, as the Azure Functions Python worker uses)",
    )
    return parser.parse_args(argv)


def _settings_note(local: LocalSettings) -> str:
    if local.path is None:
        return "local.settings.json: not found (using the process environment and app defaults)"
    note = f"local.settings.json: {len(local.applied)} value(s) applied"
    if local.skipped:
        note += "; kept from the environment (already set): " + ", ".join(sorted(local.skipped))
    return note


def _init_indexing_warning() -> str:
    """Python <=3.12 in Azure needs PYTHON_ENABLE_INIT_INDEXING for HTTP streaming."""
    enabled = os.environ.get("PYTHON_ENABLE_INIT_INDEXING", "").lower() in ("1", "true")
    if enabled or sys.version_info >= (3, 13):
        return ""
    return (
        "note: PYTHON_ENABLE_INIT_INDEXING is not set; funchost does not need it, "
        "but the real worker on Python <=3.12 refuses streaming apps without it."
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Each line shows the invocation id the real worker would send it to the host with.
    console = logging.StreamHandler()
    console.setFormatter(WorkerLogFormatter(LOG_FORMAT))
    logging.basicConfig(level=args.log_level.upper(), handlers=[console])
    app_dir = args.app_dir.resolve()
    try:
        local = LocalSettings() if args.no_local_settings else load_local_settings(app_dir)
        port = resolve_port(args.port, local_http_port=local.local_http_port)
        header_timeout = read_timeout(args.header_timeout, HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT)
        body_timeout = read_timeout(args.body_timeout, BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT)
        prefix = route_prefix(app_dir)
        # The worker runs with the app folder as working directory and on sys.path.
        os.chdir(app_dir)
        function_app = import_function_app(app_dir)
        asgi_app = build_asgi_app(function_app, prefix, app_dir)
    except (SettingsError, FunctionLoadError, RouteTemplateError) as exc:
        print(f"funchost: {exc}", file=sys.stderr)
        return 2
    notes = "\n".join(n for n in (_settings_note(local), _init_indexing_warning()) if n)

    def on_ready(host: str, bound_port: int) -> None:
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        base = f"http://{shown}:{bound_port}"
        print(banner(asgi_app.functions, base, notes), flush=True)

    config = make_config(
        asgi_app,
        args.host,
        port,
        args.log_level,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
    )
    config.loop = args.loop
    server = ReadyServer(config, on_ready)
    server.run()
    return 0 if server.started else 1
