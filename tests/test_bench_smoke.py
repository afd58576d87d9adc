"""`make bench-smoke` (the benchmark at tiny sizes) still runs end to end and writes its table.

Proves the benchmark works, not that anything is fast: sizes are far too small to mean anything, and
nothing here asserts a figure. The run is shared by the tests of this module (one run, about 10 s).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report
from funchost.cli import LOOP_ENV, parse_args
from funchost.server import make_config
from tests.conftest import REPO_ROOT

#: The metric rows the table must have, each named for exactly what it divides by what.
ROWS = [
    "app CPU per upstream token at 50 tok/s (3 streams) (µs)",
    "app CPU per upstream token, zero-delay upstream (µs)",
    "app CPU per delta written, zero-delay upstream (µs)",
    "deltas written for 300 upstream tokens, zero-delay upstream",
    "upstream tokens/s through one zero-delay stream",
    "TTFT overhead p50 (ms)",
    "TTFT overhead p99 (ms)",
    "concurrent 50 tok/s streams per core passing the rule",
    "memory per open stream at 4 streams (KB)",
    "cold start to first delta (s)",
    "cold start, deployed configuration (s)",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Slow (about 12 s, the slowest setup in the suite): it starts every smoke contender, the
    simulated upstream and the load generator as processes, once for all the tests in this file."""
    out = tmp_path_factory.mktemp("bench-smoke")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _table_rows(table: str, title: str) -> dict[str, list[str]]:
    """The rows of the Markdown table under `title`: metric -> cells."""
    block = table.split(title, 1)[1].split("\n\n", 2)[1]
    lines = [line for line in block.splitlines() if line.startswith("| ")]
    split = ([c.strip() for c in line.strip("|").split("|")] for line in lines)
    return {cells[0]: cells[1:] for cells in split}


def test_smoke_run_measures_every_contender_on_its_loop(smoke: Path) -> None:
    data = json.loads((smoke / "results.json").read_text())
    assert data["loops"] == ["asyncio", "uvloop"]
    assert data["command"] == f"python -m bench --smoke --out {smoke}"
    got = [(c["key"], c["loop"]) for c in data["contenders"]]
    assert got == [("product", "asyncio"), ("naive", "asyncio"), ("raw", "asyncio"), ("raw", "uvloop")]
    for c in data["contenders"]:
        name = f"{c['key']} on {c['loop']}"
        assert c["failures"] == [], name
        # The benchmark checks the loop it asked for is the one the process runs (uvloop mapped or not).
        assert c["uvloop_loaded"] is (c["loop"] == "uvloop"), name
        assert c["cpu_us_per_token_paced"] is not None and c["paced"]["ok"] == c["paced"]["streams"], name
        assert c["cpu_us_per_token"] is not None and c["cpu_us_per_delta"] is not None, name
        assert c["long_deltas_seen"] > 0 and c["tokens_per_s"] > 0, name
        assert c["ttft_overhead_ms_p50"] is not None, name
        assert c["memory_level"] == 4 and c["memory_kb_per_stream"] is not None, name
        level = c["levels"][0]
        # Both arrival spreads ran, every stream completed, and the rule's inputs were recorded.
        assert [r["spread_s"] for r in level["runs"]] == [0.05, 0.1], name
        for run in level["runs"]:
            assert run["ok"] == run["streams"] == 4, name
            assert run["ttft_p99_s"] is not None and run["pace"] is not None and run["together"] > 0, name
            if shutil.which("ss"):
                assert run["accept_queue_max"] is not None, name
        assert (c["cold_start_s"] is not None) is (c["loop"] == "asyncio"), name
    product = data["contenders"][0]
    assert product["cold_start_deployed_s"] > 0 and len(product["cold_start_deployed_trials"]) == 1


def test_smoke_table_has_the_new_rows_headline_on_asyncio(smoke: Path) -> None:
    table = (smoke / "results.md").read_text()
    head, _, secondary = table.partition("**Secondary: uvloop")
    assert "**Headline: plain asyncio" in head and secondary
    headline = _table_rows(table, "**Headline: plain asyncio")
    assert list(headline) == ["metric", *ROWS]
    assert headline["metric"] == ["product", "naive", "raw", "product vs naive", "product vs raw"]
    # Every headline cell of the product, naive and raw was measured.
    for row in ROWS[:-1]:
        assert "—" not in headline[row][:3], row
    assert headline[ROWS[-1]][0] != "—"
    # Secondary table: raw only in the smoke run, no cold starts (measured on the headline loop only).
    uvloop = _table_rows(table, "**Secondary: uvloop")
    assert uvloop["metric"] == ["raw"] and "cold start to first delta (s)" not in uvloop
    assert "python -m bench --smoke" in table and "Concurrency levels on uvloop" in table
    assert (smoke / "concurrency.svg").read_text().startswith("<svg")


def _variant(data: dict[str, Any]) -> dict[str, Any]:
    """The smoke data with every case the table must render: all contenders on both loops, a failed
    level retried, a limit not reached, a contender failure, no `ss`."""
    data = copy.deepcopy(data)
    by = {(c["key"], c["loop"]): c for c in data["contenders"]}
    contenders = []
    for loop in ("asyncio", "uvloop"):
        for key in ("product", "product-1to1", "naive", "langserve", "raw"):
            base = by.get((key, loop)) or by.get((key, "asyncio")) or by[("product", "asyncio")]
            c = copy.deepcopy(base)
            c.update(key=key, loop=loop)
            contenders.append(c)
    # The rendering of a limit not reached and of a memory batch that passed, whatever this (tiny,
    # possibly busy) smoke run measured.
    for c in contenders:
        c.update(max_streams=4, max_streams_is_lower_bound=True, memory_level_passed=True)
    naive = contenders[2]
    failed_level = copy.deepcopy(naive["levels"][0])
    failed_level.update(streams=8, trials=2, passed=False)
    failed_level["runs"][0]["failed"] = ["ttft", "together"]
    naive["levels"].append(failed_level)
    naive.update(max_streams=4, max_streams_is_lower_bound=False, memory_level_passed=False)
    contenders[3]["failures"] = ["RuntimeError: broke"]
    contenders[3].update(cpu_us_per_token_paced=None, paced=None)
    data["contenders"] = contenders
    data["accept_queue_source"] = None
    return data


def test_table_generator_renders_every_case(smoke: Path) -> None:
    data = _variant(json.loads((smoke / "results.json").read_text()))
    table = report.markdown(data)
    headline = _table_rows(table, "**Headline: plain asyncio")
    assert headline["metric"][:5] == ["product", "product-1to1", "naive", "langserve", "raw"]
    # The product's limit was not reached and naive's was: a lower-bound ratio; against raw (whose
    # limit was not reached either) no ratio at all.
    streams = headline["concurrent 50 tok/s streams per core passing the rule"]
    assert streams[0] == "≥ 4" and streams[2] == "4"
    assert streams[5].startswith("≥ 1.0x more") and streams[6] == "—"
    assert headline["app CPU per upstream token at 50 tok/s (3 streams) (µs)"][3] == "—"
    assert "✗ ttft, together" in table and "(2 trials)" in table
    assert "langserve on asyncio failures: RuntimeError: broke" in table
    assert "that batch failed the concurrency rule for naive (asyncio)" in table
    assert "Accept-queue depth not recorded" in table
    assert report.svg(data).count("<polyline") == 10


def test_ratio_says_which_way_is_better() -> None:
    assert report.ratio(210, 513, lower_better=True) == "2.4x less (better)"
    assert report.ratio(8.0, 1.0, lower_better=True) == "8.0x more (worse)"
    assert report.ratio(200, 25, lower_better=False) == "8.0x more (better)"
    assert report.ratio(200, 25, lower_better=False, bound=True) == "≥ 8.0x more (better)"
    assert report.ratio(1.0, 1.02, lower_better=True) == "1.0x less (same)"
    assert report.ratio(None, 1.0, lower_better=True) == "—"
    assert report.ratio(3, 300, lower_better=None) == "—"


def test_funchost_runs_plain_asyncio_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in Azure, where the Functions Python worker owns a plain asyncio loop (uvicorn's "auto" would
    pick uvloop because it is installed). The smoke run checks the same on a real process."""
    monkeypatch.delenv(LOOP_ENV, raising=False)
    assert make_config(lambda *a: None).loop == "asyncio"
    assert parse_args([]).loop == "asyncio"
    assert parse_args(["--loop", "uvloop"]).loop == "uvloop"
    monkeypatch.setenv(LOOP_ENV, "uvloop")
    assert parse_args([]).loop == "uvloop"
