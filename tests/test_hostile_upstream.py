"""Answers the app must never lose or misreport, against a model server that misbehaves on purpose
(tests/support/hostile.py): real sockets from the caller to the app to the upstream."""

from __future__ import annotations

import httpx

from tests.support.hostile import Conn, HostileUpstream, chunk, usage
from tests.test_resilience import assert_no_leak, deltas, read_sse


def _post(url: str, prompt: str, **body: object) -> tuple[httpx.Response, list[dict]]:
    with httpx.stream("POST", f"{url}/api/chat", json={"user": prompt, **body}, timeout=30) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        events, _pings, _done = read_sse(response)
    return response, events


def test_a_well_behaved_script_streams_through(hostile_app, hostile: HostileUpstream):
    async def fine(conn: Conn) -> bool:
        await conn.head()
        await conn.event(chunk("", role="assistant"))
        for word in ("Hello", ", ", "world"):
            await conn.event(chunk(word))
        await conn.event(chunk(finish_reason="stop"))
        await conn.event(chunk(usage=usage(5, 3)))
        await conn.send(b"data: [DONE]\n\n")
        return False

    hostile.script("fine", fine)
    response, events = _post(hostile_app.url, "[hostile:fine]")
    assert response.status_code == 200
    assert deltas(events) == "Hello, world"
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] == "stop"
    assert events[-1]["usage"]["completion_tokens"] == 3
    assert_no_leak(str(events))
    assert hostile.seen[0].path.startswith("/openai/deployments/gpt-4o-mini/chat/completions?")
