"""NDJSON keep-alives are blank lines: every NDJSON reader skips them, none sees a non-event object.

End to end: the raw bytes of a slow first token, the Python client (`chatclient`) and the chat page's
own parser (`webui/static/stream.js`, run by node) over the same wire.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from aoai_simulator import SimulatorHandle
from chatclient import stream_chat
from funchost.testing import SubprocessServer
from tests.conftest import REPO_ROOT, start_app

SLOW = "keep me waiting [sim:slow-first-token=1200;tokens=4]"


@pytest.fixture(scope="module")
def beating_app(fault_simulator: SimulatorHandle) -> Iterator[SubprocessServer]:
    """Headers after 0.1 s, then a heartbeat every 0.1 s while the model thinks."""
    server = start_app(
        AZURE_OPENAI_ENDPOINT=fault_simulator.url,
        AZURE_OPENAI_API_KEY="test-key-not-secret",
        AZURE_OPENAI_DEPLOYMENT="gpt-4o-mini",
        CHAT_UPSTREAM_MAX_RETRIES="0",
        CHAT_FIRST_EVENT_WAIT_SECONDS="0.1",
        CHAT_HEARTBEAT_SECONDS="0.1",
    )
    yield server
    server.stop()


def _ndjson_bytes(url: str) -> str:
    headers = {"Accept": "application/x-ndjson"}
    with httpx.stream("POST", f"{url}/api/chat", json={"user": SLOW}, headers=headers, timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        return reply.read().decode()


def test_the_wire_carries_blank_lines_while_the_model_thinks(beating_app):
    text = _ndjson_bytes(beating_app.url)
    lines = text.split("\n")
    assert lines.pop() == ""
    assert lines.count("") >= 3, "blank keep-alive lines while the first token is slow"
    events = [json.loads(line) for line in lines if line]
    assert all(isinstance(e, dict) and e["type"] != "heartbeat" for e in events)
    assert events[0]["type"] == "start" and events[-1]["type"] == "end"


def test_the_python_client_yields_only_events(beating_app):
    async def collect() -> list[dict]:
        return [
            e
            async for e in stream_chat(beating_app.url, [{"role": "user", "content": SLOW}], format="ndjson")
        ]

    events = asyncio.run(collect())
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-1] == "end"
    assert set(types[1:-1]) == {"delta"}, types


#: The chat page's NDJSON parser fed the raw body in 7-byte pieces (a line may span reads).
_PAGE_PARSER = """
import { NDJSONParser } from "./webui/static/stream.js";
let body = "";
for await (const piece of process.stdin) body += piece;
const parser = new NDJSONParser();
const out = [];
for (let i = 0; i < body.length; i += 7) out.push(...parser.push(body.slice(i, i + 7)));
out.push(...parser.finish());
console.log(JSON.stringify(out.map((p) => JSON.parse(p).type)));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_chat_pages_parser_skips_the_blank_lines(beating_app):
    text = _ndjson_bytes(beating_app.url)
    assert "\n\n" in text, "the body must contain heartbeats for this test to mean anything"
    result = subprocess.run(
        ["node", "--input-type=module", "-e", _PAGE_PARSER],
        input=text,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    types = json.loads(result.stdout)
    assert types[0] == "start" and types[-1] == "end" and set(types[1:-1]) == {"delta"}
