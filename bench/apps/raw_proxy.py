"""The floor: raw ASGI, the upstream's SSE bytes passed through as they arrive (aiohttp client, no parsing).

`python -m bench.apps.raw_proxy PORT [asyncio|uvloop]`; POST /chat with an OpenAI chat-completions body.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Message = MutableMapping[str, Any]
UPSTREAM = os.environ["AZURE_OPENAI_ENDPOINT"].rstrip("/")
DEPLOYMENT = os.environ.get("AZURE_OPENAI_DEPLOYMENT", "gpt-4o-mini")
URL = f"{UPSTREAM}/openai/deployments/{DEPLOYMENT}/chat/completions?api-version=2024-10-21"
HEADERS = {"api-key": os.environ.get("AZURE_OPENAI_API_KEY", "bench-key"), "content-type": "application/json"}
_session: aiohttp.ClientSession | None = None


async def app(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Message]], send: Any) -> None:
    global _session
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async with _session.post(URL, data=body, headers=HEADERS) as upstream:
        await send(
            {
                "type": "http.response.start",
                "status": upstream.status,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        async for data in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


if __name__ == "__main__":
    loop = sys.argv[2] if len(sys.argv) > 2 else "asyncio"
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        lifespan="off",
        loop=loop,
    )
