"""Soak: 200 concurrent streams on loopback, some clients leave early, some requests hit faults.

Bounded: 200 requests of at most 40 paced tokens (disconnecting clients leave after 5), all done
in seconds, with a hard 90 s cap. Afterwards every client must have had a well-formed stream or a
proper error status, the simulated deployment no open stream, and the app its tasks, live runs
and memory back near the baseline (read from the app's CHAT_DIAGNOSTICS route).
Run alone with `pytest -s tests/test_soak.py` to see the numbers (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from aoai_simulator import SimulatorHandle
from funchost.testing import SubprocessServer

STREAMS = 200
#: (kind, fault spec, share out of 20)
MIX = [
    ("ok", "tokens=40;token-delay=5", 10),
    ("leave", "tokens=400;token-delay=10", 2),
    ("retried", "503;times=1;tokens=40;token-delay=5", 2),
    ("rate_limited", "429:retry-after=30", 2),
    ("dropped", "drop-after=5;tokens=40;token-delay=5", 2),
    ("failed", "500", 1),
    ("filtered", "content-filter-after=5;tokens=40;token-delay=5", 1),
]
KINDS = [(kind, spec) for kind, spec, share in MIX for _ in range(share)]


@dataclass
class Outcome:
    kind: str
    status: int
    events: list[dict]
    done: bool
    error_code: str | None = None
    retry_after: str | None = None


async def one(client: httpx.AsyncClient, index: int) -> Outcome:
    kind, spec = KINDS[index % len(KINDS)]
    body = {"user": f"soak {index} [sim:{spec}]"}
    async with client.stream("POST", "/api/chat", json=body) as response:
        if response.status_code != 200:
            data = json.loads(await response.aread())
            return Outcome(
                kind,
                response.status_code,
                [],
                False,
                data["error"]["code"],
                response.headers.get("retry-after"),
            )
        events: list[dict] = []
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            events.append(json.loads(line[6:]))
            if kind == "leave" and len(events) >= 5:
                return Outcome(kind, 200, events, False)
        return Outcome(kind, 200, events, done)


async def run_soak(url: str) -> tuple[list[Outcome], float]:
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.monotonic()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(one(client, i) for i in range(STREAMS))), timeout=90
        )
        return list(outcomes), time.monotonic() - started


def diag(url: str) -> dict:
    return httpx.get(f"{url}/api/_diag", timeout=10).json()


def settled(url: str, baseline: dict, timeout: float = 10.0) -> dict:
    """The app's numbers once the streams have wound down (closing is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        now = diag(url)
        quiet = now["active_streams"] == 0 and now["closing_tasks"] == 0
        if (quiet and now["tasks"] <= baseline["tasks"] + 2) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def check(outcome: Outcome) -> None:
    kind, events = outcome.kind, outcome.events
    if kind == "rate_limited":
        assert (outcome.status, outcome.error_code, outcome.retry_after) == (429, "rate_limited", "30")
        return
    if kind == "failed":
        assert (outcome.status, outcome.error_code) == (502, "upstream_error")
        return
    assert outcome.status == 200, outcome
    assert events[0]["type"] == "start"
    if kind == "leave":
        return
    assert outcome.done and events[-1]["type"] == "end"
    deltas = [e for e in events if e["type"] == "delta"]
    if kind in ("ok", "retried"):
        assert len(deltas) == 40 and events[-1]["finish_reason"] == "stop"
        assert "".join(e["delta_content"] for e in deltas).count("You asked") == 1
    elif kind == "dropped":
        assert len(deltas) == 5 and events[-2]["code"] == "upstream_interrupted"
    elif kind == "filtered":
        assert len(deltas) == 5 and events[-2]["code"] == "content_filter"
        assert events[-1]["finish_reason"] == "content_filter"


def soak_round(url: str, sim: SimulatorHandle) -> tuple[float, dict]:
    sim.reset()
    outcomes, elapsed = asyncio.run(run_soak(url))
    assert len(outcomes) == STREAMS
    for outcome in outcomes:
        check(outcome)
    assert sim.wait_idle(10), "the simulated deployment still has open streams"
    stats = sim.stats()
    assert stats["open_streams"] == 0
    left = [r for r in stats["requests"] if "tokens=400" in json.dumps(r["messages"])]
    assert len(left) == Counter(o.kind for o in outcomes)["leave"]
    assert all(r["closed_early"] and r["chunks_sent"] < 400 for r in left), "a left stream kept generating"
    return elapsed, stats


def test_soak_200_concurrent_streams_with_faults_and_disconnects(
    fault_app: SubprocessServer, fault_simulator: SimulatorHandle
) -> None:
    url = fault_app.url
    # Warm up (imports, pools, allocator) so the baseline is the steady state, not the cold start.
    asyncio.run(run_soak_warmup(url))
    assert fault_simulator.wait_idle(10)
    baseline = diag(url)

    elapsed, stats = soak_round(url, fault_simulator)
    after = settled(url, baseline)
    # A second round shows whether anything accumulates per request (a leak) or was a one-off
    # high-water mark (allocator arenas, connection pools).
    elapsed2, _ = soak_round(url, fault_simulator)
    after2 = settled(url, baseline)

    for now in (after, after2):
        assert now["active_streams"] == 0 and now["closing_tasks"] == 0
        assert now["tasks"] <= baseline["tasks"] + 2, (baseline, now)
        assert now["live_runs"] <= baseline["live_runs"] + 2, (baseline, now)
    if after["open_sockets"] is not None:  # the upstream keep-alive pool does not grow round after round
        # (aiohttp keeps each idle connection until it expires, so two equal rounds differ by a few)
        assert after2["open_sockets"] <= after["open_sockets"] + 10, (after, after2)
    mib = 2**20
    assert (after["rss_bytes"] - baseline["rss_bytes"]) / mib < 64, (baseline, after)
    assert (after2["rss_bytes"] - after["rss_bytes"]) / mib < 16, (after, after2)
    print(
        f"\nsoak: {STREAMS} streams per round, rounds took {elapsed:.1f} s and {elapsed2:.1f} s; "
        f"mix {dict(Counter(kind for kind, _ in KINDS))} x {STREAMS // len(KINDS)}; "
        f"upstream requests {stats['requests_total']}, streams {stats['streams_total']}, "
        f"closed early {stats['streams_closed_early']}, open afterwards {stats['open_streams']}; "
        f"app tasks {baseline['tasks']} -> {after['tasks']} -> {after2['tasks']}, live runs "
        f"{baseline['live_runs']} -> {after['live_runs']} -> {after2['live_runs']}, sockets "
        f"{baseline['open_sockets']} -> {after['open_sockets']} -> {after2['open_sockets']}, RSS "
        f"{baseline['rss_bytes'] / mib:.1f} -> {after['rss_bytes'] / mib:.1f} -> "
        f"{after2['rss_bytes'] / mib:.1f} MiB"
    )


async def run_soak_warmup(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(one(client, i) for i in range(40)))
