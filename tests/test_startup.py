"""Start-up: the garbage collector is paused while the app imports, and never left off."""

from __future__ import annotations

import gc

import pytest

from chatstream.heap import startup_collection_paused


def test_a_failing_start_up_leaves_the_collector_on_and_freezes_nothing():
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    with pytest.raises(ImportError), startup_collection_paused():
        assert not gc.isenabled()
        raise ImportError("a module the app needs is missing")
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


def test_a_successful_start_up_freezes_what_it_built_and_turns_the_collector_back_on():
    try:
        with startup_collection_paused():
            assert not gc.isenabled()
            built = [object() for _ in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(built)
    finally:
        gc.unfreeze()
