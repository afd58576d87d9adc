"""Answers the app must never lose or misreport, against a model server that misbehaves on purpose
(tests/support/hostile.py): real sockets from the caller to the app to the upstream."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from funchost.testing import SubprocessServer
from tests.conftest import HOSTILE_APP_ENV, start_app
from tests.support.hostile import Conn, HostileUpstream, chunk, usage
from tests.test_resilience import assert_no_leak, deltas, read_sse

WORDS = ("Hello", ", ", "world")


def _post(url: str, prompt: str, **body: object) -> tuple[httpx.Response, list[dict]]:
    with httpx.stream("POST", f"{url}/api/chat", json={"user": prompt, **body}, timeout=60) as response:
        if response.status_code != 200 or body.get("stream") is False:
            response.read()
            return response, []
        events, _pings, done = read_sse(response)
        assert done, "every stream ends with [DONE]"
    return response, events


def _sse(*payloads: dict | str) -> bytes:
    return b"".join(f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n".encode() for p in payloads)


def _text_chunks() -> list[dict]:
    return [chunk("", role="assistant"), *(chunk(w) for w in WORDS)]


def _error_code(events: list[dict]) -> str | None:
    errors = [e for e in events if e["type"] == "error"]
    return errors[0]["code"] if errors else None


class _Log:
    """The part of an app's output written since it was created (one test's requests)."""

    def __init__(self, server: SubprocessServer) -> None:
        self.server = server
        self.mark = len(server.output)

    def new(self) -> str:
        return self.server.output[self.mark :]

    def assert_clean(self) -> None:
        """The upstream's bytes are its fault: no traceback, nothing at ERROR level, no internal_error."""
        text = self.new()
        assert "Traceback" not in text, text[-3000:]
        assert "internal_error" not in text, text[-3000:]
        assert not re.search(r"\bERROR\b", text), text[-3000:]


@pytest.fixture(scope="module")
def coalescing_app(_hostile_server: HostileUpstream) -> Iterator[SubprocessServer]:
    """The app with coalescing ON: chunks that arrive in one read become one delta."""
    server = start_app(
        AZURE_OPENAI_ENDPOINT=_hostile_server.url, **HOSTILE_APP_ENV, CHAT_COALESCE_DELTAS="true"
    )
    yield server
    server.stop()


@pytest.fixture(params=["one-delta-per-chunk", "coalescing"])
def any_app(request: pytest.FixtureRequest, hostile: HostileUpstream) -> SubprocessServer:
    name = "hostile_app" if request.param == "one-delta-per-chunk" else "coalescing_app"
    server: SubprocessServer = request.getfixturevalue(name)
    if server.process.poll() is not None:
        pytest.fail(f"the app process died:\n{server.output}")
    return server


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


# --- 1. No text is ever dropped --------------------------------------------------------------------


def test_text_and_an_error_in_one_write_keep_the_text(any_app, hostile: HostileUpstream):
    """Today's bug with coalescing on: the merged text was dropped when the error came in the same read."""

    async def text_then_error(conn: Conn) -> bool:
        await conn.head()
        error = {"error": {"message": "internal failure at http://10.0.0.1", "code": "server_error"}}
        await conn.send(_sse(*_text_chunks(), error))  # one TCP write
        return False

    hostile.script("text-then-error", text_then_error)
    log = _Log(any_app)
    response, events = _post(any_app.url, "[hostile:text-then-error]")
    assert response.status_code == 200
    assert deltas(events) == "Hello, world"
    assert [e["type"] for e in events][-2:] == ["error", "end"]
    assert _error_code(events) == "upstream_error"
    assert_no_leak(str(events))
    log.assert_clean()


def test_text_then_junk_json_keeps_the_text_and_is_the_upstreams_fault(any_app, hostile: HostileUpstream):
    async def text_then_junk(conn: Conn) -> bool:
        await conn.head()
        await conn.send(_sse(*_text_chunks()) + b'data: {"choices": [{"delta": {"content": "trunc\n\n')
        return False

    hostile.script("text-then-junk", text_then_junk)
    log = _Log(any_app)
    response, events = _post(any_app.url, "[hostile:text-then-junk]")
    assert response.status_code == 200
    assert deltas(events) == "Hello, world"
    assert _error_code(events) == "upstream_error"
    assert events[-1]["type"] == "end"
    log.assert_clean()


def test_text_then_reset_keeps_the_text_and_is_not_retried(any_app, hostile: HostileUpstream):
    async def text_then_reset(conn: Conn) -> bool:
        await conn.head()
        await conn.send(_sse(*_text_chunks()))
        await asyncio.sleep(0.2)
        conn.reset()
        return False

    hostile.script("text-then-reset", text_then_reset)
    response, events = _post(any_app.url, "[hostile:text-then-reset]")
    assert response.status_code == 200
    assert deltas(events) == "Hello, world"
    assert _error_code(events) == "upstream_interrupted"
    assert len(hostile.seen) == 1, "a request that got bytes back must never be sent again"


def test_text_then_stall_keeps_the_text(any_app, hostile: HostileUpstream):
    async def text_then_stall(conn: Conn) -> bool:
        await conn.head()
        await conn.send(_sse(*_text_chunks()))
        await conn.hold(10)  # the app's read timeout is 2 s: it gives up and closes first
        return False

    hostile.script("text-then-stall", text_then_stall)
    _response, events = _post(any_app.url, "[hostile:text-then-stall]")
    assert deltas(events) == "Hello, world"
    assert _error_code(events) == "upstream_timeout"
    assert hostile.wait_closed(10)


# --- 2. Upstream junk is the upstream's fault ------------------------------------------------------

JUNK_BODIES = {
    "html": ("text/html", b"<html><body><h1>502 Bad Gateway</h1>\n\n<p>nginx</p></body></html>"),
    "json-error": ("application/json", b'{"error": {"code": "InternalServerError", "message": "oops"}}'),
    "html-as-sse": ("text/event-stream", b"<html><body>\n\n<h1>Service Unavailable</h1></body></html>\n\n"),
    "invalid-json": ("text/event-stream", b"data: {not json at all\n\n"),
    "a-number": ("text/event-stream", b"data: 42\n\n"),
    "choices-not-a-list": ("text/event-stream", b'data: {"id": "x", "choices": "nope"}\n\n'),
    "delta-not-an-object": (
        "text/event-stream",
        b'data: {"id": "x", "choices": [{"index": 0, "delta": 7}]}\n\n',
    ),
    "content-not-text": (
        "text/event-stream",
        b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": {"a": 1}}}]}\n\n',
    ),
    "tool-call-function-not-an-object": (
        "text/event-stream",
        b'data: {"id": "x", "choices": [{"index": 0, "delta": '
        b'{"tool_calls": [{"index": 0, "function": "f"}]}}]}\n\n',
    ),
    "usage-not-an-object": ("text/event-stream", b'data: {"id": "x", "choices": [], "usage": "lots"}\n\n'),
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "stream-false"])
@pytest.mark.parametrize("kind", list(JUNK_BODIES))
def test_a_200_that_is_not_a_chat_stream_is_502_upstream_error(
    hostile_app, hostile: HostileUpstream, kind: str, stream: bool
):
    content_type, body = JUNK_BODIES[kind]

    async def junk(conn: Conn) -> bool:
        await conn.head(200, content_type=content_type, length=len(body))
        await conn.send(body)
        return False

    hostile.script(f"junk-{kind}", junk)
    log = _Log(hostile_app)
    response, events = _post(hostile_app.url, f"[hostile:junk-{kind}]", stream=stream)
    assert response.status_code == 502, events
    assert response.json()["error"]["code"] == "upstream_error"
    assert_no_leak(response.text)
    log.assert_clean()


# --- 3. A truncated answer is never a success ------------------------------------------------------


def _cut(conn_payload: bytes):
    async def script(conn: Conn) -> bool:
        await conn.head(200, length=len(conn_payload))
        await conn.send(conn_payload)
        return False

    return script


def test_a_stream_cut_without_done_or_finish_reason_is_upstream_interrupted(hostile_app, hostile):
    hostile.script("cut", _cut(_sse(*_text_chunks())))
    response, events = _post(hostile_app.url, "[hostile:cut]")
    assert response.status_code == 200
    assert deltas(events) == "Hello, world"
    assert [e["type"] for e in events][-2:] == ["error", "end"]
    assert _error_code(events) == "upstream_interrupted"
    assert events[-1]["finish_reason"] == "error"


def test_a_cut_stream_is_a_502_with_stream_false(hostile_app, hostile):
    hostile.script("cut", _cut(_sse(*_text_chunks())))
    log = _Log(hostile_app)
    response, _ = _post(hostile_app.url, "[hostile:cut]", stream=False)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_interrupted"
    log.assert_clean()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "stream-false"])
@pytest.mark.parametrize(
    "payload",
    [
        b"",
        _sse("[DONE]"),
        _sse(chunk(usage=usage(5, 0)), "[DONE]"),
        b'data: {"id": "x", "choic',
        _sse(chunk("", role="assistant"), "[DONE]"),
        _sse(chunk("", role="assistant"), chunk(""), chunk(usage=usage(5, 0)), "[DONE]"),
    ],
    ids=["empty-body", "done-alone", "usage-only", "half-an-event", "role-only", "role-and-empty-text"],
)
def test_an_empty_answer_without_finish_reason_is_upstream_interrupted(hostile_app, hostile, payload, stream):
    hostile.script("empty", _cut(payload))
    log = _Log(hostile_app)
    response, events = _post(hostile_app.url, "[hostile:empty]", stream=stream)
    if events:  # a usage chunk is a chunk: the stream had started when [DONE] came without an answer
        assert stream and deltas(events) == ""
        assert _error_code(events) == "upstream_interrupted" and events[-1]["finish_reason"] == "error"
    else:
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_interrupted"
    log.assert_clean()


def test_an_empty_answer_with_a_finish_reason_is_a_legitimate_empty_answer(hostile_app, hostile):
    payload = _sse(
        chunk("", role="assistant"), chunk(finish_reason="stop"), chunk(usage=usage(5, 0)), "[DONE]"
    )
    hostile.script("empty-finished", _cut(payload))
    response, events = _post(hostile_app.url, "[hostile:empty-finished]")
    assert response.status_code == 200
    assert deltas(events) == "" and _error_code(events) is None
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] == "stop"
    response, _ = _post(hostile_app.url, "[hostile:empty-finished]", stream=False)
    assert response.status_code == 200
    assert response.json()["content"] == "" and response.json()["finish_reason"] == "stop"


def test_text_and_done_without_finish_reason_is_complete(hostile_app, hostile):
    """[DONE] is the server saying the answer is over: the text stands (finish_reason unknown)."""
    hostile.script("no-finish", _cut(_sse(*_text_chunks(), "[DONE]")))
    _response, events = _post(hostile_app.url, "[hostile:no-finish]")
    assert deltas(events) == "Hello, world" and _error_code(events) is None
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] is None


# --- 4. [DONE] means done --------------------------------------------------------------------------


def test_done_ends_the_answer_even_if_the_server_keeps_the_connection_open(hostile_app, hostile):
    held: list[bool] = []
    released = threading.Event()

    async def done_then_hold(conn: Conn) -> bool:
        await conn.head(close=False)  # no length, no close: the body never ends by itself
        await conn.send(
            _sse(*_text_chunks(), chunk(finish_reason="stop"), chunk(usage=usage(5, 3)), "[DONE]")
        )
        held.append(await conn.hold(20))
        released.set()
        return False

    hostile.script("done-then-hold", done_then_hold)
    _response, events = _post(hostile_app.url, "[hostile:done-then-hold]")
    # Before: the drain after [DONE] waited for the 2 s read timeout and reported upstream_timeout.
    assert deltas(events) == "Hello, world"
    assert _error_code(events) is None
    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] == "stop"
    assert events[-1]["usage"]["completion_tokens"] == 3
    assert released.wait(15), "the app kept the connection after [DONE]"
    assert held == [True], "the app should close a connection whose body never ends"


# --- 5. No redirects to elsewhere ------------------------------------------------------------------


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[HostileUpstream]:
    server = HostileUpstream()
    yield server
    server.stop()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_never_followed(hostile_app, hostile, elsewhere: HostileUpstream, status: int):
    name = f"redirect-{status}"

    async def redirect(conn: Conn) -> bool:
        target = f"{elsewhere.url}{conn.request.path}"
        await conn.head(status, content_type="text/plain", headers={"Location": target}, length=0)
        return False

    async def would_answer(conn: Conn) -> bool:
        await conn.head()
        await conn.send(_sse(*_text_chunks(), chunk(finish_reason="stop"), "[DONE]"))
        return False

    hostile.script(name, redirect)
    elsewhere.script(name, would_answer)
    elsewhere.reset()
    log = _Log(hostile_app)
    for stream in (True, False):
        response, _ = _post(hostile_app.url, f"[hostile:{name}]", stream=stream)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_error"
        assert elsewhere.url not in response.text
    assert elsewhere.seen == [], "the prompt (and the key) went to the redirect's target"
    assert len(hostile.seen) == 2
    log.assert_clean()


# --- 7. The upstream's line buffer is bounded ------------------------------------------------------


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) * 1024
    return out


def test_an_endless_line_is_upstream_error_not_memory(hostile_app, hostile):
    sent: list[int] = []

    async def endless_line(conn: Conn) -> bool:
        await conn.head()
        await conn.send(b"data: ")
        block = b"a" * (1 << 20)
        total = 0
        try:
            for _ in range(50):  # 50 MB and no newline
                await conn.send(block)
                total += len(block)
        except (ConnectionError, OSError):
            pass
        sent.append(total)
        return False

    hostile.script("endless-line", endless_line)
    # Memory settles after the first requests: compare with the state right before this one.
    pid = hostile_app.process.pid
    before = _memory(pid)
    log = _Log(hostile_app)
    response, _ = _post(hostile_app.url, "[hostile:endless-line]")
    after = _memory(pid)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert after["VmHWM"] - before["VmHWM"] < 24 << 20, (before, after)
    assert after["VmRSS"] - before["VmRSS"] < 24 << 20, (before, after)
    assert hostile.wait_closed(10)
    log.assert_clean()


# --- 8. The app's pool lets idle connections go before the upstream does ---------------------------

#: The scaled-down upstream: a request that arrives on a connection idle this long is dropped without a
#: byte of answer, as when a server's idle close crosses the request on the wire.
UPSTREAM_IDLE_CLOSE = 1.0


class _KeepAliveUpstream:
    """A keep-alive script that remembers when each connection last finished an answer."""

    def __init__(self) -> None:
        #: By writer object, not id(): a closed connection's id may be reused by a fresh one.
        self.last_end: dict[object, float] = {}
        self.dropped = 0
        self.served = 0

    async def __call__(self, conn: Conn) -> bool:
        key = conn.writer
        last = self.last_end.get(key)
        if last is not None and time.monotonic() - last >= UPSTREAM_IDLE_CLOSE:
            self.dropped += 1
            return False  # closed, nothing answered
        body = _sse(*_text_chunks(), chunk(finish_reason="stop"), chunk(usage=usage(5, 3)), "[DONE]")
        await conn.head(200, length=len(body), close=False)
        await conn.send(body)
        self.served += 1
        self.last_end[key] = time.monotonic()
        return True


def _burst(url: str, prompt: str, n: int) -> list[tuple[int, str, str | None]]:
    def one(_: int) -> tuple[int, str, str | None]:
        response, events = _post(url, prompt)
        return response.status_code, deltas(events), _error_code(events)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture(scope="module")
def short_pool_app(_hostile_server: HostileUpstream) -> Iterator[SubprocessServer]:
    """Pool keep-alive 0.8 s against an upstream that closes idle connections at 1.0 s: the default
    (4 s against the common 5 s), scaled down so the test takes seconds."""
    server = start_app(
        AZURE_OPENAI_ENDPOINT=_hostile_server.url,
        **HOSTILE_APP_ENV,
        CHAT_UPSTREAM_POOL_KEEPALIVE_SECONDS="0.8",
    )
    yield server
    server.stop()


def test_a_burst_after_idle_gets_no_connection_errors(short_pool_app, hostile):
    upstream = _KeepAliveUpstream()
    hostile.script("keepalive", upstream)
    ok = [(200, "Hello, world", None)] * 4
    assert _burst(short_pool_app.url, "[hostile:keepalive]", 4) == ok
    time.sleep(UPSTREAM_IDLE_CLOSE + 0.5)
    assert _burst(short_pool_app.url, "[hostile:keepalive]", 4) == ok
    # The pool had let every idle connection go before the upstream would have: none was reused late.
    assert upstream.dropped == 0
    assert upstream.served == 8


def test_a_request_on_a_connection_the_upstream_just_closed_is_sent_again(hostile_app, hostile):
    """With the pool's keep-alive (4 s) above this upstream's idle close (1 s), every pooled connection
    is stale after 1.5 s. The first request after the pause meets them one after the other: each is
    dropped without a byte of answer, so the request is sent again, transparently, until one answers."""
    upstream = _KeepAliveUpstream()
    hostile.script("keepalive-race", upstream)
    ok = (200, "Hello, world", None)
    assert _burst(hostile_app.url, "[hostile:keepalive-race]", 3) == [ok] * 3
    time.sleep(UPSTREAM_IDLE_CLOSE + 0.5)
    for _ in range(3):  # one at a time: the first may meet every stale connection in turn
        assert _burst(hostile_app.url, "[hostile:keepalive-race]", 1) == [ok]
    assert upstream.dropped >= 1, "the race was not reproduced: no stale connection was reused"
    assert upstream.served == 6
    assert len(hostile.seen) == 6 + upstream.dropped
