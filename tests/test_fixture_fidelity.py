"""Real recorded Azure OpenAI / OpenAI streams, replayed as the upstream, come out of the app unchanged.

The expectation for each transcript is computed here from its raw chunks, independently of the app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from funchost.testing import SubprocessServer, serve_in_thread
from tests.conftest import SHARED_FIXTURES, start_app
from tests.support.replay import Replay

TRANSCRIPTS = sorted(SHARED_FIXTURES.glob("*.sse"))


def test_every_recorded_transcript_is_in_the_repository():
    """No fixture test may silently skip: the transcripts ship with the tests (tests/fixtures)."""
    assert len(TRANSCRIPTS) >= 16
    for transcript in TRANSCRIPTS:
        assert transcript.with_suffix(".source.txt").is_file(), transcript.name


def expected(transcript: Path) -> dict:
    """Content, finish reason and usage of choice 0, read straight from the recorded chunks."""
    content: list[str] = []
    finish_reason = None
    usage = None
    for event in transcript.read_text().split("\n\n"):
        data = event.strip().removeprefix("data: ")
        if not data or data == "[DONE]":
            continue
        chunk = json.loads(data)
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            text = (choice.get("delta") or {}).get("content")
            if text:
                content.append(text)
            finish_reason = choice.get("finish_reason") or finish_reason
        if chunk.get("usage"):
            u = chunk["usage"]
            usage = {k: u[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
            reasoning = (u.get("completion_tokens_details") or {}).get("reasoning_tokens")
            if reasoning is not None:  # reported as the upstream reports it, zero included
                usage["reasoning_tokens"] = reasoning
    return {"content": "".join(content), "finish_reason": finish_reason, "usage": usage}


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    replay = Replay()
    server = serve_in_thread(replay.app())
    replay.url = server.url  # type: ignore[attr-defined]
    yield replay
    server.stop()


@pytest.fixture(scope="module")
def replay_app(replay: Replay) -> Iterator[SubprocessServer]:
    server = start_app(
        AZURE_OPENAI_ENDPOINT=replay.url,  # type: ignore[attr-defined]
        AZURE_OPENAI_API_KEY="replay-key",
        AZURE_OPENAI_DEPLOYMENT="recorded",
        CHAT_UPSTREAM_MAX_RETRIES="0",
        # The product's default: a replayed transcript arrives in a few reads, so deltas get coalesced.
        CHAT_COALESCE_DELTAS="true",
    )
    yield server
    server.stop()


def stream(app: SubprocessServer) -> list[dict]:
    events = []
    with httpx.stream("POST", f"{app.url}/api/chat", json={"user": "replay"}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=_ids(TRANSCRIPTS))
def test_recorded_stream_is_forwarded_faithfully(replay, replay_app, transcript: Path):
    # n>1 transcripts included: only choice 0 is forwarded (LangChain alone would mix the choices).
    replay.load(transcript.read_bytes())
    events = stream(replay_app)
    want = expected(transcript)
    assert events[0]["type"] == "start"
    assert events[-1]["type"] == "end"
    text = "".join(e["delta_content"] for e in events if e["type"] == "delta")
    assert text == want["content"]
    assert all(e["deployment"] == "recorded" for e in events)
    assert events[-1]["finish_reason"] == want["finish_reason"]
    assert events[-1]["usage"] == want["usage"]
    assert not [e for e in events if e["type"] == "error"]


ERRORS = [
    ("errors/azure_error_401_access-denied_openllmetry.json", 401, 502, "upstream_auth_failed"),
    ("errors/azure_error_404_DeploymentNotFound_openllmetry.json", 404, 502, "deployment_not_found"),
    ("doc_examples/azure_error_400_content-filter_prompt_msdocs.json", 400, 400, "content_filter"),
]


@pytest.mark.parametrize(("name", "upstream_status", "status", "code"), ERRORS, ids=[e[3] for e in ERRORS])
def test_recorded_azure_errors_become_safe_json_errors(
    replay, replay_app, name, upstream_status, status, code
):
    body = (SHARED_FIXTURES / name).read_bytes()
    replay.load(body, status=upstream_status, content_type="application/json")
    response = httpx.post(f"{replay_app.url}/api/chat", json={"user": "replay"}, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    # Nothing of the upstream's own wording, URLs or ids reaches the caller.
    upstream_message = json.loads(body)["error"]["message"]
    assert upstream_message[:40] not in response.text
    assert "http" not in error["message"]
    assert replay.url not in response.text  # type: ignore[attr-defined]


def test_refusal_text_is_forwarded_as_refusal_events(replay, replay_app):
    transcript = SHARED_FIXTURES / "openai_gpt-4o_refusal_usage-chunk_openai-python.sse"
    want = []
    for event in transcript.read_text().split("\n\n"):
        data = event.strip().removeprefix("data: ")
        if data and data != "[DONE]":
            for choice in json.loads(data).get("choices") or []:
                want.append((choice.get("delta") or {}).get("refusal") or "")
    replay.load(transcript.read_bytes())
    events = stream(replay_app)
    refused = "".join(e["refusal"] for e in events if e["type"] == "refusal")
    assert refused == "".join(want) and refused.startswith("I'm sorry")
    assert not [e for e in events if e["type"] == "delta"]
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] == "stop"
