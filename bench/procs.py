"""Child processes of the benchmark: start pinned to a core, read their CPU time and memory from /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads, live and exited)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU time all processes on the machine used (every core), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def maps_file(pid: int, fragment: str) -> bool:
    """Whether the process has a file whose path contains `fragment` mapped (e.g. uvloop's extension)."""
    return fragment in Path(f"/proc/{pid}/maps").read_text()


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


class Child:
    """A `python -m module ...` child, pinned to `cpus`, its output kept in a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cpus: set[int] | None, log: Path
    ) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("wb")
        self.started_at = time.perf_counter()

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.process = subprocess.Popen(
            [sys.executable, *argv],
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=pin,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_port(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"{self.name} is not listening on {port}: {self.tail()}")

    def tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
