"""A throwaway PostgreSQL cluster on loopback for the shared-thread-store tests.

`initdb` in a temporary directory, `postgres -k <dir> -p <free port> -h 127.0.0.1` (as the `postgres` user
when the tests run as root: PostgreSQL refuses root), stopped with `pg_ctl stop -m fast` and deleted at
the end. Debian's `postgresql` package provides the binaries (`make postgres` installs it when it can);
without them the tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from funchost.testing import LOOPBACK, free_port

#: Superuser of the test cluster (trust authentication on loopback).
SUPERUSER = "chat"
#: A role that must sign in with a password (scram-sha-256): stands in for an Entra token sign-in.
PASSWORD_ROLE = "entra_app"
_START_TIMEOUT = 60.0


def find_bindir() -> Path | None:
    """The newest PostgreSQL server binaries: Debian's /usr/lib/postgresql/N/bin, else initdb on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name)
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresCluster:
    port: int
    datadir: Path
    bindir: Path
    process: subprocess.Popen[bytes]
    run_as: list[str]

    def url(self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres") -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@{LOOPBACK}:{self.port}/{dbname}"

    def stop(self) -> None:
        if self.process.poll() is None:
            subprocess.run(
                [
                    *self.run_as,
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.datadir),
                    "-m",
                    "fast",
                    "-w",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the PostgreSQL thread store tests must run in CI: {reason}")
    pytest.skip(reason)


def _wait_ready(cluster: PostgresCluster, root: Path) -> None:
    import psycopg

    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if cluster.process.poll() is not None:
            log = (root / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"postgres exited with {cluster.process.returncode}:\n{log}")
        try:
            with psycopg.connect(cluster.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise TimeoutError(f"postgres did not accept connections within {_START_TIMEOUT:.0f} s")


def start_cluster() -> Iterator[PostgresCluster]:
    """Yield a running cluster; everything it made is gone afterwards."""
    bindir = find_bindir()
    if bindir is None:
        _unavailable("PostgreSQL is not installed (make postgres, or apt-get install postgresql)")
        return
    run_as: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no `postgres` user to run the server as")
            return
        run_as = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="chat-pg-"))
    cluster: PostgresCluster | None = None
    try:
        datadir = root / "data"
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [
                *run_as,
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
        (datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {PASSWORD_ROLE} {LOOPBACK}/32 scram-sha-256\n"
            f"host all all {LOOPBACK}/32 trust\n"
        )
        if owner is not None:
            os.chown(datadir / "pg_hba.conf", owner.pw_uid, owner.pw_gid)
        port = free_port()
        log = open(root / "postgres.log", "wb")  # closed below, after the server stopped
        try:
            process = subprocess.Popen(
                [
                    *run_as,
                    str(bindir / "postgres"),
                    "-D",
                    str(datadir),
                    "-k",
                    str(root),
                    "-p",
                    str(port),
                    "-h",
                    LOOPBACK,
                    # A test cluster: durability is not the point, speed on a busy machine is.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            cluster = PostgresCluster(port, datadir, bindir, process, run_as)
            _wait_ready(cluster, root)
            yield cluster
        finally:
            if cluster is not None:
                cluster.stop()
            log.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", name="postgres")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster for the whole session (tests use their own databases or thread ids)."""
    yield from start_cluster()
