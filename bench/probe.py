"""Quick per-change probe: the issue's per-request, per-token and per-stream figures, repeated, side by side.

`python -m bench.probe [--only product,raw] [--repeat 3] [--requests 300] [--paced 40] [--memory 25]`

For each contender (its own process, pinned like `python -m bench`), on plain asyncio, `--repeat` times:
- **per-request CPU**: `--requests` sequential short answers after warm-up; the contender's CPU time
  (utime + stime) over all of them divided by their count (ms). What admitting one stream costs.
- **admission**: the same short answers, `--burst` of them started together; CPU per request and the
  rate one core could admit (1 / CPU per request).
- **CPU per upstream token at 50 tok/s**: `--paced` streams of 300 tokens started over 2 s, as the
  benchmark's headline row.
- **memory per open stream**: (peak RSS - idle RSS) / `--memory` during a batch of paced streams.
Figures are process CPU seconds, not wall time, so a busy machine skews them less; the range over the
repeats is printed. Only the headline loop: asyncio. It measures nothing the full benchmark does not;
it is only quicker (about a minute per contender).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from bench import contenders as cs
from bench.loadgen import many, stream_once
from bench.procs import Child, cpu_seconds, free_port, rss_bytes
from bench.run import Bench, Sizes, _first_delta


def _fmt(values: list[float], unit: str, digits: int = 1) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}-{hi:.{digits}f} {unit}"


class Probe(Bench):
    async def probe(
        self, c: cs.Contender, app: Child, port: int, args: argparse.Namespace
    ) -> dict[str, float]:
        short = self.target(c, port, "[bench:short] How are you?")
        for _ in range(20):
            res = await stream_once(short, 30)
            if not res.ok:
                raise RuntimeError(f"warm-up failed: {res.error} {res.head[:200]!r}")
        # Memory first, before a larger batch has grown the heap (as `python -m bench` does).
        await asyncio.sleep(0.5)
        idle = rss_bytes(app.pid)
        memory = await self._run(app, port, c, args.memory, 2.0, idle)
        memory_kb = max(0.0, (memory.peak_rss_mb * 2**20 - idle) / args.memory / 1024)
        paced = await self._run(app, port, c, args.paced, 2.0, idle)
        per_token_us = paced.app_cpu_s / (args.paced * paced.tokens) * 1e6
        await self._quiet(app)
        before = cpu_seconds(app.pid)
        for _ in range(args.requests):
            await stream_once(short, 30)
        per_request_ms = (cpu_seconds(app.pid) - before) / args.requests * 1000

        await self._quiet(app)
        before = cpu_seconds(app.pid)
        results = await many(short, args.burst, 0.0, 120)
        burst_ms = (cpu_seconds(app.pid) - before) / args.burst * 1000
        burst_ok = sum(r.ok for r in results)

        for name, run in (("memory", memory), ("paced", paced)):
            if not run.passed:
                print(f"   {c.key} {name} batch broke the rule: {', '.join(run.failed)} {run.errors}")
        return {
            "per_request_ms": per_request_ms,
            "burst_ms": burst_ms,
            "burst_ok": burst_ok,
            "memory_kb": memory_kb,
            "per_token_us": per_token_us,
            "paced_ok": float(paced.passed),
        }

    def measure_probe(self, c: cs.Contender, args: argparse.Namespace) -> dict[str, float]:
        port = free_port()
        app = self.start(c, port, "asyncio", ".probe")
        try:
            asyncio.run(_first_delta(self.target(c, port, "[bench:short] Hello?"), app, 60))
            return asyncio.run(self.probe(c, app, port, args))
        finally:
            app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="product,raw")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--paced", type=int, default=40)
    parser.add_argument("--memory", type=int, default=25)
    parser.add_argument("--out", default="bench/results/probe")
    args = parser.parse_args()
    keys = args.only.split(",")
    bench = Probe(Sizes(long_tokens=300, quiet_wait_s=5.0), Path(args.out), keys, ("asyncio",))
    upstream = bench.start_upstream()
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in keys}
    started = time.time()
    try:
        for trial in range(args.repeat):
            for key in keys:
                figures = bench.measure_probe(cs.ALL[key], args)
                rows[key].append(figures)
                print(f"trial {trial + 1} {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    finally:
        upstream.stop()
    print(f"\n{args.repeat} trials, {time.time() - started:.0f} s, asyncio; range over trials")
    print("| metric | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for metric, unit in (
        ("per_request_ms", "ms"),
        ("burst_ms", "ms"),
        ("per_token_us", "µs"),
        ("memory_kb", "KB"),
    ):
        digits = 2 if unit == "ms" else 1
        cells = [_fmt([r[metric] for r in rows[k]], unit, digits) for k in keys]
        print(f"| {metric} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
