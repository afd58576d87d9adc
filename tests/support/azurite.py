"""Azurite's blob service on loopback for the shared stream store tests (`azurite` fixture).

Azurite comes from tests/clients/node_modules (`npm ci` in tests/clients). It listens on 127.0.0.1 at a
port the OS picks (read back from its start-up line), keeps everything in memory, sends no telemetry and
accepts whatever API version the installed SDK speaks. Without node or Azurite the tests skip, except
under CI=true where they fail.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
AZURITE_BLOB = CLIENTS / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"

#: Azurite's well-known development account (public documentation, not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_LISTENING = re.compile(r"listens on (http://127\.0\.0\.1:(\d+))")


@dataclass
class Azurite:
    """A running Azurite blob service."""

    process: subprocess.Popen[str]
    port: int
    output: list[str] = field(default_factory=list)

    @property
    def blob_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_url};"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def unavailable() -> str | None:
    """Why Azurite cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not AZURITE_BLOB.is_file():
        return "Azurite is missing from tests/clients/node_modules (run npm ci in tests/clients)"
    return None


def start_azurite(timeout: float = 60.0) -> Azurite:
    """Start Azurite's blob service and wait (at most `timeout` seconds) until it listens."""
    node = shutil.which("node")
    assert node is not None
    process = subprocess.Popen(
        [
            node,
            str(AZURITE_BLOB),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--inMemoryPersistence",
            "--extentMemoryLimit",
            "256",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
        ],
        cwd=CLIENTS,
        env={**{k: v for k, v in os.environ.items() if k != "AZURITE_ACCOUNTS"}, "NODE_NO_WARNINGS": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="azurite-output", daemon=True).start()
    output: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        output.append(line)
        if match := _LISTENING.search(line):
            return Azurite(process, int(match.group(2)), output)
    process.kill()
    process.wait(timeout=10)
    raise RuntimeError("Azurite did not start:\n" + "".join(output)[-3000:])


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    """Azurite for one test module; skipped (failed under CI=true) when it is not installed."""
    reason = unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the blob store tests must run in CI: {reason}")
        pytest.skip(reason)
    server = start_azurite()
    yield server
    server.stop()
