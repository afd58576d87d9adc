"""Conversation threads shared by several instances through PostgreSQL (`CHAT_THREADS_STORE=postgres`).

A real PostgreSQL cluster on loopback (tests/support/postgres.py), real app processes (`python -m
funchost`), the simulated deployment recording what the model was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import httpx
import psycopg
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from aoai_simulator import SimulatorConfig, SimulatorHandle, start_in_thread
from chains.errors import ThreadStoreUnavailable
from chains.graph import GraphChain
from chains.threads import BoundedMemorySaver, thread_store
from chains.threads_postgres import PostgresPool, PostgresThreadSaver
from funchost.testing import LOOPBACK, SubprocessServer, free_port
from tests.conftest import REPO_ROOT, start_app
from tests.support.postgres import PASSWORD_ROLE, PostgresCluster, postgres_cluster, start_cluster  # noqa: F401 - the fixture
from tests.test_chat_stream import deltas, sse_events

APP_ENV = {
    "AZURE_OPENAI_API_KEY": "test-key-not-secret",
    "AZURE_OPENAI_DEPLOYMENT": "gpt-4o-mini",
    "CHAT_UPSTREAM_MAX_RETRIES": "0",
    "CHAT_FIRST_EVENT_WAIT_SECONDS": "8",
    "CHAT_THREADS_TIMEOUT_SECONDS": "3",
}


def _database(cluster: PostgresCluster, name: str) -> str:
    """A fresh database of its own for one test (no state shared between tests)."""
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.url(dbname=name)


def _thread() -> str:
    return f"t-{uuid.uuid4()}"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with start_in_thread(SimulatorConfig(ttft_ms=0, token_delay_ms=1, answer_tokens=12)) as handle:
        yield handle


@pytest.fixture(scope="module")
def two_apps(
    sim: SimulatorHandle, postgres: PostgresCluster
) -> Iterator[tuple[SubprocessServer, SubprocessServer]]:
    """Two instances of the app sharing one PostgreSQL store."""
    url = _database(postgres, "threads_shared")
    env = {**APP_ENV, "AZURE_OPENAI_ENDPOINT": sim.url, "CHAT_THREADS_STORE": "postgres"}
    a = start_app(**env, CHAT_THREADS_POSTGRES_URL=url)
    try:
        b = start_app(**env, CHAT_THREADS_POSTGRES_URL=url)
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def _contents(request: dict[str, Any]) -> list[Any]:
    return [m.get("content") for m in request["messages"]]


# --- end to end: two app processes, one store --------------------------------------------------------


def test_a_thread_started_on_one_instance_continues_on_another(two_apps, sim):
    a, b = two_apps
    thread = _thread()
    response, first, _, done = sse_events(
        a.url, {"user": "What is 2+3?", "chain": "tools", "thread_id": thread}
    )
    assert response.status_code == 200 and done, a.output
    answer = deltas(first)
    assert answer
    response, second, _, done = sse_events(b.url, {"user": "and 4*4?", "chain": "tools", "thread_id": thread})
    assert response.status_code == 200 and done, b.output
    assert [e["content"] for e in second if e["type"] == "tool_result"] == ["16"]
    sent = _contents(sim.last_request())
    # Turn 2 went to instance B with only the new message; the model still saw turn 1 (from A).
    assert "What is 2+3?" in sent and answer in sent and "and 4*4?" in sent
    assert [m["role"] for m in sim.last_request()["messages"]].count("user") == 2
    # And back on A: the thread holds both turns.
    response, third, _, done = sse_events(a.url, {"user": "thanks", "chain": "tools", "thread_id": thread})
    assert done and deltas(third)
    sent = _contents(sim.last_request())
    assert "What is 2+3?" in sent and "and 4*4?" in sent and deltas(second) in sent


def test_another_thread_id_starts_afresh_on_the_shared_store(two_apps, sim):
    a, b = two_apps
    thread = _thread()
    sse_events(a.url, {"user": "remember the word walnut", "chain": "tools", "thread_id": thread})
    _, events, _, done = sse_events(b.url, {"user": "which word?", "chain": "tools", "thread_id": _thread()})
    assert done and deltas(events)
    assert "remember the word walnut" not in _contents(sim.last_request())


def test_thread_id_on_a_chain_without_threads_is_still_a_400(two_apps):
    a, _ = two_apps
    response = httpx.post(
        f"{a.url}/api/chat", json={"user": "hi", "chain": "chat", "thread_id": _thread()}, timeout=30
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == "thread_id"


# --- the store down: a clear 503, no hang ----------------------------------------------------------------


@pytest.fixture(scope="module")
def black_hole() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake and then nothing ever answers (a dead server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("where", ["refused", "silent"])
def test_a_store_that_is_down_gives_a_clear_503_and_no_hang(sim, black_hole, where):
    port = free_port() if where == "refused" else black_hole
    secret = "pw-must-never-be-logged"
    app = start_app(
        **APP_ENV,
        AZURE_OPENAI_ENDPOINT=sim.url,
        CHAT_THREADS_STORE="postgres",
        CHAT_THREADS_POSTGRES_URL=f"postgresql://chat:{secret}@{LOOPBACK}:{port}/postgres",
    )
    try:
        for _ in range(2):  # a failed opening is not remembered: the second request tries again
            started = time.monotonic()
            response = httpx.post(
                f"{app.url}/api/chat",
                json={"user": "What is 2+3?", "chain": "tools", "thread_id": _thread()},
                timeout=60,
            )
            assert time.monotonic() - started < 30
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/json")
            error = response.json()["error"]
            assert error == {
                "code": "threads_unavailable",
                "message": "the conversation thread store is unavailable; retry later",
                "retryable": True,
            }
        # Requests without a thread do not touch the store.
        _, events, _, done = sse_events(app.url, {"user": "What is 2+3?", "chain": "tools"})
        assert done and deltas(events)
    finally:
        output = app.stop()
    assert "thread store failure" in output
    assert secret not in output


def test_a_store_that_dies_after_it_was_open_gives_a_503_not_a_hang(sim):
    """Its own cluster: turn 1 is stored, then PostgreSQL stops; turn 2 must fail fast and clearly."""
    clusters = start_cluster()
    cluster = next(clusters)
    app = start_app(
        **APP_ENV,
        AZURE_OPENAI_ENDPOINT=sim.url,
        CHAT_THREADS_STORE="postgres",
        CHAT_THREADS_POSTGRES_URL=cluster.url(),
    )
    try:
        thread = _thread()
        _, events, _, done = sse_events(
            app.url, {"user": "What is 2+3?", "chain": "tools", "thread_id": thread}
        )
        assert done and deltas(events), app.output
        cluster.stop()
        started = time.monotonic()
        response = httpx.post(
            f"{app.url}/api/chat",
            json={"user": "and 4*4?", "chain": "tools", "thread_id": thread},
            timeout=60,
        )
        assert time.monotonic() - started < 30
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "threads_unavailable"
    finally:
        app.stop()
        with contextlib.suppress(StopIteration):
            next(clusters)  # its cleanup: the data directory is removed


def _process_tree(pid: int) -> list[int]:
    """`pid`'s descendants (the cluster's postmaster and its backends run under `runuser`)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_store_that_freezes_after_it_was_open_gives_a_503_within_the_timeout(sim):
    """PostgreSQL stops answering (a frozen server, a partition) with a query in flight: psycopg's own
    cancellation of it waits up to 10 s more for the dead server, but the caller must get the documented
    503 after CHAT_THREADS_TIMEOUT_SECONDS (3 s), before the first-event wait (8 s) commits a 200."""
    clusters = start_cluster()
    cluster = next(clusters)
    app = start_app(
        **APP_ENV,
        AZURE_OPENAI_ENDPOINT=sim.url,
        CHAT_THREADS_STORE="postgres",
        CHAT_THREADS_POSTGRES_URL=cluster.url(),
    )
    frozen: list[int] = []
    try:
        thread = _thread()
        _, events, _, done = sse_events(
            app.url, {"user": "What is 2+3?", "chain": "tools", "thread_id": thread}
        )
        assert done and deltas(events), app.output
        frozen = _process_tree(cluster.process.pid)
        assert frozen
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        for _ in range(2):  # the second meets whatever the first left behind
            response = httpx.post(
                f"{app.url}/api/chat",
                json={"user": "and 4*4?", "chain": "tools", "thread_id": thread},
                timeout=60,
            )
            assert response.status_code == 503, response.text[:300]
            assert response.json()["error"]["code"] == "threads_unavailable"
        # runuser stops itself when its child stops: it is continued too.
        for pid in [*frozen, cluster.process.pid]:
            os.kill(pid, signal.SIGCONT)
        frozen = []
        # The server is back: the pool replaces the connection it gave up on.
        _, events, _, done = sse_events(app.url, {"user": "and 4*4?", "chain": "tools", "thread_id": thread})
        assert done and [e["content"] for e in events if e["type"] == "tool_result"] == ["16"], app.output
    finally:
        for pid in [*frozen, cluster.process.pid]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        app.stop()
        with contextlib.suppress(StopIteration):
            next(clusters)


# --- defaults ---------------------------------------------------------------------------------------------


def test_memory_stays_the_default_and_postgres_is_not_imported():
    code = textwrap.dedent(
        """
        import sys
        from chatstream.service import ChatService
        from chatstream.settings import Settings
        from chains.threads import BoundedMemorySaver
        model = {"AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "AZURE_OPENAI_API_KEY": "k"}
        s = ChatService.from_settings(Settings(**model))
        assert type(s.checkpointer) is BoundedMemorySaver, type(s.checkpointer)
        loaded = sorted(m for m in sys.modules if m.startswith(("psycopg", "langgraph.checkpoint.postgres")))
        assert not loaded, loaded
        url = "postgresql://u@127.0.0.1:9/db"
        s = ChatService.from_settings(
            Settings(**model, CHAT_THREADS_STORE="postgres", CHAT_THREADS_POSTGRES_URL=url)
        )
        assert type(s.checkpointer).__name__ == "PostgresThreadSaver"
        assert s.checkpointer.store._pool is None  # nothing connects before the first threaded request
        print("ok")
        """
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_postgres_without_a_url_refuses_threaded_requests_only(sim):
    from chatstream.errors import ChatError
    from chatstream.schema import ChatRequest
    from chatstream.service import ChatService
    from tests.support.inprocess import settings_for

    service = ChatService.from_settings(
        settings_for(AZURE_OPENAI_ENDPOINT=sim.url, AZURE_OPENAI_API_KEY="k", CHAT_THREADS_STORE="postgres")
    )
    with pytest.raises(ChatError) as caught:
        service.run(ChatRequest(user="hi", chain="tools", thread_id=_thread()), "r1")
    assert (caught.value.status, caught.value.code) == (503, "not_configured")
    assert "CHAT_THREADS_POSTGRES_URL" in caught.value.message
    service.run(ChatRequest(user="hi", chain="tools"), "r2")  # no thread: fine


# --- the saver itself: keyless sign-in, pruning ---------------------------------------------------------


class _State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _graph_chain(saver: Any) -> GraphChain:
    model = FakeListChatModel(responses=[f"answer {i}" for i in range(50)])

    async def answer(state: _State) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(_State)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return GraphChain(graph.compile(), checkpointer=saver)


async def _turn(chain: GraphChain, thread: str, question: str) -> None:
    config: Any = {"configurable": {"thread_id": thread}}
    async for _ in chain.astream({"history": [], "question": question}, config):
        pass


def test_keyless_each_new_connection_signs_in_with_a_token(postgres):
    """Stands in for Entra: the role needs a password, the URL has none, the token provider supplies it."""
    token = f"token-{uuid.uuid4()}"
    url = _database(postgres, "threads_keyless")
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")
        conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{token}'")
        conn.execute(f"GRANT ALL ON DATABASE threads_keyless TO {PASSWORD_ROLE}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"GRANT ALL ON SCHEMA public TO {PASSWORD_ROLE}")
    url = url.replace("//chat@", f"//{PASSWORD_ROLE}@")
    calls: list[float] = []

    async def provider() -> str:
        calls.append(time.monotonic())
        return token

    async def wrong() -> str:
        return "expired"

    async def scenario() -> None:
        saver = PostgresThreadSaver(PostgresPool(url, timeout=5, token_provider=provider))
        chain = _graph_chain(saver)
        await _turn(chain, "k-1", "first")
        await _turn(chain, "k-1", "second")
        state = await chain.graph.copy(update={"checkpointer": saver}).aget_state(
            {"configurable": {"thread_id": "k-1"}}
        )
        assert [m.content for m in state.values["messages"]][::2] == ["first", "second"]
        await saver.store.close()
        refused = PostgresThreadSaver(PostgresPool(url, timeout=2, token_provider=wrong))
        with pytest.raises(ThreadStoreUnavailable):
            await _turn(_graph_chain(refused), "k-2", "first")

    asyncio.run(scenario())
    assert calls, "the token provider was never asked"


def test_the_factory_signs_in_with_a_token_only_without_a_password(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    assert isinstance(thread_store("memory", None, timeout=1), BoundedMemorySaver)
    keyless = thread_store("postgres", "postgresql://app@db.example/chat", timeout=1, client_id="cid")
    assert keyless.store._token_provider is not None  # type: ignore[attr-defined]
    with_password = thread_store(
        "postgres", "postgresql://app:pw@db.example/chat", timeout=1, client_id="cid"
    )
    assert with_password.store._token_provider is None  # type: ignore[attr-defined]
    no_identity = thread_store("postgres", "host=db.example user=app dbname=chat", timeout=1)
    assert no_identity.store._token_provider is None  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="CHAT_THREADS_POSTGRES_URL") as caught:
        thread_store("postgres", "postgresql://app:pw-secret@[bad/chat", timeout=1)
    assert "pw-secret" not in str(caught.value)


def test_threads_keep_their_latest_checkpoint_and_idle_ones_are_deleted(postgres):
    url = _database(postgres, "threads_prune")

    def count(sql: str) -> int:
        with psycopg.connect(url) as conn:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row else 0

    async def scenario() -> None:
        store = PostgresPool(url, timeout=5, ttl_days=30)
        saver = PostgresThreadSaver(store)
        chain = _graph_chain(saver)
        for thread in ("p-1", "p-2"):
            for i in range(3):
                await _turn(chain, thread, f"{thread} question {i}")
        assert count("SELECT count(*) FROM checkpoints WHERE thread_id = 'p-1'") > 3
        assert store.touched == {"p-1", "p-2"}
        await store.sweep(saver)
        assert count("SELECT count(*) FROM checkpoints WHERE thread_id = 'p-1'") == 1
        assert count("SELECT count(*) FROM checkpoints WHERE thread_id = 'p-2'") == 1
        # p-1 was last continued long ago: the next sweep deletes it, p-2 stays and still continues.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "UPDATE checkpoints SET checkpoint = jsonb_set(checkpoint, '{ts}', "
                "'\"2000-01-01T00:00:00+00:00\"') WHERE thread_id = 'p-1'"
            )
        await store.sweep(saver)
        assert count("SELECT count(*) FROM checkpoints WHERE thread_id = 'p-1'") == 0
        assert count("SELECT count(*) FROM checkpoint_blobs WHERE thread_id = 'p-1'") == 0
        await _turn(chain, "p-2", "p-2 question 3")
        state = await chain.graph.copy(update={"checkpointer": saver}).aget_state(
            {"configurable": {"thread_id": "p-2"}}
        )
        assert [m.content for m in state.values["messages"]][::2] == [f"p-2 question {i}" for i in range(4)]
        await store.close()

    asyncio.run(scenario())
