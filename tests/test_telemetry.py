"""With a connection string, each chat request is exported as one span to Application Insights.

The ingestion endpoint is a loopback server of the test's own, so the real Azure Monitor exporter
runs end to end without any network.
"""

from __future__ import annotations

import gzip
import json
import time

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from funchost.testing import serve_in_thread
from tests.conftest import start_app


class Ingestion:
    def __init__(self) -> None:
        self.envelopes: list[dict] = []

    async def track(self, request: Request) -> JSONResponse:
        if not request.url.path.endswith("/track"):
            return JSONResponse({}, status_code=404)
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        text = body.decode()
        items = (
            json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()]
        )
        self.envelopes.extend(items)
        return JSONResponse({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})

    def logs(self, text: str) -> list[dict]:
        return [
            e
            for e in self.envelopes
            if e.get("data", {}).get("baseType") == "MessageData"
            and text in e["data"]["baseData"].get("message", "")
        ]

    def spans(self, name: str) -> list[dict]:
        return [
            e["data"]["baseData"]
            for e in self.envelopes
            if e.get("data", {}).get("baseData", {}).get("name") == name
        ]


def loopback_exporter_env(ingestion_url: str) -> dict[str, str]:
    """Application Insights export to a local ingestion server: no statsbeat, no cloud metadata probes,
    every trace sampled (the distro samples by rate by default), exported quickly."""
    return {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": (
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
            f"IngestionEndpoint={ingestion_url}/;LiveEndpoint={ingestion_url}/"
        ),
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


def test_each_chat_request_is_exported_as_one_span_with_stream_metrics(paced_simulator):
    ingestion = Ingestion()
    server = serve_in_thread(Starlette(routes=[Route("/{path:path}", ingestion.track, methods=["POST"])]))
    app = start_app(
        AZURE_OPENAI_ENDPOINT=paced_simulator.url,
        AZURE_OPENAI_API_KEY="test-key",
        **loopback_exporter_env(server.url),
    )
    try:
        response = httpx.post(f"{app.url}/api/chat", json={"user": "trace me", "max_tokens": 9}, timeout=30)
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            ingestion.spans("chat chat") and ingestion.logs(request_id)
        ):
            time.sleep(0.2)
        spans = ingestion.spans("chat chat")
        assert len(spans) == 1, json.dumps(ingestion.envelopes)[:3000]
        props = spans[0]["properties"]
        assert props["chat.request_id"] == request_id
        assert props["chat.deployment"] == "gpt-4o-mini"
        assert props["chat.outcome"] == "completed"
        assert props["gen_ai.usage.output_tokens"] == "9"
        assert "length" in props["gen_ai.response.finish_reasons"]
        assert float(props["chat.time_to_first_token_ms"]) > 0
        assert float(props["chat.tokens_per_second"]) > 0
        # The request's log line travels too, correlated with the span's trace.
        logs = ingestion.logs(request_id)
        assert logs, json.dumps([e["data"] for e in ingestion.envelopes])[:3000]
        span_operation = [e for e in ingestion.envelopes if e["data"]["baseData"].get("name") == "chat chat"]
        assert logs[0]["tags"]["ai.operation.id"] == span_operation[0]["tags"]["ai.operation.id"]
    finally:
        app.stop()
        server.stop()
