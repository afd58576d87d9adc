"""The ASGI app: the host's routing front end wrapped around the worker's catch-all.

Real request path: host matches route + method (404 otherwise), forwards the raw request
with an `x-ms-invocation-id` header to the worker's FastAPI app, whose single catch-all
route syncs the route values into the request and awaits the function's result.  We keep
the same two layers in one process so user code sees the same Request and its Response
(including streams) goes out untouched.

As in Azure, the function runs in an invocation task of its own while the response is sent by
the server's request task, and the host's "Executed ... Duration" line comes only once the whole
response has been sent: a body that fails part-way makes the invocation Failed.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import azure.functions as func
from azurefunctions.extensions.base import RequestTrackerMeta
from azurefunctions.extensions.http.fastapi import WebApp
from fastapi import Request
from starlette.types import Message, Receive, Scope, Send

from funchost.invoke import Invocation, invoke
from funchost.registry import HttpFunction, http_functions
from funchost.worker import start_invocation

log = logging.getLogger("funchost")

INVOCATION_HEADER = b"x-ms-invocation-id"
_SCOPE_KEY = "funchost.match"
_REPLACED = {INVOCATION_HEADER, b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}

_HOMEPAGE = b"<html><body><h1>Your Functions app is up and running (funchost)</h1></body></html>"


class FunctionHost:
    """ASGI callable; `functions` lists what is served, most specific route first."""

    def __init__(self, functions: list[HttpFunction], route_prefix: str, function_directory: str) -> None:
        self.functions = functions
        self.route_prefix = route_prefix
        self._function_directory = function_directory
        web_app = WebApp()
        web_app.route(self._catch_all)
        self._worker_app = web_app.get_app()

    def match(self, method: str, path: str) -> tuple[HttpFunction, dict[str, str]] | None:
        """First function whose template fits and that accepts the method (else host 404)."""
        for function in self.functions:
            values = function.template.match(path)
            if values is not None and function.allows(method):
                return function, values
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._worker_app(scope, receive, send)
            return
        found = self.match(scope["method"], scope["path"])
        if found is None:
            home = scope["method"] in ("GET", "HEAD") and scope["path"] in ("", "/")
            await _plain_response(send, 200 if home else 404, _HOMEPAGE if home else b"")
            return
        invocation = Invocation(found[0], found[1], str(uuid.uuid4()))
        scope = dict(scope)
        scope["headers"] = _forwarded_headers(scope, invocation.invocation_id)
        scope[_SCOPE_KEY] = invocation
        host_line = {"host_invocation_id": invocation.invocation_id}
        log.info(
            "Executing 'Functions.%s' (Reason='HTTP request', Id=%s)",
            invocation.function.name,
            invocation.invocation_id,
            extra=host_line,
        )
        completed = False

        async def sending(message: Message) -> None:
            nonlocal completed
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                completed = True

        try:
            await self._worker_app(scope, receive, sending)
        except BaseException:
            invocation.failed = True  # e.g. a generator that raised mid-stream: the client gets a cut body
            raise
        finally:
            # A response that never ended (the client left, or the body failed) is not a success.
            outcome = "Succeeded" if completed and not invocation.failed else "Failed"
            log.info(
                "Executed 'Functions.%s' (%s, Id=%s, Duration=%.0fms)",
                invocation.function.name,
                outcome,
                invocation.invocation_id,
                (time.perf_counter() - invocation.started) * 1000,
                extra=host_line,
            )

    async def _catch_all(self, request: Request) -> Any:
        invocation: Invocation = request.scope[_SCOPE_KEY]
        # Same call the worker makes: route values arrive as strings, replacing `path`.
        RequestTrackerMeta.get_synchronizer().sync_route_params(request, dict(invocation.route_values))
        return await start_invocation(
            invoke(invocation, request, self._function_directory), invocation.invocation_id
        )


def _forwarded_headers(scope: Scope, invocation_id: str) -> list[tuple[bytes, bytes]]:
    """Headers as YARP forwards them: invocation id plus X-Forwarded-* (Host kept). The proxy sets
    these itself: what the client sent under those names is dropped, not passed through."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _REPLACED]
    host = next((v for k, v in scope["headers"] if k.lower() == b"host"), b"")
    client = scope.get("client") or ("", 0)
    headers += [
        (INVOCATION_HEADER, invocation_id.encode()),
        (b"x-forwarded-for", str(client[0]).encode()),
        (b"x-forwarded-proto", str(scope.get("scheme", "http")).encode()),
    ]
    if host:
        headers.append((b"x-forwarded-host", host))
    return headers


async def _plain_response(send: Send, status: int, body: bytes) -> None:
    content_type = b"text/html; charset=utf-8" if body else b"text/plain"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_asgi_app(
    function_app: func.FunctionApp, route_prefix: str = "api", function_directory: str | Path = "."
) -> FunctionHost:
    """Serve every HTTP function registered on `function_app` (calls get_functions() once)."""
    functions = http_functions(function_app, route_prefix)
    return FunctionHost(functions, route_prefix, str(Path(function_directory).resolve()))
