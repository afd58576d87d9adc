"""Resume and stop across instances: two app processes sharing one Azurite blob store (as two Function
App instances share the storage account), behind no affinity. Real sockets throughout: the simulated
model, both `python -m funchost` processes, Azurite and the SDK's HTTP calls to it."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from aoai_simulator.config import SimulatorConfig
from aoai_simulator.server import SimulatorHandle, start_in_thread
from chatstream.resumable import PRODUCER_LOST_SECONDS
from funchost.testing import SubprocessServer
from tests.conftest import HOSTILE_APP_ENV, start_app
from tests.support.azurite import Azurite, azurite  # noqa: F401  (the fixture)
from tests.support.hostile import Conn, HostileUpstream, chunk, usage


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


# --- The producing instance is lost: a reader elsewhere is told, not left with a frozen answer ---------

#: The two instances of these tests: a deadline (90 s) long enough that a reader left polling a dead copy
#: until it clearly fails the tests' bound (60 s); a model read timeout longer than any pause scripted.
LOSS_ENV = {
    **HOSTILE_APP_ENV,
    "CHAT_UPSTREAM_READ_TIMEOUT_SECONDS": "80",
    "CHAT_DEADLINE_SECONDS": "90",
    "CHAT_HEARTBEAT_SECONDS": "2",
    "CHAT_RESUME_GRACE_SECONDS": "60",
    "CHAT_STREAM_STORE": "blob",
    "CHAT_STREAM_STORE_POLL_SECONDS": "0.1",
}
#: What a reader may take past PRODUCER_LOST_SECONDS on a busy machine; far below the deadline.
LOSS_BOUND_SECONDS = 60.0


@contextlib.contextmanager
def _two_instances(hostile: HostileUpstream, store: Azurite) -> Iterator[tuple[SubprocessServer, ...]]:
    env = {
        **LOSS_ENV,
        "AZURE_OPENAI_ENDPOINT": hostile.url,
        "CHAT_STREAM_STORE_CONNECTION_STRING": store.connection_string,
        "CHAT_STREAM_STORE_CONTAINER": f"lost-{random.Random().randrange(10**6)}",
    }
    a = start_app(**env)
    try:
        b = start_app(**env)
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def _start_then_leave(client: httpx.Client, url: str, prompt: str, count: int) -> list[dict]:
    """POST a resumable stream, read its first `count` events, and drop the connection."""
    got: list[dict] = []
    body = {"user": prompt, "resumable": True}
    with connect_sse(client, "POST", f"{url}/api/chat", json=body) as source:
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            got.append(json.loads(sse.data))
            if len(got) >= count:
                break
    return got


def _read_live(response: httpx.Response, give_up: float, on_event: Any = None) -> tuple[list[dict], bool]:
    """The events of an SSE response and whether `[DONE]` closed it, line by line (heartbeats return
    control), failing the test once the monotonic clock passes `give_up`."""
    got: list[dict] = []
    done = False
    for line in response.iter_lines():
        if time.monotonic() > give_up:
            pytest.fail(f"the reader was still waiting after its bound; it had {got[-3:]}")
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            continue
        got.append(json.loads(line[len("data: ") :]))
        if on_event is not None:
            on_event(got[-1])
    return got, done


def test_a_reader_on_another_instance_is_told_when_the_producing_instance_dies(
    hostile: HostileUpstream,
    azurite: Azurite,  # noqa: F811
) -> None:
    """Instance A runs the stream and is SIGKILLed mid-answer while B serves a resume: B's copy never grows
    again. B must end with `error` `stream_producer_lost` (not retryable) and `end` `finish_reason: "error"`
    within about PRODUCER_LOST_SECONDS, keeping the text it had; before, it polled until its deadline. A
    new resume of that stream is then told at once (410), instead of waiting for the beat again."""

    async def then_nothing(conn: Conn) -> bool:
        await conn.head()
        await conn.event(chunk("", role="assistant"))
        for word in ("Hello", ", ", "world"):
            await conn.event(chunk(word))
        await conn.hold(85)  # until the app is killed (its connection closes)
        return False

    hostile.script("then-nothing", then_nothing)
    with _two_instances(hostile, azurite) as (a, b), httpx.Client(timeout=httpx.Timeout(30.0)) as client:
        first = _start_then_leave(client, a.url, "[hostile:then-nothing]", 2)
        stream_id = first[0]["id"]
        killed_at: list[float] = []

        def kill_a_once_live(event: dict) -> None:
            if event.get("delta_content") == "world" and not killed_at:
                a.process.kill()  # SIGKILL: no clean-up of any kind on A
                a.process.wait(10)
                killed_at.append(time.monotonic())

        url = f"{b.url}/api/chat/{stream_id}/stream"
        give_up = time.monotonic() + LOSS_BOUND_SECONDS + PRODUCER_LOST_SECONDS
        with client.stream("GET", url, headers={"Last-Event-ID": "1"}) as resumed:
            assert resumed.status_code == 200, resumed.read()
            rest, done = _read_live(resumed, give_up, kill_a_once_live)
        ended_after = time.monotonic() - killed_at[0]
        again = client.get(url, headers={"Last-Event-ID": "1"})
        stop = client.post(f"{b.url}/api/chat/{stream_id}/stop")

    assert killed_at, f"A never sent the last word: {rest}"
    assert ended_after < LOSS_BOUND_SECONDS
    assert _text(first + rest) == "Hello, world", "the text before the loss is intact"
    error, end = rest[-2:]
    assert error["type"] == "error" and error["code"] == "stream_producer_lost", rest[-3:]
    assert error["retryable"] is False
    assert end["type"] == "end" and end["finish_reason"] == "error" and end["id"] == stream_id
    assert not [e for e in rest if e["type"] == "end" and e["finish_reason"] != "error"], "never a success"
    assert done, "the native protocol still closes with [DONE] after an error and its end"
    assert again.status_code == 410, again.text
    assert again.json()["error"]["code"] == "stream_producer_lost"
    # Nobody is left to act on a stop: said so, not "stopping" (202).
    assert stop.status_code == 410 and stop.json()["error"]["code"] == "stream_producer_lost", stop.text


def test_a_silent_but_living_producer_is_not_taken_for_lost(
    hostile: HostileUpstream,
    azurite: Azurite,  # noqa: F811
) -> None:
    """The model says nothing for longer than PRODUCER_LOST_SECONDS (a slow first token, a long think):
    the producing instance beats meanwhile, and the reader on the other instance gets the whole answer."""
    pause = PRODUCER_LOST_SECONDS + 3

    async def pause_then_finish(conn: Conn) -> bool:
        await conn.head()
        await conn.event(chunk("", role="assistant"))
        await conn.event(chunk("Hello"))
        if await conn.hold(pause):
            return False
        for word in (", ", "world"):
            await conn.event(chunk(word))
        await conn.event(chunk(finish_reason="stop"))
        await conn.event(chunk(usage=usage(5, 3)))
        await conn.send(b"data: [DONE]\n\n")
        return False

    hostile.script("pause-then-finish", pause_then_finish)
    with _two_instances(hostile, azurite) as (a, b), httpx.Client(timeout=httpx.Timeout(30.0)) as client:
        first = _start_then_leave(client, a.url, "[hostile:pause-then-finish]", 2)
        started = time.monotonic()
        url = f"{b.url}/api/chat/{first[0]['id']}/stream"
        with client.stream("GET", url, headers={"Last-Event-ID": "1"}) as resumed:
            assert resumed.status_code == 200, resumed.read()
            rest, done = _read_live(resumed, started + pause + LOSS_BOUND_SECONDS)
        waited = time.monotonic() - started
    assert not [e for e in rest if e["type"] == "error"], rest
    assert _text(first + rest) == "Hello, world"
    assert rest[-1]["type"] == "end" and rest[-1]["finish_reason"] == "stop", rest[-2:]
    assert done
    assert waited > PRODUCER_LOST_SECONDS, "the reader did wait through a silence longer than the limit"
