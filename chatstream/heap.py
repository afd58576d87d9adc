"""Keeping Python's cyclic garbage collector off the streams' critical path.

Importing LangChain, pydantic, the openai SDK and the Functions worker leaves a few hundred thousand
objects that live as long as the process. Each full (generation 2) collection walks all of them,
stalling the event loop, and so every open stream at once. Frozen objects are skipped by every
collection, so a full collection costs only what requests allocated. Call once, after start-up.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


def freeze_startup_objects() -> int:
    """Exempt every object that exists now from later collections, and (re-)enable the collector.

    No collection first: it would cost cold-start time to free a little start-up garbage.
    Returns how many objects were frozen."""
    gc.freeze()
    gc.enable()
    return gc.get_freeze_count()


@contextlib.contextmanager
def startup_collection_paused() -> Iterator[None]:
    """No collections while the block runs (start-up allocates only long-lived objects); afterwards they
    are frozen. If the block raises, the collector is re-enabled and nothing is frozen, so a failed
    import can never leave the process without garbage collection."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    except BaseException:
        if was_enabled:
            gc.enable()
        raise
    freeze_startup_objects()
