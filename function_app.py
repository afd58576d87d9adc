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
from azurefunctions.extensions.http.fastapi import Request, Response  # noqa: E402

from chatstream import telemetry  # noqa: E402
from chatstream.endpoint import ChatEndpoint  # noqa: E402
from chatstream.heap import freeze_startup_objects  # noqa: E402
from chatstream.service import ChatService  # noqa: E402
from chatstream.settings import get_settings  # noqa: E402

settings = get_settings()
logging.getLogger("chatstream").setLevel(settings.log_level)
telemetry.configure(settings.azure_client_id)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
chat_endpoint = ChatEndpoint(ChatService.from_settings(settings))
# Last: everything imported and built so far lives as long as the process (see chatstream/heap.py).
freeze_startup_objects()


@app.route(route="chat", methods=[func.HttpMethod.POST])
async def chat(req: Request) -> Response:
    """POST a chat request; the answer streams back as SSE (or NDJSON, or one JSON object)."""
    return await chat_endpoint.handle(req)
