"""Shared fixtures. `simulator`: a real-socket simulated Azure OpenAI deployment on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aoai_simulator import SimulatorConfig, SimulatorHandle, start_in_thread
from funchost.testing import SubprocessServer, start_subprocess
from tests.support.hostile import HostileUpstream


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


# --- The app under test: `python -m funchost` serving function_app.py over a real socket. ---

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Recorded Azure OpenAI / OpenAI transcripts (data, with their source notes), part of the repository.
SHARED_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "openai-streams"

#: Settings that would point the app somewhere else; the tests always choose for themselves.
_MODEL_SETTINGS = (
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_DEPLOYMENT",
    "AZURE_CLIENT_ID",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_MODEL",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
)


def app_env(**overrides: str) -> dict[str, str]:
    """A clean environment for the app process: no model settings inherited from the developer."""
    env = {k: v for k, v in os.environ.items() if k not in _MODEL_SETTINGS and not k.startswith("CHAT_")}
    # One delta per upstream chunk by default, so tests can count them against usage; the tests of
    # coalescing (fixture replay, cancellation, the lean path) turn it back on.
    env.update({"CHAT_LOG_LEVEL": "INFO", "CHAT_COALESCE_DELTAS": "false", **overrides})
    return env


def start_app(**env: str) -> SubprocessServer:
    return start_subprocess(REPO_ROOT, app_env(**env), extra_args=["--no-local-settings"])


@pytest.fixture(scope="session")
def paced_simulator() -> Iterator[SimulatorHandle]:
    """A simulator with small but visible delays, so streams are observably spread over time; a prompt's
    `[sim:token-delay=MS]` slows one answer down where a test times its spread."""
    handle = start_in_thread(
        SimulatorConfig(ttft_ms=20, token_delay_ms=5, hold_seconds=10, prompt_faults=True)
    )
    yield handle
    handle.stop()


#: Deployments the shared app allows besides gpt-4o-mini (the simulator fails `fault-<spec>` ones).
EXTRA_DEPLOYMENTS = (
    "gpt-4o",
    "fault-drop-after=3",
    "fault-400",
    "fault-stall-after=4",
    "fault-stall-after=6",
)


@pytest.fixture(scope="session")
def _app(paced_simulator: SimulatorHandle) -> Iterator[SubprocessServer]:
    server = start_app(
        AZURE_OPENAI_ENDPOINT=paced_simulator.url,
        AZURE_OPENAI_API_KEY="test-key",
        AZURE_OPENAI_DEPLOYMENT="gpt-4o-mini",
        CHAT_DEPLOYMENTS=",".join(EXTRA_DEPLOYMENTS),
    )
    yield server
    server.stop()


def fresh(
    server: SubprocessServer, simulator: SimulatorHandle, idle_timeout: float = 5.0
) -> SubprocessServer:
    """A session-scoped app, checked alive, with its simulator idle and its stats reset for one test."""
    if server.process.poll() is not None:
        pytest.fail(f"the app process died:\n{server.output}")
    simulator.wait_idle(idle_timeout)
    simulator.reset()
    return server


@pytest.fixture
def app(_app: SubprocessServer, paced_simulator: SimulatorHandle) -> SubprocessServer:
    """The app on the paced simulator; simulator stats are fresh for each test."""
    return fresh(_app, paced_simulator)


# --- Long, slow answers: enough time to press Stop or Ctrl-C in the middle (chat page, CLI). ---

#: 150 tokens 40 ms apart: a 6 s answer, so anything that stops it early is plain to see.
SLOW_ANSWER_TOKENS = 150


@pytest.fixture(scope="session")
def slow_simulator() -> Iterator[SimulatorHandle]:
    handle = start_in_thread(
        SimulatorConfig(ttft_ms=50, token_delay_ms=40, answer_tokens=SLOW_ANSWER_TOKENS, hold_seconds=10)
    )
    yield handle
    handle.stop()


def _slow_app_env(simulator: SimulatorHandle, deployment: str) -> dict[str, str]:
    return {
        "AZURE_OPENAI_ENDPOINT": simulator.url,
        "AZURE_OPENAI_API_KEY": "test-key",
        "AZURE_OPENAI_DEPLOYMENT": deployment,
        "CHAT_UPSTREAM_MAX_RETRIES": "0",
    }


@pytest.fixture(scope="session")
def _slow_app(slow_simulator: SimulatorHandle) -> Iterator[SubprocessServer]:
    server = start_app(**_slow_app_env(slow_simulator, "gpt-4o-mini"))
    yield server
    server.stop()


@pytest.fixture
def slow_app(_slow_app: SubprocessServer, slow_simulator: SimulatorHandle) -> SubprocessServer:
    """The app on the slow simulator (6 s answers); simulator stats are fresh for each test."""
    return fresh(_slow_app, slow_simulator)


@pytest.fixture(scope="session")
def faulty_app(slow_simulator: SimulatorHandle) -> Iterator[SubprocessServer]:
    """The app on a deployment whose stream breaks after 5 chunks (an upstream failure mid-answer)."""
    server = start_app(**_slow_app_env(slow_simulator, "fault-drop-after=5"))
    yield server
    server.stop()


# --- Resilience: an app whose simulator takes per-request faults from the prompt (`[sim:SPEC]`). ---

#: Tight timings so every fault class resolves in about a second: a 1 s read timeout (stalls),
#: a 6 s first-event wait (so three attempts still end in a real HTTP status).
FAULT_APP_ENV = {
    "AZURE_OPENAI_API_KEY": "test-key-not-secret",
    "AZURE_OPENAI_DEPLOYMENT": "gpt-4o-mini",
    "CHAT_UPSTREAM_READ_TIMEOUT_SECONDS": "1",
    "CHAT_FIRST_EVENT_WAIT_SECONDS": "6",
    "CHAT_UPSTREAM_MAX_RETRIES": "2",
    "CHAT_CORS_ORIGINS": "https://chat.example.com, http://localhost:5173",
    "CHAT_DIAGNOSTICS": "true",
}


@pytest.fixture(scope="session")
def fault_simulator() -> Iterator[SimulatorHandle]:
    handle = start_in_thread(
        SimulatorConfig(ttft_ms=0, token_delay_ms=0, hold_seconds=10, prompt_faults=True)
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def _fault_app(fault_simulator: SimulatorHandle) -> Iterator[SubprocessServer]:
    server = start_app(AZURE_OPENAI_ENDPOINT=fault_simulator.url, **FAULT_APP_ENV)
    yield server
    server.stop()


@pytest.fixture
def fault_app(_fault_app: SubprocessServer, fault_simulator: SimulatorHandle) -> SubprocessServer:
    return fresh(_fault_app, fault_simulator, idle_timeout=10)


# --- A hostile model server (tests/support/hostile.py): scripts chosen by `[hostile:NAME]` in the prompt. ---

#: Tight timings so every hostile script resolves in about a second; no retries, so one script run is
#: one upstream request.
HOSTILE_APP_ENV = {
    "AZURE_OPENAI_API_KEY": "test-key-not-secret",
    "AZURE_OPENAI_DEPLOYMENT": "gpt-4o-mini",
    "CHAT_UPSTREAM_READ_TIMEOUT_SECONDS": "2",
    "CHAT_FIRST_EVENT_WAIT_SECONDS": "3",
    "CHAT_UPSTREAM_MAX_RETRIES": "0",
}


@pytest.fixture(scope="session")
def _hostile_server() -> Iterator[HostileUpstream]:
    server = HostileUpstream()
    yield server
    server.stop()


@pytest.fixture
def hostile(_hostile_server: HostileUpstream) -> HostileUpstream:
    """The hostile upstream with its request log cleared (scripts stay registered)."""
    _hostile_server.reset()
    return _hostile_server


@pytest.fixture(scope="session")
def _hostile_app(_hostile_server: HostileUpstream) -> Iterator[SubprocessServer]:
    server = start_app(AZURE_OPENAI_ENDPOINT=_hostile_server.url, **HOSTILE_APP_ENV)
    yield server
    server.stop()


@pytest.fixture
def hostile_app(_hostile_app: SubprocessServer, hostile: HostileUpstream) -> SubprocessServer:
    """The app (one delta per chunk) pointed at the hostile upstream."""
    if _hostile_app.process.poll() is not None:
        pytest.fail(f"the app process died:\n{_hostile_app.output}")
    return _hostile_app
