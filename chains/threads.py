"""Conversation threads kept in this process's memory, bounded: the default checkpointer for graph chains.

LangGraph's `InMemorySaver` keeps every checkpoint of every thread, each holding the whole message list,
so a long conversation costs memory quadratic in its length and the number of threads has no limit.
This one keeps only each thread's latest checkpoint (and the channel values it references) and at
most `max_threads` threads, forgetting the least recently used first. Memory is per instance: with
several instances (scale-out, restarts) a thread continues only where it started; the shared store,
`CHAT_THREADS_STORE=postgres` (chains/threads_postgres.py, built by `thread_store`), lifts that.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.memory import InMemorySaver

#: Threads kept per instance before the least recently used is forgotten.
MAX_THREADS = 1000


class BoundedMemorySaver(InMemorySaver):
    def __init__(self, max_threads: int = MAX_THREADS) -> None:
        super().__init__()
        self.max_threads = max_threads
        #: Thread ids, least recently used first.
        self._recent: OrderedDict[str, None] = OrderedDict()
        #: (thread, namespace) -> (latest checkpoint id, its channel versions).
        self._latest: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id = config["configurable"]["thread_id"]
        if thread_id in self._recent:
            self._recent.move_to_end(thread_id)
        return super().get_tuple(config)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        saved = super().put(config, checkpoint, metadata, new_versions)
        thread_id = config["configurable"]["thread_id"]
        namespace = config["configurable"].get("checkpoint_ns", "")
        versions = dict(checkpoint["channel_versions"])
        previous = self._latest.get((thread_id, namespace))
        self._latest[(thread_id, namespace)] = (checkpoint["id"], versions)
        if previous is not None and previous[0] != checkpoint["id"]:
            self._forget(thread_id, namespace, previous[0], previous[1], versions)
        self._recent[thread_id] = None
        self._recent.move_to_end(thread_id)
        while len(self._recent) > self.max_threads:
            oldest, _ = self._recent.popitem(last=False)
            self.delete_thread(oldest)
        return saved

    def _forget(
        self, thread_id: str, namespace: str, old_id: str, old: dict[str, Any], new: dict[str, Any]
    ) -> None:
        """The superseded checkpoint, its pending writes, and the values only it referenced."""
        self.storage[thread_id][namespace].pop(old_id, None)
        self.writes.pop((thread_id, namespace, old_id), None)
        for channel, version in old.items():
            if new.get(channel) != version:
                self.blobs.pop((thread_id, namespace, channel, version), None)

    def delete_thread(self, thread_id: str) -> None:
        super().delete_thread(thread_id)
        self._recent.pop(thread_id, None)
        for key in [k for k in self._latest if k[0] == thread_id]:
            del self._latest[key]


def thread_store(
    kind: str,
    url: str | None,
    *,
    timeout: float,
    ttl_days: float = 0.0,
    client_id: str | None = None,
) -> BaseCheckpointSaver:
    """The checkpointer `CHAT_THREADS_STORE` names. `postgres` is imported only when chosen (cold start)
    and connects on the first threaded request; raises `ValueError` (without the URL) when it cannot be
    built from the settings.

    Keyless: a URL without a password (and no PGPASSWORD) on an app with an identity (`client_id`,
    AZURE_CLIENT_ID) signs in with an Entra token for Azure Database for PostgreSQL instead."""
    if kind == "memory":
        return BoundedMemorySaver()
    if kind != "postgres":
        raise ValueError(f"CHAT_THREADS_STORE: unknown store {kind!r} (memory, postgres)")
    if not url:
        raise ValueError("CHAT_THREADS_POSTGRES_URL is not set")
    from chains.threads_postgres import (
        PostgresPool,
        PostgresThreadSaver,
        azure_token_provider,
        has_password,
    )

    try:
        keyless = not has_password(url) and not os.environ.get("PGPASSWORD") and bool(client_id)
    except Exception:  # psycopg's message may quote the URL: never repeat it
        raise ValueError("CHAT_THREADS_POSTGRES_URL is not a valid PostgreSQL URL or conninfo") from None
    provider = azure_token_provider(client_id) if keyless else None
    pool = PostgresPool(url, timeout=timeout, ttl_days=ttl_days, token_provider=provider)
    return PostgresThreadSaver(pool)
