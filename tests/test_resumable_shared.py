"""Resume and stop across instances: two app processes sharing one Azurite blob store (as two Function
App instances share the storage account), behind no affinity. Real sockets throughout: the simulated
model, both `python -m funchost` processes, Azurite and the SDK's HTTP calls to it."""

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
from funchost.testing import SubprocessServer
from tests.conftest import start_app
from tests.support.azurite import Azurite, azurite  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = start_in_thread(SimulatorConfig(ttft_ms=10, token_delay_ms=25, answer_tokens=400))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def apps(sim: SimulatorHandle, azurite: Azurite) -> Iterator[tuple[SubprocessServer, SubprocessServer]]:  # noqa: F811
    env = {
        "AZURE_OPENAI_ENDPOINT": sim.url,
        "AZURE_OPENAI_API_KEY": "test-key-not-secret",
        "CHAT_STREAM_STORE": "blob",
        "CHAT_STREAM_STORE_CONNECTION_STRING": azurite.connection_string,
        "CHAT_STREAM_STORE_CONTAINER": f"streams-{random.Random().randrange(10**6)}",
        # Long enough for the other instance to take a dropped reader's place on a busy machine (Azurite,
        # two apps and the simulator share its cores); short next to the answers that outlive it.
        "CHAT_RESUME_GRACE_SECONDS": "2",
        "CHAT_STREAM_STORE_POLL_SECONDS": "0.1",
    }
    first = start_app(**env)
    try:
        second = start_app(**env)
    except BaseException:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def _events(text: str) -> list[tuple[int, dict]]:
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines and lines["data"] != "[DONE]":
            out.append((int(lines["id"]), json.loads(lines["data"])))
    return out


def _text(events: list[dict]) -> str:
    return "".join(e["delta_content"] for e in events if e["type"] == "delta")


def _first_events(client: httpx.Client, url: str, count: int, max_tokens: int) -> list[tuple[int, dict]]:
    got: list[tuple[int, dict]] = []
    body = {"user": "shared", "resumable": True, "max_tokens": max_tokens}
    with connect_sse(client, "POST", f"{url}/api/chat", json=body) as source:
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            got.append((int(sse.id), json.loads(sse.data)))
            if len(got) >= count:
                break
    return got


def test_a_stream_cut_on_one_instance_resumes_on_another_with_the_exact_text(
    apps: tuple[SubprocessServer, SubprocessServer], sim: SimulatorHandle
) -> None:
    a, b = apps
    before = sim.stats()["requests_total"]
    cut = random.Random().randint(1, 30)
    with httpx.Client(timeout=60) as client:
        first = _first_events(client, a.url, cut, 60)
        last_id, stream_id = first[-1][0], first[0][1]["id"]
        resumed = client.get(f"{b.url}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": str(last_id)})
        assert resumed.status_code == 200, resumed.text
        rest = _events(resumed.text)
        # The reference: the whole stream, read back from the instance that ran it.
        whole = [e for _, e in _events(client.get(f"{a.url}/api/chat/{stream_id}/stream").text)]
    assert [i for i, _ in rest] == list(range(last_id + 1, last_id + 1 + len(rest)))
    events = [e for _, e in first] + [e for _, e in rest]
    assert events == whole, "the two connections together carried exactly the stream"
    assert events[-1]["type"] == "end" and events[-1]["usage"]["completion_tokens"] == 60
    assert len([e for e in events if e["type"] == "delta"]) == 60
    assert sim.stats()["requests_total"] - before == 1, "no second model call"


def test_a_reader_on_another_instance_keeps_the_run_going_past_the_grace_period(
    apps: tuple[SubprocessServer, SubprocessServer],
) -> None:
    a, b = apps
    with httpx.Client(timeout=60) as client:
        first = _first_events(client, a.url, 2, 200)  # about 5 s of answer; the grace is 2 s
        stream_id = first[0][1]["id"]
        resumed = client.get(f"{b.url}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": "1"})
    events = [e for _, e in first] + [e for _, e in _events(resumed.text)]
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] in ("stop", "length")
    assert len([e for e in events if e["type"] == "delta"]) == 200


def test_stop_on_another_instance_ends_the_stream_with_its_usage(
    apps: tuple[SubprocessServer, SubprocessServer], sim: SimulatorHandle
) -> None:
    a, b = apps
    events: list[dict] = []
    answers: list[httpx.Response] = []
    with httpx.Client(timeout=60) as client, httpx.Client(timeout=60) as other:
        body = {"user": "stop me", "resumable": True, "max_tokens": 400}
        with connect_sse(client, "POST", f"{a.url}/api/chat", json=body) as source:
            for sse in source.iter_sse():
                if sse.data == "[DONE]":
                    break
                events.append(json.loads(sse.data))
                if len(events) == 5:
                    url = f"{b.url}/api/chat/{events[0]['id']}/stop"
                    stopper = threading.Thread(target=lambda url=url: answers.append(other.post(url)))
                    stopper.start()
        stopper.join(10)
    assert answers[0].status_code == 202 and answers[0].json()["status"] == "stopping"
    end = events[-1]
    assert end["type"] == "end" and end["finish_reason"] == "cancelled"
    assert end["usage"]["estimated"] is True
    assert 0 < len([e for e in events if e["type"] == "delta"]) < 400
    give_up = time.monotonic() + 10
    while sim.stats()["open_streams"] and time.monotonic() < give_up:
        time.sleep(0.05)
    assert sim.stats()["open_streams"] == 0, "the model call was cancelled"


def test_unknown_streams_are_unknown_on_every_instance(
    apps: tuple[SubprocessServer, SubprocessServer],
) -> None:
    with httpx.Client(timeout=30) as client:
        for app in apps:
            response = client.get(f"{app.url}/api/chat/nothing-here/stream", headers={"Last-Event-ID": "2"})
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "stream_not_found"


def _append_foreign_newline(azurite: Azurite, stream_id: str) -> None:  # noqa: F811
    """Another writer appends to a stream's events blob (one blank line: readers skip it), so the
    producer's next conditional append fails with Azure's 412 AppendPositionConditionNotMet."""
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        for container in service.list_containers():
            blob = service.get_blob_client(container.name, f"streams/{stream_id}/events")
            if blob.exists():
                blob.append_block(b"\n")
                return
    raise AssertionError(f"no events blob for {stream_id}")


def test_a_reader_on_another_instance_is_told_at_once_when_the_producer_stops_mirroring(
    apps: tuple[SubprocessServer, SubprocessServer],
    azurite: Azurite,  # noqa: F811
) -> None:
    """The producer's mirroring fails for good (here: a foreign append, so its own conditional append
    is refused): a reader on another instance must end with `stream_not_resumable` at once, not poll a
    copy that never grows until its deadline (heartbeats every 15 s, so a 10 s read timeout shows it)."""
    a, b = apps
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        first = _first_events(client, a.url, 3, 400)  # about 10 s of answer
        stream_id = first[0][1]["id"]
        _append_foreign_newline(azurite, stream_id)
        try:
            resumed = client.get(f"{b.url}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": "2"})
        except httpx.ReadTimeout:
            pytest.fail("the reader on the other instance waited for events that never came")
        # Still running on A, but out of reach through the store: not "it has already ended".
        stop = client.post(f"{b.url}/api/chat/{stream_id}/stop")
        assert stop.status_code == 404 and stop.json()["error"]["code"] == "stream_not_found", stop.text
    assert resumed.status_code in (200, 410), resumed.text
    if resumed.status_code == 410:
        assert resumed.json()["error"]["code"] == "stream_not_resumable"
        return
    rest = [e for _, e in _events(resumed.text)]
    assert rest and rest[-1]["type"] == "error" and rest[-1]["code"] == "stream_not_resumable", rest[-3:]
    assert resumed.text.rstrip().endswith("data: [DONE]")


def test_a_finished_stream_answers_a_resume_past_its_end_alike_on_every_instance(
    apps: tuple[SubprocessServer, SubprocessServer],
) -> None:
    """docs/protocol.md: a resume after the last event gets 204; a `Last-Event-ID` past the end of a
    finished stream is 400 `invalid_last_event_id`, on the instance that ran it and on the others."""
    a, b = apps
    with httpx.Client(timeout=60) as client:
        body = {"user": "shared", "resumable": True, "max_tokens": 5}
        whole = _events(client.post(f"{a.url}/api/chat", json=body).text)
        stream_id, last_id = whole[0][1]["id"], whole[-1][0]
        assert whole[-1][1]["type"] == "end"
        give_up = time.monotonic() + 20
        while time.monotonic() < give_up:  # the stored copy is finished within a mirror batch or two
            on_b = client.get(f"{b.url}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": str(last_id)})
            if on_b.status_code == 204:
                break
            time.sleep(0.1)
        for app in (a, b):
            at_end = client.get(
                f"{app.url}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": str(last_id)}
            )
            assert at_end.status_code == 204, (app.url, at_end.text)
            past = client.get(
                f"{app.url}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": str(last_id + 5)}
            )
            assert past.status_code == 400, (app is b, past.status_code, past.text)
            assert past.json()["error"]["code"] == "invalid_last_event_id"


def test_stopping_a_finished_stream_is_409_on_every_instance(
    apps: tuple[SubprocessServer, SubprocessServer],
) -> None:
    """docs/protocol.md: a stop of a stream that has already ended is 409 `stream_finished` (404 is for a
    stream that is unknown, or was not resumable), whichever instance the stop reaches."""
    a, b = apps
    with httpx.Client(timeout=60) as client:
        body = {"user": "shared", "resumable": True, "max_tokens": 5}
        whole = _events(client.post(f"{a.url}/api/chat", json=body).text)
        stream_id = whole[0][1]["id"]
        assert whole[-1][1]["type"] == "end"
        give_up = time.monotonic() + 20
        while time.monotonic() < give_up:  # the stored copy is finished within a mirror batch or two
            stored = client.get(f"{b.url}/api/chat/{stream_id}/stream")
            if stored.status_code == 200 and stored.text.rstrip().endswith("data: [DONE]"):
                break
            time.sleep(0.1)
        for app in (a, b):
            stop = client.post(f"{app.url}/api/chat/{stream_id}/stop")
            assert stop.status_code == 409, (app is b, stop.status_code, stop.text)
            assert stop.json()["error"]["code"] == "stream_finished"


def test_the_store_requests_are_not_logged_at_info(apps: tuple[SubprocessServer, SubprocessServer]) -> None:
    """The SDK logs each HTTP request and response at INFO (in Azure: forwarded to Application Insights),
    and the store makes about 14 of them a second per running stream (appends every 0.1 s, polls every
    0.25 s): its own calls log at DEBUG, failures still show as the store's warnings."""
    a, b = apps
    with httpx.Client(timeout=60) as client:
        body = {"user": "shared", "resumable": True, "max_tokens": 20}
        whole = _events(client.post(f"{a.url}/api/chat", json=body).text)
        stream_id = whole[0][1]["id"]
        resumed = client.get(f"{b.url}/api/chat/{stream_id}/stream", headers={"Last-Event-ID": "1"})
        assert resumed.status_code in (200, 204)
    time.sleep(0.5)
    for app in (a, b):
        assert "http_logging_policy" not in app.output, app.output[-2000:]
