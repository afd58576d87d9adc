"""An upstream that replays a recorded Azure OpenAI / OpenAI SSE transcript byte for byte.

Tests choose the transcript before each request (`load`); the app under test is pointed at this
server as if it were Azure OpenAI.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Replay:
    body: bytes = b""
    status: int = 200
    content_type: str = "text/event-stream"
    delay: float = 0.0
    requests: list[dict] = field(default_factory=list)

    def load(
        self, body: bytes, *, status: int = 200, content_type: str = "text/event-stream", delay: float = 0.0
    ) -> None:
        self.body, self.status, self.content_type, self.delay = body, status, content_type, delay

    def events(self) -> list[bytes]:
        return [event + b"\n\n" for event in self.body.split(b"\n\n") if event.strip()]

    async def handle(self, request: Request) -> Response:
        self.requests.append(await request.json())
        if self.status != 200 or self.content_type != "text/event-stream":
            return Response(self.body, status_code=self.status, media_type=self.content_type)

        async def body() -> object:
            for event in self.events():
                yield event
                if self.delay:
                    await asyncio.sleep(self.delay)

        return StreamingResponse(body(), media_type=self.content_type)

    def app(self) -> Starlette:
        async def health(_: Request) -> Response:
            return JSONResponse({"ok": True})

        return Starlette(
            routes=[
                Route("/openai/deployments/{deployment}/chat/completions", self.handle, methods=["POST"]),
                Route("/health", health),
            ]
        )
