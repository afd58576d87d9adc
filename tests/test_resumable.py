"""Resumable streams and stop, end to end over real sockets: the app in-process (uvicorn on loopback)
in front of a simulated Azure OpenAI deployment that counts its requests and its open streams."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import connect_sse

from aoai_simulator.config import SimulatorConfig
from aoai_simulator.server import SimulatorHandle, start_in_thread
from tests.support.inprocess import serve, settings_for

#: Long enough to cut anywhere, short enough for a busy machine (~2 s per answer).
TOKENS = 80


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    config = SimulatorConfig(ttft_ms=10, token_delay_ms=25, answer_tokens=400, prompt_faults=True)
    handle = start_in_thread(config)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def app(sim: SimulatorHandle) -> Iterator[str]:
    settings = settings_for(
        AZURE_OPENAI_ENDPOINT=sim.url,
        AZURE_OPENAI_API_KEY="k",
        CHAT_RESUME_GRACE_SECONDS=1.0,
        CHAT_HEARTBEAT_SECONDS=0.5,
    )
    with serve(settings) as server:
        yield server.url


def _streams_done(sim: SimulatorHandle, before: int, *, timeout: float = 10.0) -> dict:
    """The simulator's stats once every stream it started after `before` has ended."""
    give_up = time.monotonic() + timeout
    while True:
        stats = sim.stats()
        if stats["open_streams"] == 0 or time.monotonic() > give_up:
            return stats
        time.sleep(0.05)


def _sse_events(text: str) -> list[tuple[int | None, dict]]:
    """(id, event) for every data event in an SSE body (the trailer `[DONE]` left out)."""
    out = []
    for block in text.split("\n\n"):
        event_id, data = None, None
        for line in block.splitlines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None and data != "[DONE]":
            out.append((event_id, json.loads(data)))
    return out


def _text(events: list[dict]) -> str:
    return "".join(e["delta_content"] for e in events if e["type"] == "delta")


def _read_until(client: httpx.Client, url: str, body: dict, count: int) -> list[tuple[int | None, dict]]:
    """POST, read `count` events with the real SSE parser (httpx-sse), then drop the connection."""
    got: list[tuple[int | None, dict]] = []
    with connect_sse(client, "POST", f"{url}/api/chat", json=body) as source:
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            if sse.data == "[DONE]":
                break
            got.append((int(sse.id) if sse.id else None, json.loads(sse.data)))
            if len(got) >= count:
                break
    return got


def test_a_connection_cut_at_a_random_event_resumes_with_the_exact_text(
    app: str, sim: SimulatorHandle
) -> None:
    before = sim.stats()["requests_total"]
    cut = random.Random().randint(1, 40)
    with httpx.Client(timeout=30) as client:
        first = _read_until(client, app, {"user": "count", "resumable": True, "max_tokens": TOKENS}, cut)
        ids = [event_id for event_id, _ in first]
        assert ids == list(range(len(first))), "every event carries its position as its SSE id"
        stream_id = first[0][1]["id"]
        resumed = client.get(f"{app}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": str(ids[-1])})
        assert resumed.status_code == 200
        assert resumed.headers["content-type"].startswith("text/event-stream")
        rest = _sse_events(resumed.text)
        whole = client.get(f"{app}/api/chat/{stream_id}/stream")
    assert rest[0][0] == ids[-1] + 1, "the resume starts right after Last-Event-ID"
    assert [i for i, _ in rest] == list(range(ids[-1] + 1, ids[-1] + 1 + len(rest)))
    events = [e for _, e in first] + [e for _, e in rest]
    assert [e["type"] for e in events].count("start") == 1
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] in ("stop", "length")
    assert events[-1]["usage"]["completion_tokens"] == TOKENS
    # Exactly the text of one uninterrupted answer: the replay of the whole stream is the reference.
    assert _text(events) == _text([e for _, e in _sse_events(whole.text)])
    assert len([e for e in events if e["type"] == "delta"]) == TOKENS
    assert whole.text.endswith("data: [DONE]\n\n")
    stats = _streams_done(sim, before)
    assert stats["requests_total"] - before == 1, "a resume never calls the model again"


def test_the_run_goes_on_while_nobody_reads_and_a_late_resume_gets_all_of_it(
    app: str, sim: SimulatorHandle
) -> None:
    with httpx.Client(timeout=30) as client:
        first = _read_until(client, app, {"user": "go on", "resumable": True, "max_tokens": 20}, 2)
        stream_id = first[0][1]["id"]
        time.sleep(0.8)  # under the 1 s grace: the run is still going, nobody reading
        resumed = client.get(f"{app}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": "1"})
    events = [e for _, e in _sse_events(resumed.text)]
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] in ("stop", "length")
    assert len([e for e in [e for _, e in first] + events if e["type"] == "delta"]) == 20


def test_nobody_back_within_the_grace_period_cancels_the_model_call(app: str, sim: SimulatorHandle) -> None:
    before = sim.stats()["streams_closed_early"]
    with httpx.Client(timeout=30) as client:
        first = _read_until(client, app, {"user": "long", "resumable": True, "max_tokens": 400}, 3)
        stream_id = first[0][1]["id"]
        give_up = time.monotonic() + 15
        while sim.stats()["streams_closed_early"] == before and time.monotonic() < give_up:
            time.sleep(0.1)
        assert sim.stats()["streams_closed_early"] == before + 1, "the upstream call was not cancelled"
        # What was produced stays readable (within the TTL), and says how it ended.
        replay = client.get(f"{app}/api/chat/{stream_id}/stream")
    events = [e for _, e in _sse_events(replay.text)]
    end = events[-1]
    assert end["type"] == "end" and end["finish_reason"] == "cancelled"
    assert end["usage"]["estimated"] is True
    assert end["usage"]["completion_tokens"] >= len([e for e in events if e["type"] == "delta"]) > 0


@pytest.mark.parametrize("resumable", [False, True])
def test_stop_from_a_second_connection_ends_the_stream_with_its_usage(
    app: str, sim: SimulatorHandle, resumable: bool
) -> None:
    before = sim.stats()["streams_closed_early"]
    answers: list[httpx.Response] = []
    events: list[dict] = []
    with httpx.Client(timeout=30) as client, httpx.Client(timeout=30) as other:
        body = {"user": "a long answer", "max_tokens": 400, "resumable": resumable}
        with connect_sse(client, "POST", f"{app}/api/chat", json=body) as source:
            for sse in source.iter_sse():
                if sse.data == "[DONE]":
                    break
                event = json.loads(sse.data)
                events.append(event)
                if event["type"] == "start":
                    stop_url = f"{app}/api/chat/{event['id']}/stop"
                if len(events) == 6:
                    stopper = threading.Thread(target=lambda url=stop_url: answers.append(other.post(url)))
                    stopper.start()
            else:
                pytest.fail("the stream ended without [DONE]")
        stopper.join(10)
        again = other.post(stop_url)
    end = events[-1]
    assert end["type"] == "end" and end["finish_reason"] == "cancelled"
    deltas = [e for e in events if e["type"] == "delta"]
    assert 0 < len(deltas) < 400, "the partial answer is kept"
    usage = end["usage"]
    assert usage["estimated"] is True and usage["completion_tokens"] >= len(deltas)
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert answers and answers[0].status_code == 200 and answers[0].json()["status"] == "stopped"
    if resumable:  # kept for the TTL: known, and over
        assert again.status_code == 409 and again.json()["error"]["code"] == "stream_finished"
    else:  # forgotten once its response ended
        assert again.status_code == 404 and again.json()["error"]["code"] == "stream_not_found"
    stats = _streams_done(sim, 0)
    assert stats["streams_closed_early"] == before + 1, "the model call was cancelled"


def test_resume_and_stop_errors_are_clear(app: str) -> None:
    with httpx.Client(timeout=30) as client:
        unknown = client.get(f"{app}/api/chat/nope/stream", headers={"Last-Event-ID": "3"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "stream_not_found"
        # No Last-Event-ID: what the AI SDK's resume probe sends; "nothing to resume".
        probe = client.get(f"{app}/api/chat/nope/stream")
        assert probe.status_code == 204 and probe.content == b""
        bad = client.get(f"{app}/api/chat/nope/stream", headers={"Last-Event-ID": "-1"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_last_event_id"
        stop = client.post(f"{app}/api/chat/nope/stop")
        assert stop.status_code == 404 and stop.json()["error"]["code"] == "stream_not_found"
        # A stream that was not resumable cannot be resumed once its connection is gone.
        plain = _read_until(client, app, {"user": "plain", "max_tokens": 5}, 2)
        assert plain[0][0] is None, "only resumable streams number their events"
        gone = client.get(f"{app}/api/chat/{plain[0][1]['id']}/stream", headers={"Last-Event-ID": "0"})
        assert gone.status_code == 404


def test_ndjson_streams_resume_by_line_number(app: str) -> None:
    with httpx.Client(timeout=30) as client:
        lines: list[dict] = []
        body = {"user": "ndjson", "resumable": True, "max_tokens": 30}
        ndjson = {"Accept": "application/x-ndjson"}
        with client.stream("POST", f"{app}/api/chat", json=body, headers=ndjson) as r:
            assert r.headers["content-type"].startswith("application/x-ndjson")
            for line in r.iter_lines():
                if line.strip():
                    lines.append(json.loads(line))
                if len(lines) == 7:
                    break
        resumed = client.get(
            f"{app}/api/chat/{lines[0]['id']}/stream",
            headers={"Last-Event-ID": "6", "Accept": "application/x-ndjson"},
        )
        rest = [json.loads(line) for line in resumed.text.splitlines() if line.strip()]
    events = lines + rest
    assert events[-1]["type"] == "end"
    assert len([e for e in events if e["type"] == "delta"]) == 30


def test_a_stream_longer_than_the_byte_limit_is_not_resumable_from_its_start(sim: SimulatorHandle) -> None:
    settings = settings_for(
        AZURE_OPENAI_ENDPOINT=sim.url, AZURE_OPENAI_API_KEY="k", CHAT_RESUME_MAX_BYTES=2048
    )
    with serve(settings) as server, httpx.Client(timeout=30) as client:
        body = {"user": "x", "resumable": True, "max_tokens": 60}
        response = client.post(f"{server.url}/api/chat", json=body)
        events = _sse_events(response.text)
        assert events[-1][1]["type"] == "end", "the live reader gets every event, whatever the limit"
        assert [i for i, _ in events] == list(range(len(events)))
        stream_id = events[0][1]["id"]
        early = client.get(f"{server.url}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": "0"})
        assert early.status_code == 410 and early.json()["error"]["code"] == "stream_not_resumable"
        late = client.get(
            f"{server.url}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": str(events[-3][0])}
        )
        assert late.status_code == 200
        assert [e["type"] for _, e in _sse_events(late.text)][-1] == "end"


def test_a_failure_before_the_first_event_keeps_its_status(app: str) -> None:
    with httpx.Client(timeout=30) as client:
        resumable = client.post(f"{app}/api/chat", json={"user": "[sim:400]", "resumable": True})
        plain = client.post(f"{app}/api/chat", json={"user": "[sim:400]"})
    assert resumable.status_code == plain.status_code >= 400
    assert resumable.json()["error"]["code"] == plain.json()["error"]["code"]


def test_the_ai_sdk_resumes_its_running_chat_by_chat_id(app: str) -> None:
    chat_id = f"chat-{random.Random().randrange(10**9)}"
    body = {
        "id": chat_id,
        "trigger": "submit-message",
        "resumable": True,
        "max_tokens": 40,
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hello"}]}],
    }
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{app}/api/chat", json=body) as first:
            assert first.headers["x-vercel-ai-ui-message-stream"] == "v1"
            for _ in zip(range(4), first.iter_lines(), strict=False):
                pass
        resumed = client.get(f"{app}/api/chat/{chat_id}/stream")
        assert resumed.status_code == 200
        assert resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
        chunks = [json.loads(line[6:]) for line in resumed.text.splitlines() if line.startswith("data: {")]
        assert chunks[0]["type"] == "start", "a resumed UI message stream is replayed from its start"
        assert chunks[-1]["type"] == "finish"
        text = "".join(c["delta"] for c in chunks if c["type"] == "text-delta")
        assert len(text) > 0
        # Finished: the next page load finds nothing to resume.
        assert client.get(f"{app}/api/chat/{chat_id}/stream").status_code == 204


def test_the_live_reader_gets_every_event_of_a_burst_larger_than_the_byte_limit() -> None:
    """A zero-delay model delivers many chunks per network read: the kept window must not be trimmed
    past what the connection reading live has yet to send."""
    fast = start_in_thread(SimulatorConfig(ttft_ms=0, token_delay_ms=0, answer_tokens=3000))
    settings = settings_for(
        AZURE_OPENAI_ENDPOINT=fast.url,
        AZURE_OPENAI_API_KEY="k",
        CHAT_RESUME_MAX_BYTES=4096,
        CHAT_COALESCE_DELTAS=False,
    )
    try:
        with serve(settings) as server, httpx.Client(timeout=60) as client:
            body = {"user": "burst", "resumable": True, "max_tokens": 3000}
            response = client.post(f"{server.url}/api/chat", json=body)
    finally:
        fast.stop()
    assert response.status_code == 200, response.text
    events = _sse_events(response.text)
    assert [i for i, _ in events] == list(range(len(events))), "no event skipped"
    assert events[-1][1]["type"] == "end" and events[-1][1]["usage"]["completion_tokens"] == 3000
    assert len([e for _, e in events if e["type"] == "delta"]) == 3000


def test_the_setting_makes_every_stream_resumable_unless_the_request_says_no(sim: SimulatorHandle) -> None:
    """CHAT_RESUMABLE=true; and `?last_event_id=` for clients that cannot set headers. A blob store
    configured without a location is refused at start-up and streams stay resumable on the instance."""
    settings = settings_for(
        AZURE_OPENAI_ENDPOINT=sim.url,
        AZURE_OPENAI_API_KEY="k",
        CHAT_RESUMABLE=True,
        CHAT_STREAM_STORE="blob",
    )
    with serve(settings) as server, httpx.Client(timeout=30) as client:
        default = _read_until(client, server.url, {"user": "x", "max_tokens": 20}, 3)
        assert [i for i, _ in default] == [0, 1, 2], "resumable without asking"
        stream_id = default[0][1]["id"]
        resumed = client.get(f"{server.url}/api/chat/{stream_id}/stream?last_event_id=2")
        assert resumed.status_code == 200
        rest = _sse_events(resumed.text)
        assert rest[0][0] == 3 and rest[-1][1]["type"] == "end"
        events = [e for _, e in default] + [e for _, e in rest]
        assert len([e for e in events if e["type"] == "delta"]) == 20
        refused = _read_until(client, server.url, {"user": "x", "max_tokens": 5, "resumable": False}, 2)
        assert refused[0][0] is None, "a request may still say no"
        gone = client.get(
            f"{server.url}/api/chat/{refused[0][1]['id']}/stream", headers={"Last-Event-ID": "0"}
        )
        assert gone.status_code == 404


def test_a_running_ai_sdk_chat_can_be_stopped_by_its_chat_id(app: str, sim: SimulatorHandle) -> None:
    chat_id = f"chat-stop-{random.Random().randrange(10**9)}"
    body = {
        "id": chat_id,
        "trigger": "submit-message",
        "resumable": True,
        "max_tokens": 400,
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "long"}]}],
    }
    with httpx.Client(timeout=30) as client, httpx.Client(timeout=30) as other:
        with client.stream("POST", f"{app}/api/chat", json=body) as first:
            lines = first.iter_lines()
            while "text-delta" not in next(lines):
                pass
            stop = other.post(f"{app}/api/chat/{chat_id}/stop")
            rest = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert stop.status_code == 200 and stop.json()["status"] == "stopped"
    finish = rest[-1]
    assert finish["type"] == "finish"
    assert finish["messageMetadata"]["finish_reason"] == "cancelled"
    assert finish["messageMetadata"]["usage"]["estimated"] is True
