"""Keeping Python's cyclic garbage collector off the streams' critical path.

Importing LangChain, pydantic, the openai SDK and the Functions worker leaves a few hundred thousand
objects that live as long as the process. Each full (generation 2) collection walks all of them,
stalling the event loop, and so every open stream at once. Frozen objects are skipped by every
collection, so a full collection costs only what requests allocated. Call once, after start-up.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect what start-up left behind, then exempt the survivors; returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
