"""Azure Functions entry point (Python v2 model): thin routing onto the chat endpoint.

Everything that is not about Azure Functions lives in `chatstream/` and `chains/`.
"""

from __future__ import annotations

import logging

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from chatstream import telemetry
from chatstream.endpoint import ChatEndpoint
from chatstream.service import ChatService
from chatstream.settings import get_settings
from webui import ui_assets

settings = get_settings()
logging.getLogger("chatstream").setLevel(settings.log_level)
telemetry.configure(settings.azure_client_id)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
chat_endpoint = ChatEndpoint(ChatService.from_settings(settings))


@app.route(route="chat", methods=[func.HttpMethod.POST])
async def chat(req: Request) -> Response:
    """POST a chat request; the answer streams back as SSE (or NDJSON, or one JSON object)."""
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
