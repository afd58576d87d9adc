"""Recorded tool-call streams (Azure and OpenAI) replayed as the upstream: the app's `tool_call`
events must carry exactly the arguments the service streamed, fragment by fragment."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from funchost.testing import serve_in_thread
from tests.conftest import SHARED_FIXTURES, start_app
from tests.support.replay import Replay
from tests.test_chat_stream import sse_events

TRANSCRIPTS = sorted(SHARED_FIXTURES.glob("*tool-call*.sse"))


def expected_calls(body: bytes) -> dict[int, dict[str, str]]:
    """Per index: the call id, name and the concatenation of every argument fragment, as recorded."""
    calls: dict[int, dict[str, str]] = {}
    for block in body.decode().split("\n\n"):
        payload = block.strip().removeprefix("data: ")
        if not payload or payload == "[DONE]":
            continue
        for choice in json.loads(payload).get("choices") or []:
            for part in (choice.get("delta") or {}).get("tool_calls") or []:
                call = calls.setdefault(part["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] = part.get("id") or call["id"]
                function = part.get("function") or {}
                call["name"] = function.get("name") or call["name"]
                call["arguments"] += function.get("arguments") or ""
    return calls


@pytest.fixture(scope="module")
def replay_app() -> Iterator[tuple[Replay, str]]:
    replay = Replay()
    upstream = serve_in_thread(replay.app())
    app = start_app(
        AZURE_OPENAI_ENDPOINT=upstream.url, AZURE_OPENAI_API_KEY="k", AZURE_OPENAI_DEPLOYMENT="recorded"
    )
    try:
        yield replay, app.url
    finally:
        app.stop()
        upstream.stop()


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=lambda p: p.stem)
def test_recorded_tool_calls_are_reassembled_exactly(replay_app, transcript):
    replay, url = replay_app
    body = transcript.read_bytes()
    replay.load(body)
    expected = expected_calls(body)
    assert expected, "the transcript has tool calls"
    response, events, _, done = sse_events(url, {"user": "what is the weather?"})
    assert response.status_code == 200 and done
    calls = [e for e in events if e["type"] == "tool_call"]
    assert {
        c["index"]: {"id": c["id"], "name": c["name"], "arguments": c["arguments"]} for c in calls
    } == expected
    for call in calls:
        fragments = [e for e in events if e["type"] == "tool_call_delta" and e["index"] == call["index"]]
        assert "".join(f["arguments_delta"] for f in fragments) == call["arguments"]
        assert fragments[0]["name"] == call["name"] and fragments[0]["id"] == call["id"]
    kinds = [e["type"] for e in events]
    assert kinds.index("tool_call") > max(i for i, k in enumerate(kinds) if k == "tool_call_delta")
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] == "tool_calls"


def test_a_model_that_keeps_calling_tools_is_stopped_after_the_round_limit(replay_app):
    """The recording asks for a tool the app does not have, every time: each round reports a
    `tool_error`, and after CHAT_TOOL_MAX_ROUNDS (4) model calls the run ends with an error."""
    replay, url = replay_app
    transcript = next(p for p in TRANSCRIPTS if "azure" in p.name)
    replay.load(transcript.read_bytes())
    replay.requests.clear()
    _, events, _, done = sse_events(url, {"user": "weather?", "chain": "tools"})
    assert done
    kinds = [e["type"] for e in events]
    assert kinds.count("tool_call") == kinds.count("tool_error") == 4
    assert all(e["message"].startswith("unknown tool") for e in events if e["type"] == "tool_error")
    assert kinds[-2:] == ["error", "end"]
    assert events[-2]["code"] == "tool_rounds_exceeded"
    assert events[-1]["finish_reason"] == "error"
    assert len(replay.requests) == 4
    assert replay.requests[-1]["messages"][-1]["role"] == "tool"
    assert replay.requests[-1]["messages"][-1]["content"].startswith("Error: there is no tool")
