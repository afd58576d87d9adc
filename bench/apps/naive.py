"""The naive design: FastAPI, `chain.astream()` -> `json.dumps` -> SSE.

`python -m bench.apps.naive PORT [asyncio|uvloop]`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from bench.apps.common import chain

app = FastAPI()
CHAIN = chain()


@app.post("/chat")
async def chat(request: Request) -> StreamingResponse:
    question = (await request.json())["question"]

    async def events() -> AsyncIterator[str]:
        async for chunk in CHAIN.astream({"question": question}):
            if chunk.content:
                yield f"data: {json.dumps({'type': 'delta', 'content': chunk.content})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


if __name__ == "__main__":
    # The event loop is the benchmark's choice (argv[2]): plain asyncio as in Azure, or uvloop.
    loop = sys.argv[2] if len(sys.argv) > 2 else "asyncio"
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop=loop)
