"""Shared fixtures. `simulator`: a real-socket simulated Azure OpenAI deployment on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aoai_simulator import SimulatorConfig, SimulatorHandle, start_in_thread


@pytest.fixture(scope="session")
def _simulator_server() -> Iterator[SimulatorHandle]:
    # Zero delays by default: tests that need timing ask for it per request (x-sim-* headers).
    handle = start_in_thread(SimulatorConfig(ttft_ms=0, token_delay_ms=0, hold_seconds=10))
    yield handle
    handle.stop()


@pytest.fixture
def simulator(_simulator_server: SimulatorHandle) -> SimulatorHandle:
    """The shared simulator with fresh stats and fault counters."""
    _simulator_server.reset()
    return _simulator_server
