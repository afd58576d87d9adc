"""The Azure Functions HTTP layer: `create_app(settings)` registers every route on a new `FunctionApp`.

Thin on purpose: each function hands the request to `chatstream` (nothing here knows about streaming).
`function_app.py` builds the one app the worker indexes; tests build their own from their own
`Settings`, in-process (`tests/support/inprocess.py`), instead of starting a process per configuration.
"""

from __future__ import annotations

import logging

import azure.functions as func
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response

from chatstream import diagnostics
from chatstream.blob_stream_store import open_stream_store
from chatstream.endpoint import ChatEndpoint
from chatstream.models import ConfigurationError
from chatstream.openapi import openapi_document
from chatstream.protocols import AG_UI, AI_SDK, NATIVE, OpenAIProtocol
from chatstream.resumable import ResumableStreams
from chatstream.service import ChatService
from chatstream.settings import Settings
from webui import ui_assets


def create_app(settings: Settings) -> func.FunctionApp:
    # A key is required unless anonymous access is chosen explicitly (CHAT_ALLOW_ANONYMOUS=true).
    chat_auth = func.AuthLevel.ANONYMOUS if settings.allow_anonymous else func.AuthLevel.FUNCTION
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    service = ChatService.from_settings(settings)
    try:
        stream_store = open_stream_store(settings)
    except ConfigurationError as exc:
        # Streams still resume on the instance that runs them; only other instances cannot reach them.
        logging.getLogger("chatstream.resumable").error("shared stream store misconfigured: %s", exc)
        stream_store = None
    chat_endpoint = ChatEndpoint(service, ResumableStreams(settings, stream_store), [AI_SDK])

    @app.route(route="chat", methods=[func.HttpMethod.POST, func.HttpMethod.OPTIONS], auth_level=chat_auth)
    async def chat(req: Request) -> Response:
        """POST a chat request; the answer streams back as SSE (or NDJSON, or one JSON object).
        A Vercel AI SDK body (`messages[].parts`, `trigger`) gets the AI SDK's UI message stream.
        OPTIONS answers the CORS preflight from the CHAT_CORS_ORIGINS allow-list."""
        return await chat_endpoint.handle(req, AI_SDK, NATIVE)

    @app.route(
        route="chat/{id}/stream", methods=[func.HttpMethod.GET, func.HttpMethod.OPTIONS], auth_level=chat_auth
    )
    async def chat_resume(req: Request) -> Response:
        """Resume a resumable stream after `Last-Event-ID` (id: the request id, or an AI SDK chat id,
        whose `resumeStream` gets 204 when its chat has no running stream)."""
        return await chat_endpoint.resume(req)

    @app.route(
        route="chat/{id}/stop", methods=[func.HttpMethod.POST, func.HttpMethod.OPTIONS], auth_level=chat_auth
    )
    async def chat_stop(req: Request) -> Response:
        """Stop a running stream: it ends with `finish_reason: "cancelled"` and the usage so far."""
        return await chat_endpoint.stop(req)

    @app.route(route="ag-ui", methods=[func.HttpMethod.POST, func.HttpMethod.OPTIONS], auth_level=chat_auth)
    async def ag_ui(req: Request) -> Response:
        """POST an AG-UI `RunAgentInput`; AG-UI events stream back as SSE (for `HttpAgent`).
        OPTIONS answers the CORS preflight from the CHAT_CORS_ORIGINS allow-list."""
        return await chat_endpoint.handle(req, AG_UI)

    # OpenAI's Chat Completions API (docs/clients/openai.md): the openai SDKs with baseURL = <app>/api/v1.
    # The same key as /api/chat; the host takes it as `x-functions-key` or `?code=`, not as a Bearer token.
    openai = OpenAIProtocol(settings.allowed_deployments)
    options = [func.HttpMethod.OPTIONS]

    @app.route(route="v1/chat/completions", methods=[func.HttpMethod.POST, *options], auth_level=chat_auth)
    async def openai_chat_completions(req: Request) -> Response:
        """OpenAI-compatible chat completions (streamed or not) over the same chains."""
        return await chat_endpoint.handle(req, openai)

    @app.route(route="v1/models", methods=[func.HttpMethod.GET, *options], auth_level=chat_auth)
    async def openai_models(req: Request) -> Response:
        """The deployments a request may name as `model`, in OpenAI's list shape."""
        return chat_endpoint.read_only(req, openai.models_response)

    @app.route(route="v1/models/{model}", methods=[func.HttpMethod.GET, *options], auth_level=chat_auth)
    async def openai_model(req: Request) -> Response:
        """One allowed deployment, or OpenAI's 404 `model_not_found`."""
        return chat_endpoint.read_only(req, lambda h: openai.model_response(req.path_params["model"], h))

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

    return app
