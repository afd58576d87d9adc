"""The simulated deployment for the benchmark, as its own process: `python -m bench.upstream --port P`.

Every contender is a fixed app pointed at one upstream, so the scenario travels in the prompt: a
question containing `[bench:<profile>]` gets that profile's length and pacing (injected as the
simulator's own `x-sim-*` headers). Costs one body scan per request, nothing per token.

It also answers `GET /msi/token` the way App Service's managed-identity endpoint does (what
`IDENTITY_ENDPOINT` points at in Azure), so the product's keyless start can be measured on loopback.
The simulator accepts any bearer token. It runs on uvloop: it is not a contender and should be cheap.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from aoai_simulator import SimulatorApp, SimulatorConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

_PROFILE = re.compile(rb"\[bench:([a-z]+)(?::(\d+))?\]")
TOKEN_PATH = "/msi/token"


def profiles(long_tokens: int, paced_tokens: int, paced_delay_ms: float) -> dict[str, dict[str, str]]:
    """Profile -> x-sim headers. `[bench:long:N]` overrides the token count."""
    return {
        "long": {"x-sim-tokens": str(long_tokens), "x-sim-ttft-ms": "0", "x-sim-token-delay-ms": "0"},
        "short": {"x-sim-tokens": "20", "x-sim-ttft-ms": "0", "x-sim-token-delay-ms": "0"},
        "paced": {
            "x-sim-tokens": str(paced_tokens),
            "x-sim-ttft-ms": "0",
            "x-sim-token-delay-ms": str(paced_delay_ms),
        },
    }


class ProfileMiddleware:
    def __init__(self, app: ASGI, table: dict[str, dict[str, str]]) -> None:
        self.app = app
        self.table = table

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == TOKEN_PATH:
            await _token(send)
            return
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        match = _PROFILE.search(body)
        if match is not None:
            headers = dict(self.table.get(match.group(1).decode(), {}))
            if match.group(2):
                headers["x-sim-tokens"] = match.group(2).decode()
            scope = dict(scope)
            scope["headers"] = [
                *scope["headers"],
                *((k.encode(), v.encode()) for k, v in headers.items()),
            ]

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _token(send: Any) -> None:
    """An App Service managed-identity token response (api-version 2019-08-01), valid for a day."""
    body = json.dumps(
        {
            "access_token": "bench-token",
            "expires_on": str(int(time.time()) + 86_400),
            "resource": "https://cognitiveservices.azure.com",
            "token_type": "Bearer",
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--long-tokens", type=int, default=20_000)
    parser.add_argument("--paced-tokens", type=int, default=300)
    parser.add_argument("--paced-delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    config = SimulatorConfig(ttft_ms=0, token_delay_ms=0, history_size=50)
    app = ProfileMiddleware(
        SimulatorApp(config), profiles(args.long_tokens, args.paced_tokens, args.paced_delay_ms)
    )
    uvicorn_config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
    # Server.run() picks uvloop + httptools when installed: the upstream should be cheap.
    uvicorn.Server(uvicorn_config).run()


if __name__ == "__main__":
    main()
