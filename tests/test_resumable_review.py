"""Adversarial review of resumable streams and stop (issue 15): each test pins a bug that was found
(or an edge that holds), end to end over real sockets: the app in-process on loopback, in front of the
simulated deployment."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from aoai_simulator.config import SimulatorConfig
from aoai_simulator.server import SimulatorHandle, start_in_thread
from chatstream import resumable
from tests.support.inprocess import serve, settings_for
from tests.test_resumable import _sse_events as _sse


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    config = SimulatorConfig(ttft_ms=10, token_delay_ms=25, answer_tokens=400, prompt_faults=True)
    handle = start_in_thread(config)
    yield handle
    handle.stop()


def _settings(sim: SimulatorHandle, **values: object):
    return settings_for(AZURE_OPENAI_ENDPOINT=sim.url, AZURE_OPENAI_API_KEY="k", **values)


def _wait(predicate, timeout: float = 15.0) -> bool:
    give_up = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


def _post_in_thread(client: httpx.Client, url: str, body: dict) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(client.post(f"{url}/api/chat", json=body)))
    thread.start()
    return thread, out


def _stop_after_headers(url: str, body: dict, *, delay: float = 0.3) -> tuple[httpx.Response, str]:
    """POST `body`, and once the headers came (the request id), stop the stream from a second
    connection; the stop's answer and the whole body of the first."""
    answers: list[httpx.Response] = []
    with httpx.Client(timeout=30) as client, httpx.Client(timeout=30) as other:
        with client.stream("POST", f"{url}/api/chat", json=body) as response:
            assert response.status_code == 200
            rid = response.headers["x-request-id"]
            time.sleep(delay)
            stopper = threading.Thread(
                target=lambda: answers.append(other.post(f"{url}/api/chat/{rid}/stop"))
            )
            stopper.start()
            text = response.read().decode()
        stopper.join(20)
    return answers[0], text


@pytest.mark.parametrize("resumable_", [False, True])
def test_stop_while_the_first_token_is_awaited_after_the_headers(
    sim: SimulatorHandle, resumable_: bool
) -> None:
    settings = _settings(sim, CHAT_FIRST_EVENT_WAIT_SECONDS=0.3)
    with serve(settings) as server:
        body = {"user": "[sim:slow-first-token=4000] hi", "resumable": resumable_, "max_tokens": 20}
        stop, text = _stop_after_headers(server.url, body)
    assert stop.status_code == 200, stop.text
    events = [e for _, e in _sse(text)]
    assert [e["type"] for e in events] == ["start", "end"], events
    assert events[-1]["finish_reason"] == "cancelled"
    assert text.endswith("data: [DONE]\n\n")


def _ai_sdk(chat_id: str, text: str, **extra: object) -> dict:
    return {
        "id": chat_id,
        "trigger": "submit-message",
        "resumable": True,
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}],
        **extra,
    }


def test_stop_during_retries_by_chat_id(sim: SimulatorHandle) -> None:
    # A 4 s Retry-After (inside the 10 s first-event wait): the stop lands in the retry's sleep even when a
    # busy machine is slow to pass the 503 on or to send the stop.
    settings = _settings(sim, CHAT_FIRST_EVENT_WAIT_SECONDS=10, CHAT_UPSTREAM_MAX_RETRIES=3)
    chat_id = f"retry-{time.monotonic_ns()}"
    with serve(settings) as server, httpx.Client(timeout=30) as client, httpx.Client(timeout=30) as other:
        before = sim.stats()["requests_total"]
        thread, out = _post_in_thread(client, server.url, _ai_sdk(chat_id, "[sim:503:retry-after=4] hi"))
        assert _wait(lambda: sim.stats()["requests_total"] > before)
        time.sleep(0.3)  # in the retry's sleep
        stop = other.post(f"{server.url}/api/chat/{chat_id}/stop")
        thread.join(20)
        asked = sim.stats()["requests_total"] - before
    assert stop.status_code == 200, stop.text
    assert out[0].status_code == 200, out[0].text
    assert asked == 1, "no retry after the stop"
    chunks = [json.loads(line[6:]) for line in out[0].text.splitlines() if line.startswith("data: {")]
    assert chunks[0]["type"] == "start" and chunks[-1]["type"] == "finish", chunks


@pytest.mark.parametrize("resumable_", [False, True])
def test_stop_on_several_deployments(sim: SimulatorHandle, resumable_: bool) -> None:
    settings = _settings(sim, CHAT_DEPLOYMENTS="a,b")
    with serve(settings) as server:
        body = {"user": "long", "deployments": ["a", "b"], "resumable": resumable_, "max_tokens": 300}
        stop, text = _stop_after_headers(server.url, body, delay=0.5)
        replay = None
        if resumable_:
            sid = _sse(text)[0][1]["id"]
            replay = httpx.get(f"{server.url}/api/chat/{sid}/stream", timeout=30)
    assert stop.status_code == 200, stop.text
    events = [e for _, e in _sse(text)]
    ends = [e for e in events if e["type"] == "end"]
    assert sorted(e["deployment"] for e in ends) == ["a", "b"], events[-4:]
    assert all(e["finish_reason"] == "cancelled" for e in ends)
    assert events[-1]["type"] == "done" and events[-1]["failed"] == []
    if replay is not None:
        assert [e for _, e in _sse(replay.text)] == events


def test_resumable_past_the_deadline_closes_once_live_and_replayed(sim: SimulatorHandle) -> None:
    settings = _settings(sim, CHAT_DEADLINE_SECONDS=1.5, CHAT_FIRST_EVENT_WAIT_SECONDS=0.5)
    with serve(settings) as server, httpx.Client(timeout=30) as client:
        live = client.post(
            f"{server.url}/api/chat", json={"user": "long", "resumable": True, "max_tokens": 400}
        )
        events = _sse(live.text)
        sid = events[0][1]["id"]
        replay = client.get(f"{server.url}/api/chat/{sid}/stream")
        tail = client.get(f"{server.url}/api/chat/{sid}/stream", headers={"Last-Event-ID": "3"})
    types = [e["type"] for _, e in events]
    assert types.count("error") == 1 and types.count("end") == 1 and types[-2:] == ["error", "end"], types[
        -5:
    ]
    assert events[-2][1]["code"] == "deadline_exceeded"
    assert [i for i, _ in events] == list(range(len(events)))
    assert _sse(replay.text) == events
    assert _sse(tail.text) == events[4:]
    assert live.text.endswith("data: [DONE]\n\n") and live.text.count("[DONE]") == 1


def test_a_failure_after_text_is_replayed_exactly(sim: SimulatorHandle) -> None:
    with serve(_settings(sim)) as server, httpx.Client(timeout=30) as client:
        live = client.post(
            f"{server.url}/api/chat", json={"user": "[sim:error-after=5] x", "resumable": True}
        )
        events = _sse(live.text)
        sid = events[0][1]["id"]
        replay = client.get(f"{server.url}/api/chat/{sid}/stream")
    assert [e["type"] for _, e in events][-2:] == ["error", "end"]
    assert _sse(replay.text) == events
    assert replay.text == live.text


def test_grace_zero_ends_the_run_when_the_reader_leaves(sim: SimulatorHandle) -> None:
    with serve(_settings(sim, CHAT_RESUME_GRACE_SECONDS=0)) as server, httpx.Client(timeout=30) as client:
        before = sim.stats()["streams_closed_early"]
        with client.stream("POST", f"{server.url}/api/chat", json={"user": "g", "resumable": True}) as r:
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if len(lines) > 8:
                    break
        sid = r.headers["x-request-id"]
        assert _wait(lambda: sim.stats()["streams_closed_early"] > before)
        replay = client.get(f"{server.url}/api/chat/{sid}/stream")
    events = _sse(replay.text)
    assert events[-1][1]["type"] == "end" and events[-1][1]["finish_reason"] == "cancelled"


def test_concurrent_readers_get_identical_events(sim: SimulatorHandle) -> None:
    with serve(_settings(sim)) as server, httpx.Client(timeout=30) as client:
        with client.stream(
            "POST", f"{server.url}/api/chat", json={"user": "c", "resumable": True, "max_tokens": 60}
        ) as r:
            sid = r.headers["x-request-id"]
            results: list[str] = [""] * 4

            def read(i: int) -> None:
                with httpx.Client(timeout=30) as c:
                    results[i] = c.get(f"{server.url}/api/chat/{sid}/stream").text

            threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            first = r.read().decode()
            for t in threads:
                t.join(20)
    assert all(text == first for text in results)
    assert _sse(first)[-1][1]["type"] == "end"


def test_resume_capacity_when_every_slot_runs(sim: SimulatorHandle) -> None:
    with serve(_settings(sim, CHAT_RESUME_MAX_STREAMS=1)) as server, httpx.Client(timeout=30) as client:
        with client.stream(
            "POST", f"{server.url}/api/chat", json={"user": "one", "resumable": True, "max_tokens": 100}
        ) as r:
            assert r.status_code == 200
            second = client.post(f"{server.url}/api/chat", json={"user": "two", "resumable": True})
            plain = client.post(f"{server.url}/api/chat", json={"user": "two", "max_tokens": 3})
            r.read()
        third = client.post(f"{server.url}/api/chat", json={"user": "3", "resumable": True, "max_tokens": 3})
    assert second.status_code == 503 and second.json()["error"]["code"] == "resume_capacity"
    assert plain.status_code == 200
    assert third.status_code == 200


def test_no_tasks_left_after_many_resumable_requests(sim: SimulatorHandle) -> None:
    with serve(_settings(sim, CHAT_RESUME_GRACE_SECONDS=0.2)) as server, httpx.Client(timeout=30) as client:
        for i in range(12):
            body = {"user": f"n{i}", "resumable": True, "max_tokens": 40}
            if i % 3 == 0:
                client.post(f"{server.url}/api/chat", json=body)
            else:
                with client.stream("POST", f"{server.url}/api/chat", json=body) as r:
                    for _ in zip(range(3), r.iter_lines(), strict=False):
                        pass
                    if i % 3 == 2:
                        client.post(f"{server.url}/api/chat/{r.headers['x-request-id']}/stop")
        assert _wait(lambda: not resumable._tasks, 15), resumable._tasks
        assert _wait(lambda: sim.stats()["open_streams"] == 0)


@pytest.mark.parametrize("chain", ["chat", "rag", "tools"])
@pytest.mark.parametrize("resumable_", [False, True])
def test_stop_mid_answer_on_every_chain(sim: SimulatorHandle, chain: str, resumable_: bool) -> None:
    with serve(_settings(sim)) as server:
        before = sim.stats()["streams_closed_early"]
        body = {"user": "tell me", "chain": chain, "resumable": resumable_, "max_tokens": 300}
        stop, text = _stop_after_headers(server.url, body, delay=0.6)
        assert _wait(lambda: sim.stats()["open_streams"] == 0)
        closed = sim.stats()["streams_closed_early"] - before
    assert stop.status_code == 200, stop.text
    events = [e for _, e in _sse(text)]
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] == "cancelled", events[-3:]
    assert [e["type"] for e in events].count("end") == 1
    assert closed == 1


def test_a_resume_after_the_last_event_of_a_finished_stream_is_204(sim: SimulatorHandle) -> None:
    """EventSource reconnects by itself when a body ends, sending the `end` event's id: that is
    "nothing more", not a server failure (it was a 500 `internal_error` and a logged traceback)."""
    with serve(_settings(sim)) as server, httpx.Client(timeout=30) as client:
        live = client.post(f"{server.url}/api/chat", json={"user": "x", "resumable": True, "max_tokens": 5})
        events = _sse(live.text)
        last = events[-1][0]
        again = client.get(
            f"{server.url}/api/chat/{events[0][1]['id']}/stream", headers={"Last-Event-ID": str(last)}
        )
    assert events[-1][1]["type"] == "end"
    assert again.status_code == 204, again.text
    assert again.content == b""
