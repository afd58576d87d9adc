"""The real JavaScript client libraries against the running app: each `tests/clients/*.test.mjs` is a
`node --test` file, run here against one app process (real sockets, real SSE bytes).

The libraries come from `tests/clients/package-lock.json` (`make test` runs `npm ci` when it changed).
Without node or the installed packages these tests skip, except under CI=true where they must run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aoai_simulator import SimulatorHandle
from funchost.testing import SubprocessServer
from tests.conftest import start_app

CLIENTS = Path(__file__).parent / "clients"
SPECS = sorted(CLIENTS.glob("*.test.mjs"))

#: The app every client test talks to: prompt-driven faults, the example chains, quick heartbeats.
CLIENT_APP_ENV = {
    "AZURE_OPENAI_API_KEY": "test-key-not-secret",
    "AZURE_OPENAI_DEPLOYMENT": "gpt-4o-mini",
    "CHAT_DEPLOYMENTS": "gpt-4o",
    "CHAT_UPSTREAM_MAX_RETRIES": "0",
    "CHAT_FIRST_EVENT_WAIT_SECONDS": "0.3",
    "CHAT_HEARTBEAT_SECONDS": "0.2",
    "CHAT_CORS_ORIGINS": "http://localhost:3000",
}


def _unavailable() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (CLIENTS / "node_modules").is_dir():
        return "tests/clients/node_modules is missing (make test runs npm ci)"
    return None


@pytest.fixture(scope="module")
def client_app(fault_simulator: SimulatorHandle) -> Iterator[SubprocessServer]:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the client library tests must run in CI: {reason}")
        pytest.skip(reason)
    server = start_app(AZURE_OPENAI_ENDPOINT=fault_simulator.url, **CLIENT_APP_ENV)
    yield server
    server.stop()


@pytest.mark.parametrize("spec", SPECS, ids=[p.name.removesuffix(".test.mjs") for p in SPECS])
def test_client_library(spec: Path, client_app: SubprocessServer) -> None:
    env = {**os.environ, "APP_URL": client_app.url, "NODE_NO_WARNINGS": "1"}
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", str(spec)],
        cwd=CLIENTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = f"{result.stdout}\n{result.stderr}\napp log tail:\n{client_app.output[-3000:]}"
    assert result.returncode == 0, f"{spec.name} failed:\n{report}"
