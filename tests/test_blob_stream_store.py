"""`BlobStreamStore` against Azurite through the real Azure SDK (real sockets, real blob semantics).

Each test gets its own container; two stores built from the same settings play two app instances (each
has its own SDK client and connections). See tests/support/azurite.py for how Azurite is started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatstream import resumable
from chatstream.blob_stream_store import MAX_BLOCK_BYTES, BlobStreamStore, blob_key, open_stream_store
from chatstream.models import ConfigurationError
from chatstream.settings import Settings
from chatstream.stream_store import StreamControl, StreamNotFound, StreamStoreError, StreamTooLarge
from tests.support.azurite import ACCOUNT_KEY, Azurite, azurite  # noqa: F401  (the fixture)
from tests.support.inprocess import serve
from tests.support.inprocess import settings_for as app_settings

ROOT = Path(__file__).resolve().parents[1]


def event(i: int, text: str = "tok") -> bytes:
    return json.dumps({"type": "delta", "index": i, "text": f"{text}{i}"}, separators=(",", ":")).encode()


def settings_for(server: Azurite, container: str, **extra: Any) -> Settings:
    return Settings(
        CHAT_STREAM_STORE="blob",
        CHAT_STREAM_STORE_CONNECTION_STRING=server.connection_string,
        CHAT_STREAM_STORE_CONTAINER=container,
        **extra,
    )


@pytest.fixture
def container() -> str:
    return f"t-{uuid.uuid4().hex[:20]}"


@pytest.fixture
def run_stores(azurite: Azurite, container: str) -> Iterator[Callable[..., None]]:  # noqa: F811
    """Run `scenario(a, b)` with two stores (two app instances) on one fresh container."""

    def run(scenario: Callable[..., Awaitable[None]], **extra: Any) -> None:
        async def main() -> None:
            a = open_stream_store(settings_for(azurite, container, **extra))
            b = open_stream_store(settings_for(azurite, container, **extra))
            assert isinstance(a, BlobStreamStore) and isinstance(b, BlobStreamStore)
            try:
                await asyncio.wait_for(scenario(a, b), timeout=120)
            finally:
                await a.aclose()
                await b.aclose()

        asyncio.run(main())

    yield run


async def all_blobs(store: BlobStreamStore) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Every blob in the store's container: name -> (content, metadata)."""
    container = store._container
    out = {}
    async for item in container.list_blobs(include=["metadata"]):
        data = await (await container.get_blob_client(item.name).download_blob()).readall()
        out[item.name] = (data, dict(item.metadata or {}))
    return out


def test_create_append_read_with_cursors_across_instances(run_stores: Callable[..., None]) -> None:
    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        await a.create("req1", protocol="native")
        first = await b.read("req1")
        assert first is not None
        assert (first.events, first.finished, first.truncated, first.protocol) == ([], False, False, "native")

        await a.append("req1", [event(0), event(1)])
        got = await b.read("req1", first.cursor)
        assert got is not None and got.events == [event(0), event(1)] and not got.finished
        nothing = await b.read("req1", got.cursor)
        assert nothing is not None and nothing.events == [] and nothing.cursor == got.cursor

        await a.append("req1", [event(2)])
        await a.append("req1", [])
        more = await b.read("req1", got.cursor)
        assert more is not None and more.events == [event(2)]
        everything = await b.read("req1")
        assert everything is not None and everything.events == [event(0), event(1), event(2)]
        assert everything.cursor == more.cursor

    run_stores(scenario)


def test_read_after_finish_sees_every_event_and_finished(run_stores: Callable[..., None]) -> None:
    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        await a.create("req2", protocol="ai-sdk")
        await a.append("req2", [event(i) for i in range(5)])
        partial = await b.read("req2")
        assert partial is not None and not partial.finished
        await a.append("req2", [event(5)])
        await a.finish("req2")
        rest = await b.read("req2", partial.cursor)
        assert rest is not None
        assert rest.events == [event(5)] and rest.finished and not rest.truncated
        assert rest.protocol == "ai-sdk"
        again = await b.read("req2", rest.cursor)
        assert again is not None and again.events == [] and again.finished
        assert await b.request_stop("req2") is False, "a finished stream cannot be stopped"

    run_stores(scenario)


def test_byte_limit_truncates_and_keeps_what_fit(run_stores: Callable[..., None]) -> None:
    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        await a.create("big", protocol="native")
        small = [event(i, "x" * 100) for i in range(5)]
        await a.append("big", small)
        with pytest.raises(StreamTooLarge):
            await a.append("big", [event(99, "y" * 2000)])
        await a.finish("big", truncated=True)
        got = await b.read("big")
        assert got is not None
        assert got.events == small and got.finished and got.truncated

    run_stores(scenario, CHAT_RESUME_MAX_BYTES=1024)


def test_batches_over_one_append_block_are_split_and_read_back_whole(run_stores: Callable[..., None]) -> None:
    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        await a.create("huge", protocol="native")
        events = [event(i, "z" * 100_000) for i in range(60)]  # ~6 MB: two append blocks, one read
        assert sum(len(e) + 1 for e in events) > MAX_BLOCK_BYTES
        await a.append("huge", events)
        await a.finish("huge")
        got = await b.read("huge")
        assert got is not None and got.events == events and got.finished

    run_stores(scenario, CHAT_RESUME_MAX_BYTES=16 * 1024 * 1024)


def test_alias_resolves_to_the_newest_stream_on_another_instance(run_stores: Callable[..., None]) -> None:
    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        assert await b.resolve("chat-1") is None
        await a.create("turn1", protocol="ai-sdk", alias="chat-1")
        assert await b.resolve("chat-1") == "turn1"
        await a.create("turn2", protocol="ai-sdk", alias="chat-1")
        assert await b.resolve("chat-1") == "turn2"
        odd = "chat/../with spaces/é?#%"
        await a.create("turn3", protocol="ai-sdk", alias=odd)
        assert await b.resolve(odd) == "turn3"
        assert await b.resolve("chat") is None

    run_stores(scenario)


def test_stop_requested_on_another_instance_is_seen_by_control(run_stores: Callable[..., None]) -> None:
    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        await a.create("run", protocol="native")
        assert await a.control("run") == StreamControl(stop_requested=False, reader_seen_at=None)
        assert await b.request_stop("run") is True
        assert (await a.control("run")).stop_requested is True
        assert await b.request_stop("nope") is False
        assert await a.control("nope") == StreamControl(stop_requested=False, reader_seen_at=None)

    run_stores(scenario)


def test_reader_heartbeat_from_another_instance(run_stores: Callable[..., None]) -> None:
    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        await a.create("watched", protocol="native")
        before = time.time()
        await b.touch_reader("watched")
        first = (await a.control("watched")).reader_seen_at
        assert first is not None and before - 1 <= first <= time.time() + 1
        await asyncio.sleep(0.05)
        await b.touch_reader("watched")
        second = (await a.control("watched")).reader_seen_at
        assert second is not None and second > first
        assert (await a.control("watched")).stop_requested is False

    run_stores(scenario)


def test_the_producers_beat_changes_what_a_reader_elsewhere_sees_without_an_event(
    run_stores: Callable[..., None],
) -> None:
    """Liveness without comparing clocks: every write of the producer (an append, or a beat when it has
    nothing to append) changes `beat`; reads alone do not. A beat keeps the metadata and adds no event."""

    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        await a.create("alive", protocol="ai-sdk")
        await a.append("alive", [event(0)])
        first = await b.read("alive")
        assert first is not None and first.beat
        again = await b.read("alive", first.cursor)
        assert again is not None and again.beat == first.beat, "a read is not a beat"
        await a.beat("alive")
        beaten = await b.read("alive", first.cursor)
        assert beaten is not None and beaten.beat != first.beat
        assert beaten.events == [] and beaten.cursor == first.cursor and beaten.protocol == "ai-sdk"
        fresh = BlobStreamStore(a._container, ttl_seconds=600, max_bytes=1 << 20)  # remembers no metadata
        await fresh.beat("alive")
        twice = await b.read("alive", first.cursor)
        assert twice is not None and twice.beat not in (first.beat, beaten.beat)
        await a.append("alive", [event(1)])
        appended = await b.read("alive", first.cursor)
        assert appended is not None and appended.events == [event(1)] and appended.beat != twice.beat
        await a.finish("alive")
        whole = await b.read("alive")
        assert whole is not None and whole.events == [event(0), event(1)] and whole.finished
        assert whole.protocol == "ai-sdk"
        assert (await b.control("alive")).producer_lost is False
        await b.report_lost("alive")
        assert (await a.control("alive")).producer_lost is True

    run_stores(scenario)


def test_ttl_expiry_makes_the_stream_unknown_and_deletes_it(run_stores: Callable[..., None]) -> None:
    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        await a.create("brief", protocol="native", alias="brief-chat")
        await a.append("brief", [event(0)])
        await b.touch_reader("brief")
        got = await b.read("brief")
        assert got is not None and got.events == [event(0)]
        assert await b.resolve("brief-chat") == "brief"
        await asyncio.sleep(1.6)  # TTL is 1.5 s from create
        assert await b.read("brief") is None
        assert await b.read("brief", got.cursor) is None
        assert await b.resolve("brief-chat") is None
        assert await b.request_stop("brief") is False
        assert await a.control("brief") == StreamControl(stop_requested=False, reader_seen_at=None)
        assert await all_blobs(a) == {}, "expired blobs are deleted by whoever saw them expired"

    run_stores(scenario, CHAT_RESUME_TTL_SECONDS=1.5)


def test_unknown_stream(run_stores: Callable[..., None]) -> None:
    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        assert await b.read("ghost") is None  # the container does not exist yet
        await a.create("real", protocol="native")
        assert await b.read("ghost") is None
        assert await b.read("ghost", 57) is None
        with pytest.raises(StreamNotFound):
            await b.append("ghost", [event(0)])
        with pytest.raises(StreamNotFound):
            await b.finish("ghost")
        with pytest.raises(ValueError):
            await b.read("real", -1)
        got = await b.read("real")
        assert got is not None
        with pytest.raises(ValueError):
            await b.read("real", got.cursor + 5)

    run_stores(scenario)


def test_only_event_json_is_stored(run_stores: Callable[..., None]) -> None:
    """The store keeps the events it was given, the protocol and times; nothing else (no request)."""

    async def scenario(a: BlobStreamStore, b: BlobStreamStore) -> None:
        events = [event(0), event(1, "answer")]
        await a.create("req/odd id", protocol="ai-sdk", alias="chat-9")
        await a.append("req/odd id", events)
        await b.request_stop("req/odd id")
        await b.touch_reader("req/odd id")
        await a.finish("req/odd id")
        blobs = await all_blobs(a)
        key = blob_key("req/odd id")
        assert key.startswith("~") and "/" not in key
        assert set(blobs) == {
            f"streams/{key}/events",
            f"streams/{key}/stop",
            f"streams/{key}/reader",
            f"aliases/{blob_key('chat-9')}",
        }
        data, meta = blobs[f"streams/{key}/events"]
        assert data == b"\n" + b"".join(e + b"\n" for e in events)
        for line in data.split(b"\n")[1:-1]:
            assert isinstance(json.loads(line), dict)
        assert set(meta) <= {"protocol", "created", "layout", "finished", "truncated"}
        assert blobs[f"aliases/{blob_key('chat-9')}"][0] == b"req/odd id"
        assert blobs[f"streams/{key}/stop"][0] == b"" and set(blobs[f"streams/{key}/stop"][1]) == {"at"}
        assert blobs[f"streams/{key}/reader"][0] == b"" and set(blobs[f"streams/{key}/reader"][1]) == {"seen"}
        for _, (_, metadata) in blobs.items():
            for value in metadata.values():
                assert value in {"ai-sdk", "1", "0"} or float(value) > 0

    run_stores(scenario)


# -- configuration and failures -----------------------------------------------------------------


def test_factory_memory_is_none_and_blob_needs_a_location() -> None:
    assert open_stream_store(Settings(CHAT_STREAM_STORE="memory")) is None
    with pytest.raises(ConfigurationError, match="CHAT_STREAM_STORE_URL"):
        open_stream_store(Settings(CHAT_STREAM_STORE="blob"))
    secret = "AccountKey=not-a-real-key-but-secret-looking"
    with pytest.raises(ConfigurationError, match="CHAT_STREAM_STORE_CONNECTION_STRING") as raised:
        open_stream_store(Settings(CHAT_STREAM_STORE="blob", CHAT_STREAM_STORE_CONNECTION_STRING=secret))
    assert "secret-looking" not in str(raised.value)
    with pytest.raises(ConfigurationError, match="CHAT_STREAM_STORE_URL"):
        open_stream_store(Settings(CHAT_STREAM_STORE="blob", CHAT_STREAM_STORE_URL="blob.example"))
    with pytest.raises(ConfigurationError, match="CHAT_STREAM_STORE_CONTAINER"):
        open_stream_store(
            Settings(
                CHAT_STREAM_STORE="blob",
                CHAT_STREAM_STORE_URL="https://acct.blob.core.windows.net",
                CHAT_STREAM_STORE_CONTAINER="Bad_Name",
            )
        )


def test_factory_keyless_url_uses_the_managed_identity() -> None:
    async def main() -> None:
        store = open_stream_store(
            Settings(
                CHAT_STREAM_STORE="blob",
                CHAT_STREAM_STORE_URL="https://acct.blob.core.windows.net/",
                AZURE_CLIENT_ID="00000000-0000-0000-0000-000000000001",
            )
        )
        assert isinstance(store, BlobStreamStore)
        from azure.identity.aio import DefaultAzureCredential

        assert isinstance(store._credential, DefaultAzureCredential)
        assert store._container.container_name == "chat-streams"
        assert store._container.url.startswith("https://acct.blob.core.windows.net/chat-streams")
        await store.aclose()

    asyncio.run(main())


def test_unreachable_store_raises_stream_store_error_without_the_key(
    unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{unused_port}/devstoreaccount1;"
        )
        store = open_stream_store(
            Settings(CHAT_STREAM_STORE="blob", CHAT_STREAM_STORE_CONNECTION_STRING=conn)
        )
        assert store is not None
        try:
            for call in (
                store.create("x", protocol="native"),
                store.read("x"),
                store.resolve("x"),
                store.control("x"),
                store.touch_reader("x"),
            ):
                with pytest.raises(StreamStoreError) as raised:
                    await asyncio.wait_for(call, timeout=60)
                assert ACCOUNT_KEY not in str(raised.value) and str(unused_port) not in str(raised.value)
        finally:
            await store.aclose()

    asyncio.run(main())
    assert "stream store create failed" in caplog.text
    assert ACCOUNT_KEY not in caplog.text and "AccountKey" not in caplog.text


def test_choosing_the_store_imports_no_azure_sdk_until_blob_is_configured() -> None:
    """Cold start: an app on the in-memory store never loads azure.storage or azure.identity."""
    code = (
        "import sys\n"
        "from chatstream.blob_stream_store import open_stream_store\n"
        "from chatstream.settings import Settings\n"
        "assert open_stream_store(Settings(CHAT_STREAM_STORE='memory')) is None\n"
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('azure.')}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip()
    assert "storage" not in loaded and "identity" not in loaded and "core" not in loaded, loaded


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ResponseDroppingProxy:
    """A loopback TCP proxy to Azurite that lets chosen append requests land, then cuts the connection
    instead of passing the response on: the SDK sees a network failure and retries an append that was
    in fact written (what a timeout or a reset after the request does in production)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drops_left = 0
        self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ResponseDroppingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        drop = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if b"comp=appendblock" in data and self.drops_left > 0:
                    self.drops_left -= 1
                    drop.set()
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if drop.is_set():  # the append landed; its answer never reaches the client
                    self.dropped += 1
                    client_w.transport.abort()
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            server_w.close()
            client_w.close()


def test_an_append_retried_after_a_lost_response_is_stored_once(azurite: Azurite, container: str) -> None:  # noqa: F811
    async def main() -> None:
        async with ResponseDroppingProxy(azurite.port) as proxy:
            via_proxy = settings_for(azurite, container).model_copy(
                update={
                    "stream_store_connection_string": azurite.connection_string.replace(
                        f":{azurite.port}/", f":{proxy.port}/"
                    )
                }
            )
            producer = open_stream_store(via_proxy)
            reader = open_stream_store(settings_for(azurite, container))
            assert isinstance(producer, BlobStreamStore) and isinstance(reader, BlobStreamStore)
            try:
                await producer.create("flaky", protocol="native")
                proxy.drops_left = 1
                await asyncio.wait_for(producer.append("flaky", [event(0), event(1)]), timeout=60)
                assert proxy.dropped == 1, "the proxy must have cut one append's response"
                await producer.append("flaky", [event(2)])
                await producer.finish("flaky")
                got = await reader.read("flaky")
                assert got is not None and got.finished
                assert got.events == [event(0), event(1), event(2)], "a retried append was written twice"
            finally:
                await producer.aclose()
                await reader.aclose()

    asyncio.run(main())


def test_a_store_that_never_answers_gives_resume_and_stop_a_503_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store behind a black hole (connections accepted by the kernel, never answered): the SDK's own
    retries would hold a resume or a stop for about 30 s per call, and a lookup by AI SDK chat id makes
    up to three. The lookups together are bounded (shortened here), then answered 503."""
    monkeypatch.setattr(resumable, "STORE_LOOKUP_SECONDS", 1.0)
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:  # listens, never accepts
        port = silent.getsockname()[1]
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
        settings = app_settings(
            AZURE_OPENAI_ENDPOINT="http://127.0.0.1:9",
            CHAT_STREAM_STORE="blob",
            CHAT_STREAM_STORE_CONNECTION_STRING=conn,
        )
        with serve(settings) as app, httpx.Client(timeout=20) as client:
            resume = client.get(f"{app.url}/api/chat/someone-elses-chat/stream")
            stop = client.post(f"{app.url}/api/chat/someone-elses-chat/stop")
    for response in (resume, stop):
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "stream_store_unavailable"
        assert ACCOUNT_KEY not in response.text and str(port) not in response.text
