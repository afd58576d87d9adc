"""The benchmark run: upstream + each contender as separate processes on loopback, four measurements each.

Layout on a machine with two or more cores: the contender under test is pinned alone to the first core
(so "per core" means one core), the simulated upstream and this load generator share the second.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import contenders as cs
from bench.loadgen import StreamResult, Target, many, stream_once
from bench.procs import Child, cores, cpu_seconds, free_port, machine_busy_seconds, rss_bytes

#: Other processes' CPU (cores) during a failed level above which the level is measured again.
FOREIGN_LIMIT = 0.1
MAX_TRIALS = 3


@dataclass(frozen=True)
class Sizes:
    long_tokens: int = 20_000
    ttft_requests: int = 200
    levels: tuple[int, ...] = (25, 50, 100, 150, 200, 250, 300, 400, 500, 600, 800)
    paced_tokens: int = 300
    paced_delay_ms: float = 20.0
    spread_s: float = 2.0
    cold_trials: int = 3
    memory_level: int = 100
    gap_limit_ms: float = 100.0
    #: How long to wait, at most, for other processes to leave the machine quiet before a measurement.
    quiet_wait_s: float = 20.0


SMOKE = Sizes(
    long_tokens=300,
    ttft_requests=5,
    levels=(4,),
    paced_tokens=10,
    spread_s=0.1,
    cold_trials=1,
    memory_level=4,
    quiet_wait_s=0.0,
)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Layout:
    app_cpus: set[int] | None
    load_cpus: set[int] | None
    note: str

    @classmethod
    def detect(cls) -> Layout:
        available = cores()
        if len(available) < 2:
            return cls(None, None, f"only {len(available)} core available: nothing pinned")
        app, load = {available[0]}, set(available[1:])
        return cls(
            app, load, f"contender pinned to core {available[0]}; upstream + load generator on {sorted(load)}"
        )


@dataclass
class Level:
    streams: int
    ok: int
    errors: list[str]
    p50_gap_ms: float | None
    p99_gap_ms: float | None
    max_gap_ms: float | None
    app_cpu_util: float
    load_core_util: float
    #: CPU (in cores) used meanwhile by processes that are not part of the benchmark.
    foreign_cpu: float
    trials: int
    peak_rss_mb: float
    #: Median time from a stream's first to its last delta; the upstream's own pace would take
    #: (tokens - 1) x delay. Well above that means the upstream or the client could not keep the pace.
    stream_s_p50: float | None
    passed: bool


@dataclass
class ContenderResult:
    key: str
    label: str
    cpu_us_per_delta: float | None = None
    deltas_per_s: float | None = None
    long_deltas_seen: int = 0
    ttft_ms_p50: float | None = None
    ttft_ms_p99: float | None = None
    ttft_overhead_ms_p50: float | None = None
    ttft_overhead_ms_p99: float | None = None
    ttft_trials: int = 0
    idle_rss_mb: float | None = None
    levels: list[Level] = field(default_factory=list)
    max_streams: int | None = None
    max_streams_is_lower_bound: bool = False
    memory_kb_per_stream: float | None = None
    memory_level: int | None = None
    cold_start_s: float | None = None
    cold_start_trials: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _env(upstream: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "OPENAI_", "CHAT_"))}
    keep.update(
        AZURE_OPENAI_ENDPOINT=upstream,
        AZURE_OPENAI_API_KEY=cs.API_KEY,
        AZURE_OPENAI_DEPLOYMENT=cs.DEPLOYMENT,
        PYTHONPATH=str(cs.REPO),
        PYTHONUNBUFFERED="1",
    )
    return keep


class Bench:
    def __init__(self, sizes: Sizes, out: Path, keys: list[str], log: Callable[[str], None] = print) -> None:
        self.sizes = sizes
        self.out = out
        self.keys = keys
        self.log = log
        self.layout = Layout.detect()
        self.upstream: Child | None = None
        self.upstream_port = 0
        self.upstream_ttft: list[float] = []

    # --- helpers -------------------------------------------------------------------------------------

    def target(self, c: cs.Contender, port: int, question: str) -> Target:
        return Target(
            "127.0.0.1", port, c.path, c.body(question), c.marker, c.end_marker, c.error_marker, c.headers
        )

    def start(self, c: cs.Contender, port: int, suffix: str = "") -> Child:
        url = f"http://127.0.0.1:{self.upstream_port}"
        env = {**_env(url), **dict(c.env)}
        return Child(c.key, c.argv(port), env, self.layout.app_cpus, self.out / f"{c.key}{suffix}.log")

    # --- the run -------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if self.layout.load_cpus:
            os.sched_setaffinity(0, self.layout.load_cpus)
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
        self.out.mkdir(parents=True, exist_ok=True)
        self.upstream_port = free_port()
        s = self.sizes
        self.upstream = Child(
            "upstream",
            [
                "-m",
                "bench.upstream",
                "--port",
                str(self.upstream_port),
                "--long-tokens",
                str(s.long_tokens),
                "--paced-tokens",
                str(s.paced_tokens),
                "--paced-delay-ms",
                str(s.paced_delay_ms),
            ],
            _env(""),
            self.layout.load_cpus,
            self.out / "upstream.log",
        )
        results: list[ContenderResult] = []
        started = time.time()
        try:
            self.upstream.wait_port(self.upstream_port)
            self.upstream_ttft = asyncio.run(self._upstream_ttft())
            for key in self.keys:
                results.append(self.measure(cs.ALL[key]))
        finally:
            self.upstream.stop()
        return {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "duration_s": round(time.time() - started, 1),
            "layout": self.layout.note,
            "sizes": asdict(self.sizes),
            "upstream_ttft_ms_p50": pct(self.upstream_ttft, 50),
            "upstream_ttft_ms_p99": pct(self.upstream_ttft, 99),
            "machine": machine(),
            "contenders": [asdict(r) for r in results],
        }

    async def _upstream_ttft(self) -> list[float]:
        target = Target(
            "127.0.0.1",
            self.upstream_port,
            cs.UPSTREAM_PATH,
            cs.upstream_target_body("[bench:short] warm up"),
            cs.RAW.marker,
            headers=(("api-key", cs.API_KEY),),
        )
        for _ in range(3):
            await stream_once(target, 10)
        return await _ttfts(target, self.sizes.ttft_requests)

    def measure(self, c: cs.Contender) -> ContenderResult:
        self.log(f"== {c.label}")
        result = ContenderResult(c.key, c.label)
        port = free_port()
        app = self.start(c, port)
        try:
            app.wait_port(port)
            asyncio.run(self._measure_running(c, app, port, result))
        except Exception as exc:  # a contender that breaks is reported, the run goes on
            result.failures.append(f"{type(exc).__name__}: {exc}")
            self.log(f"   failed: {exc}")
        finally:
            app.stop()
        try:
            self._cold_starts(c, result)
        except Exception as exc:
            result.failures.append(f"cold start: {type(exc).__name__}: {exc}")
        return result

    async def _measure_running(self, c: cs.Contender, app: Child, port: int, r: ContenderResult) -> None:
        s = self.sizes
        warm = self.target(c, port, "[bench:short] warm up")
        for _ in range(5):
            res = await stream_once(warm, 30)
            if not res.ok:
                raise RuntimeError(f"warm-up request failed: {res.error} {res.head[:200]!r}")
        await stream_once(self.target(c, port, f"[bench:long:{max(100, s.long_tokens // 10)}] warm up"), 120)

        # a. CPU per forwarded delta, one long zero-delay stream.
        await self._quiet(app)
        before = cpu_seconds(app.pid)
        long = await stream_once(self.target(c, port, "[bench:long] Tell me everything."), 600)
        after = cpu_seconds(app.pid)
        if not long.ok:
            raise RuntimeError(f"long stream failed: {long.error}")
        r.long_deltas_seen = long.deltas
        r.cpu_us_per_delta = (after - before) / s.long_tokens * 1e6
        assert long.ended is not None
        r.deltas_per_s = s.long_tokens / (long.ended - long.started)
        self.log(f"   cpu/delta {r.cpu_us_per_delta:.1f} us, {r.deltas_per_s:,.0f} deltas/s")

        # b. Time to first delta, minus the upstream's own.
        # Wall-clock timings: a run disturbed by other processes is measured again (at most 3 trials).
        ttft: list[float] = []
        for _ in range(MAX_TRIALS):
            await self._quiet(app)
            busy0, ours0, wall0 = machine_busy_seconds(), self._our_cpu(app), time.perf_counter()
            ttft = await _ttfts(self.target(c, port, "[bench:short] How are you?"), s.ttft_requests)
            foreign = (machine_busy_seconds() - busy0 - (self._our_cpu(app) - ours0)) / (
                time.perf_counter() - wall0
            )
            r.ttft_trials += 1
            if foreign < FOREIGN_LIMIT:
                break
            self.log(f"   ttft: retry, {foreign:.2f} cores used by other processes")
        r.ttft_ms_p50, r.ttft_ms_p99 = pct(ttft, 50), pct(ttft, 99)
        up50, up99 = pct(self.upstream_ttft, 50), pct(self.upstream_ttft, 99)
        if r.ttft_ms_p50 is not None and up50 is not None and r.ttft_ms_p99 is not None and up99 is not None:
            r.ttft_overhead_ms_p50 = r.ttft_ms_p50 - up50
            r.ttft_overhead_ms_p99 = r.ttft_ms_p99 - up99
        self.log(f"   ttft overhead p50 {r.ttft_overhead_ms_p50:.2f} ms p99 {r.ttft_overhead_ms_p99:.2f} ms")

        # c. Concurrent realistic streams, rising until the gap limit breaks.
        await asyncio.sleep(0.5)
        idle = rss_bytes(app.pid)
        r.idle_rss_mb = idle / 2**20
        paced = self.target(c, port, "[bench:paced] Tell me a story.")
        for n in s.levels:
            level = await self._level(app, paced, n, idle)
            trials = 1
            while not level.passed and level.foreign_cpu > FOREIGN_LIMIT and trials < MAX_TRIALS:
                # Other work on the machine took CPU meanwhile: measure again rather than report it.
                self.log(f"   {n:4d} streams: retry, {level.foreign_cpu:.2f} cores used by other processes")
                await asyncio.sleep(1.0)
                level = await self._level(app, paced, n, idle)
                trials += 1
            level.trials = trials
            r.levels.append(level)
            self.log(
                f"   {n:4d} streams: ok {level.ok}, p99 gap {level.p99_gap_ms} ms, app cpu "
                f"{level.app_cpu_util:.0%}, load core {level.load_core_util:.0%}, "
                f"rss {level.peak_rss_mb:.0f} MB"
            )
            if n <= s.memory_level:
                r.memory_level = n
                r.memory_kb_per_stream = max(0.0, (level.peak_rss_mb * 2**20 - idle) / n / 1024)
            if not level.passed:
                break
            r.max_streams = n
            await asyncio.sleep(0.5)
        r.max_streams_is_lower_bound = bool(r.levels) and r.levels[-1].passed

    async def _quiet(self, app: Child) -> float:
        """Wait (bounded) until other processes use under FOREIGN_LIMIT cores; returns what they used."""
        assert self.upstream is not None
        deadline = time.monotonic() + self.sizes.quiet_wait_s
        while True:
            busy0, ours0 = machine_busy_seconds(), self._our_cpu(app)
            await asyncio.sleep(0.5)
            foreign = max(0.0, (machine_busy_seconds() - busy0 - (self._our_cpu(app) - ours0)) / 0.5)
            if foreign < FOREIGN_LIMIT or time.monotonic() > deadline:
                return foreign

    def _our_cpu(self, app: Child) -> float:
        assert self.upstream is not None
        return cpu_seconds(app.pid) + cpu_seconds(self.upstream.pid) + _self_cpu()

    async def _level(self, app: Child, target: Target, n: int, idle: int) -> Level:
        s = self.sizes
        await self._quiet(app)
        peak = idle
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_bytes(app.pid))
                await asyncio.sleep(0.1)

        assert self.upstream is not None
        busy0 = machine_busy_seconds()
        wall0, app0, up0, me0 = (
            time.perf_counter(),
            cpu_seconds(app.pid),
            cpu_seconds(self.upstream.pid),
            _self_cpu(),
        )
        sampler = asyncio.create_task(sample())
        budget = s.spread_s + s.paced_tokens * s.paced_delay_ms / 1000 * 3 + 30
        results: list[StreamResult] = await many(target, n, s.spread_s, budget)
        done.set()
        await sampler
        wall = time.perf_counter() - wall0
        app_cpu = (cpu_seconds(app.pid) - app0) / wall
        ours = cpu_seconds(app.pid) - app0 + cpu_seconds(self.upstream.pid) - up0 + _self_cpu() - me0
        foreign = max(0.0, (machine_busy_seconds() - busy0 - ours) / wall)
        load = (
            (cpu_seconds(self.upstream.pid) - up0 + _self_cpu() - me0)
            / wall
            / max(1, len(self.layout.load_cpus or {0}))
        )
        gaps = [g * 1000 for res in results for g in res.gaps]
        errors = [res.error or "no deltas" for res in results if not res.ok]
        p99 = pct(gaps, 99)
        spans = [
            res.last_delta - res.first_delta
            for res in results
            if res.ok and res.last_delta and res.first_delta
        ]
        return Level(
            streams=n,
            ok=n - len(errors),
            errors=sorted(set(errors))[:5],
            p50_gap_ms=_round(pct(gaps, 50)),
            p99_gap_ms=_round(p99),
            max_gap_ms=_round(max(gaps) if gaps else None),
            app_cpu_util=app_cpu,
            load_core_util=load,
            foreign_cpu=foreign,
            trials=1,
            peak_rss_mb=peak / 2**20,
            stream_s_p50=_round(pct(spans, 50)),
            passed=not errors and p99 is not None and p99 <= s.gap_limit_ms,
        )

    def _cold_starts(self, c: cs.Contender, r: ContenderResult) -> None:
        for trial in range(self.sizes.cold_trials):
            port = free_port()
            t0 = time.perf_counter()
            child = self.start(c, port, f".cold{trial}")
            try:
                first = asyncio.run(_first_delta(self.target(c, port, "[bench:short] Hello?"), child, 60))
                r.cold_start_trials.append(first - t0)
            finally:
                child.stop()
        if r.cold_start_trials:
            r.cold_start_s = statistics.median(r.cold_start_trials)
            self.log(f"   cold start {r.cold_start_s:.2f} s")


async def _ttfts(target: Target, count: int) -> list[float]:
    values = []
    for _ in range(count):
        res = await stream_once(target, 30)
        if res.ok and res.first_delta is not None:
            values.append((res.first_delta - res.started) * 1000)
    return values


async def _first_delta(target: Target, child: Child, limit_s: float) -> float:
    """Poll until the fresh process answers; returns the perf_counter time of its first delta."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"exited early: {child.tail()}")
        res = await stream_once(target, 30)
        if res.ok and res.first_delta is not None:
            return res.first_delta
        await asyncio.sleep(0.01)
    raise TimeoutError("no first delta")


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def machine() -> dict[str, Any]:
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}
