"""The contenders: how to start each on a given event loop, what to POST, which bytes mark one delta."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = "gpt-4o-mini"
API_KEY = "bench-key"


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    #: (port, loop) -> argv after `python`; loop is "asyncio" or "uvloop".
    argv: Callable[[int, str], list[str]]
    path: str
    body: Callable[[str], bytes]
    marker: bytes
    end_marker: bytes = b"[DONE]"
    error_marker: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    #: Whether it can also start in the deployed configuration (keyless credential, App Insights export).
    deployable: bool = False


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


PRODUCT = Contender(
    key="product",
    label="product (funchost + chatstream)",
    argv=lambda port, loop: [
        "-m",
        "funchost",
        "--app-dir",
        str(REPO),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-local-settings",
        "--log-level",
        "warning",
        "--loop",
        loop,
    ],
    path="/api/chat",
    body=lambda q: _json({"messages": [{"role": "user", "content": q}]}),
    marker=b'"type":"delta"',
    error_marker=b'"type":"error"',
    deployable=True,
)

#: The product forwarding one delta per upstream token: what CPU per token costs without coalescing.
PRODUCT_UNCOALESCED = Contender(
    key="product-1to1",
    label="product, CHAT_COALESCE_DELTAS=false",
    argv=PRODUCT.argv,
    path=PRODUCT.path,
    body=PRODUCT.body,
    marker=PRODUCT.marker,
    error_marker=PRODUCT.error_marker,
    env=(("CHAT_COALESCE_DELTAS", "false"),),
)

#: The product's agent path: the `tools` chain (a LangChain v1 `create_agent` graph streamed through
#: chains/graph.py) answering without calling a tool, so the upstream streams the same tokens as for chat.
PRODUCT_AGENT = Contender(
    key="product-agent",
    label="product, chain=tools (create_agent graph)",
    argv=PRODUCT.argv,
    path=PRODUCT.path,
    body=lambda q: _json({"messages": [{"role": "user", "content": q}], "chain": "tools"}),
    marker=PRODUCT.marker,
    error_marker=PRODUCT.error_marker,
)

NAIVE = Contender(
    key="naive",
    label="naive (astream -> json.dumps -> SSE)",
    argv=lambda port, loop: ["-m", "bench.apps.naive", str(port), loop],
    path="/chat",
    body=lambda q: _json({"question": q}),
    marker=b'"type": "delta"',
)

LANGSERVE = Contender(
    key="langserve",
    label="LangServe /stream",
    argv=lambda port, loop: ["-m", "bench.apps.langserve_app", str(port), loop],
    path="/chat/stream",
    body=lambda q: _json({"input": {"question": q}}),
    marker=b"event: data",
    end_marker=b"event: end",
    error_marker=b"event: error",
)

RAW = Contender(
    key="raw",
    label="raw pass-through proxy (floor)",
    argv=lambda port, loop: ["-m", "bench.apps.raw_proxy", str(port), loop],
    path="/chat",
    body=lambda q: _json(
        {
            "messages": [{"role": "user", "content": q}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ),
    marker=b'"delta":{"content":"',
)

ALL = {c.key: c for c in (PRODUCT, PRODUCT_AGENT, PRODUCT_UNCOALESCED, NAIVE, LANGSERVE, RAW)}


def upstream_target_body(question: str) -> bytes:
    """What the benchmark sends straight to the simulator to learn the upstream's own TTFT."""
    return RAW.body(question)


UPSTREAM_PATH = f"/openai/deployments/{DEPLOYMENT}/chat/completions?api-version=2024-10-21"
