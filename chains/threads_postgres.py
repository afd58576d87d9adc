"""Conversation threads in PostgreSQL, shared by every instance (`CHAT_THREADS_STORE=postgres`).

LangGraph's own `AsyncPostgresSaver` does the storing; this module only decides when its connection pool
exists and what a failure looks like:

- the pool (`psycopg_pool.AsyncConnectionPool`, autocommit, `dict_row`, `prepare_threshold=0` as the
  saver asks) is opened on the first threaded request, inside the running loop, and the tables are
  created then (`setup()`, once, under an advisory lock so two instances starting together do not race);
  a failed opening is not remembered, the next request tries again;
- every store operation is bounded by `timeout` (connecting included) and any driver failure becomes
  `ThreadStoreUnavailable`, which the streaming core answers as `threads_unavailable` (503);
- keyless on Azure: a `token_provider` (an Entra token for Azure Database for PostgreSQL) is the
  password of each new connection, so a rotated token is picked up by the next connection;
- bounded: in the background, at most once per `PRUNE_INTERVAL_SECONDS`, the threads this instance
  continued keep only their latest checkpoint (`aprune(..., "keep_latest")`), and threads nobody
  continued for `ttl_days` are deleted.

The saver serialises its operations per process (its own lock), so the pool needs two connections at most.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.postgres.base import BasePostgresSaver
from psycopg import AsyncCursor, Capabilities
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from chains.errors import ThreadStoreUnavailable

log = logging.getLogger("chains.threads")

#: Entra scope of Azure Database for PostgreSQL (flexible server) tokens.
POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
#: How often an instance prunes (keep the latest checkpoint of the threads it continued, drop idle ones).
PRUNE_INTERVAL_SECONDS = 300.0
#: Threads pruned or deleted per sweep at most (the rest wait for the next sweep).
PRUNE_BATCH = 500
#: Threads remembered for the next sweep at most (more are pruned when continued again).
MAX_TOUCHED = 10_000
#: Any lock id of our own: serialises `setup()` between instances starting at once.
_SETUP_LOCK_ID = 0x63686174  # "chat"
_STORE_ERRORS = (psycopg.Error, OSError, TimeoutError)
#: What a prune meets when a run writes to the same thread meanwhile (retrying later is safe).
_PRUNE_CONFLICTS = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)

_IDLE_THREADS_SQL = """
SELECT thread_id FROM checkpoints WHERE checkpoint_ns = ''
GROUP BY thread_id
HAVING max((checkpoint ->> 'ts')::timestamptz) < now() - make_interval(secs => %s)
LIMIT %s
"""

TokenProvider = Callable[[], Awaitable[str]]
T = TypeVar("T")
#: Operations given up on at their timeout, still ending in the background (referenced until done).
_abandoned: set[asyncio.Task[Any]] = set()


def _abandon(task: asyncio.Task[Any]) -> None:
    """Cancel `task` without waiting for it: a second cancellation while psycopg cancels the query on a
    dead server makes it close the connection at once instead of waiting (up to 10 s) for that server."""
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_abandoned.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


def azure_token_provider(client_id: str | None) -> TokenProvider:
    """Tokens of the app's managed identity (or the developer's sign-in), cached by the credential.

    The credential is built on the first call, inside the running loop (azure.identity.aio)."""
    provider: TokenProvider | None = None

    async def token() -> str:
        nonlocal provider
        if provider is None:
            from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

            credential = DefaultAzureCredential(managed_identity_client_id=client_id)
            provider = get_bearer_token_provider(credential, POSTGRES_SCOPE)
        return await provider()

    return token


def has_password(conninfo: str) -> bool:
    """Whether the URL/conninfo carries a password (else libpq would look in PGPASSWORD or ~/.pgpass)."""
    return bool(psycopg.conninfo.conninfo_to_dict(conninfo).get("password"))


class PostgresPool:
    """One pool per process, shared by the saver and its clones (LangGraph clones savers per graph)."""

    def __init__(
        self,
        conninfo: str,
        *,
        timeout: float,
        ttl_days: float = 0.0,
        token_provider: TokenProvider | None = None,
    ) -> None:
        self._conninfo = conninfo
        self.timeout = timeout
        self.ttl_days = ttl_days
        self._token_provider = token_provider
        self._pool: AsyncConnectionPool[Any] | None = None
        self._opening = asyncio.Lock()
        #: Threads continued here since the last sweep (only their latest checkpoint is kept).
        self.touched: set[str] = set()
        self._next_sweep = 0.0
        self._sweep: asyncio.Task[None] | None = None

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise RuntimeError("the thread store is not open yet")
        return self._pool

    async def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
        kwargs["connect_timeout"] = max(1, round(self.timeout))
        if self._token_provider is not None:
            kwargs["password"] = await self._token_provider()
        return kwargs

    async def open(self) -> AsyncConnectionPool[Any]:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                    self._conninfo,
                    kwargs=self._kwargs,
                    min_size=1,
                    max_size=2,
                    open=False,
                    timeout=self.timeout,
                    check=AsyncConnectionPool.check_connection,
                    name="chat-threads",
                )
                try:
                    await pool.open(wait=True, timeout=self.timeout)
                    async with pool.connection() as conn:
                        await conn.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK_ID,))
                        try:
                            await AsyncPostgresSaver(conn).setup()
                        finally:
                            await conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK_ID,))
                except BaseException:
                    await pool.close(timeout=1.0)
                    raise
                log.info("thread store open (PostgreSQL, tables ready)")
                self._next_sweep = time.monotonic() + PRUNE_INTERVAL_SECONDS
                self._pool = pool
        return self._pool

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        if self._pool is not None:
            await self._pool.close(timeout=2.0)
            self._pool = None

    def maybe_sweep(self, saver: AsyncPostgresSaver) -> None:
        """Start a background prune when one is due (never awaited by a request)."""
        now = time.monotonic()
        if now < self._next_sweep or (self._sweep is not None and not self._sweep.done()):
            return
        self._next_sweep = now + PRUNE_INTERVAL_SECONDS
        self._sweep = asyncio.get_running_loop().create_task(self.sweep(saver), name="chat-threads-prune")

    async def sweep(self, saver: AsyncPostgresSaver) -> None:
        """Keep only the latest checkpoint of the threads continued here; delete threads idle too long."""
        touched = sorted(self.touched)[:PRUNE_BATCH]
        self.touched.difference_update(touched)
        try:
            for thread_id in touched:  # one transaction each: a failure leaves the others pruned
                try:
                    await saver.aprune([thread_id], strategy="keep_latest")
                except NotImplementedError:  # a thread with a DeltaChannel: the saver cannot prune it
                    continue
                except ThreadStoreUnavailable as exc:
                    if not isinstance(exc.__cause__, _PRUNE_CONFLICTS):
                        raise
                    self.touched.add(thread_id)  # a run wrote to it meanwhile: next time
            if self.ttl_days > 0:
                async with saver._cursor() as cur:
                    await cur.execute(_IDLE_THREADS_SQL, (self.ttl_days * 86400.0, PRUNE_BATCH))
                    idle = [row["thread_id"] for row in await cur.fetchall()]
                if idle:
                    await saver.aprune(idle, strategy="delete")
                    log.info("thread store: deleted %d threads idle for %g days", len(idle), self.ttl_days)
        except ThreadStoreUnavailable as exc:
            log.warning(
                "thread store prune failed (next try in %.0f s): %s", PRUNE_INTERVAL_SECONDS, exc.__cause__
            )


class PostgresThreadSaver(AsyncPostgresSaver):
    """`AsyncPostgresSaver` whose pool is opened on first use (see the module docstring)."""

    def __init__(self, store: PostgresPool) -> None:
        # Not AsyncPostgresSaver.__init__: it needs the pool and the running loop, neither exists yet.
        BasePostgresSaver.__init__(self)
        self.store = store
        self.pipe = None
        self.lock = asyncio.Lock()
        self.supports_pipeline = Capabilities().has_pipeline()

    @property
    def conn(self) -> AsyncConnectionPool[Any]:  # type: ignore[override]
        """The saver's connection: the pool, once `store.open()` opened it (clones share it)."""
        return self.store.pool

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        try:
            async with asyncio.timeout(self.store.timeout):
                await self.store.open()
                self.loop = asyncio.get_running_loop()
                async with super()._cursor(pipeline=pipeline) as cur:
                    yield cur
        except _STORE_ERRORS as exc:
            raise ThreadStoreUnavailable() from exc

    async def _bounded(self, operation: Coroutine[Any, Any, T]) -> T:
        """`operation` within `timeout`, whatever the server does: the timeout in `_cursor` cancels the
        query, but psycopg then waits (up to 5 s + 5 s) for a server that does not answer to confirm the
        cancellation, which would turn the documented 503 into a 200 and an `error` event."""
        task = asyncio.ensure_future(operation)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.store.timeout)
        except asyncio.CancelledError:
            _abandon(task)
            raise
        if not done:
            _abandon(task)
            raise ThreadStoreUnavailable() from TimeoutError(f"no answer in {self.store.timeout:g} s")
        return task.result()

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._bounded(super().aput(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._bounded(super().aput_writes(config, writes, task_id, task_path))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Also where a turn starts: the thread is remembered for pruning, and a due sweep started."""
        found = await self._bounded(super().aget_tuple(config))
        thread_id = config["configurable"].get("thread_id")
        if thread_id is not None and len(self.store.touched) < MAX_TOUCHED:
            self.store.touched.add(str(thread_id))
            self.store.maybe_sweep(self)
        return found
