"""Azure Functions entry point (Python v2 model): thin routing onto the chat endpoint.

Everything that is not about Azure Functions lives in `chatstream/` and `chains/`.
"""

from __future__ import annotations

import gc

# Start-up only allocates objects that live as long as the process: collecting them is wasted work
# (re-enabled, with those objects frozen out of every later collection, at the end of this module).
gc.disable()

import logging  # noqa: E402

import azure.functions as func  # noqa: E402
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response  # noqa: E402

from chatstream import diagnostics, telemetry  # noqa: E402
from chatstream.endpoint import ChatEndpoint  # noqa: E402
from chatstream.heap import freeze_startup_objects  # noqa: E402
from chatstream.openapi import openapi_document  # noqa: E402
from chatstream.service import ChatService  # noqa: E402
from chatstream.settings import get_settings  # noqa: E402
from webui import ui_assets  # noqa: E402

settings = get_settings()
logging.getLogger("chatstream").setLevel(settings.log_level)
telemetry.configure(settings.azure_client_id)

# A key is required unless anonymous access is chosen explicitly (CHAT_ALLOW_ANONYMOUS=true).
CHAT_AUTH = func.AuthLevel.ANONYMOUS if settings.allow_anonymous else func.AuthLevel.FUNCTION

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
chat_endpoint = ChatEndpoint(ChatService.from_settings(settings))


@app.route(route="chat", methods=[func.HttpMethod.POST, func.HttpMethod.OPTIONS], auth_level=CHAT_AUTH)
async def chat(req: Request) -> Response:
    """POST a chat request; the answer streams back as SSE (or NDJSON, or one JSON object).
    OPTIONS answers the CORS preflight from the CHAT_CORS_ORIGINS allow-list."""
    return await chat_endpoint.handle(req)


# The reference chat page. Anonymous: it holds no secrets; its chat calls carry the key themselves.
@app.route(route="ui", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.ANONYMOUS)
async def ui(req: Request) -> Response:
    """The chat page (open it in a browser)."""
    return ui_assets().page(req)


@app.route(route="ui/{name}", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.ANONYMOUS)
async def ui_asset(req: Request) -> Response:
    """The page's scripts and styles."""
    return ui_assets().asset(req, req.path_params["name"])


# Chain names and allowed deployments (names only, no secrets), so clients can offer a choice.
@app.route(route="chains", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.ANONYMOUS)
async def chains(req: Request) -> Response:
    """The registered chains and the deployments a request may name."""
    return chat_endpoint.catalog(req)


@app.route(route="openapi.json", methods=[func.HttpMethod.GET], auth_level=func.AuthLevel.ANONYMOUS)
async def openapi(req: Request) -> Response:
    """The request and error schemas with this deployment's limits (no secrets, no settings)."""
    return JSONResponse(openapi_document(settings, chat_endpoint.service.registry.names()))


if settings.diagnostics:

    @app.route(route="_diag", methods=[func.HttpMethod.GET])
    async def diag(req: Request) -> Response:
        """Task count, live runs and RSS, for soak tests; only with CHAT_DIAGNOSTICS=true."""
        return JSONResponse(diagnostics.snapshot())


# Last: everything imported and built so far lives as long as the process (see chatstream/heap.py).
freeze_startup_objects()
