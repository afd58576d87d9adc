"""`make bench-smoke` (the benchmark at tiny sizes) still runs end to end and writes its table.

Proves the benchmark works, not that anything is fast: sizes are far too small to mean anything.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_benchmark_smoke_run_writes_its_table(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    keys = [c["key"] for c in data["contenders"]]
    assert keys == ["product", "product-1to1", "naive", "langserve", "raw"]
    for contender in data["contenders"]:
        assert contender["failures"] == [], contender["key"]
        assert contender["cpu_us_per_delta"] is not None and contender["deltas_per_s"] > 0
        assert contender["ttft_ms_p50"] is not None and contender["cold_start_s"] > 0
        assert contender["levels"] and contender["levels"][0]["ok"] == contender["levels"][0]["streams"]
    table = (tmp_path / "results.md").read_text()
    assert "app CPU per forwarded delta" in table and "product vs naive" in table
    assert (tmp_path / "concurrency.svg").read_text().startswith("<svg")
