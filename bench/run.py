"""The benchmark run: upstream + each contender as separate processes on loopback, on each event loop.

Layout on a machine with two or more cores: the contender under test is pinned alone to the first core
(so "per core" means one core), the simulated upstream and this load generator share the second.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import contenders as cs
from bench.loadgen import StreamResult, Target, many, stream_once
from bench.procs import Child, cores, cpu_seconds, free_port, machine_busy_seconds, maps_file, rss_bytes
from bench.upstream import TOKEN_PATH

#: Other processes' CPU (cores) during a failed level above which the level is measured again.
FOREIGN_LIMIT = 0.1
LOOPS = ("asyncio", "uvloop")


@dataclass(frozen=True)
class Sizes:
    long_tokens: int = 20_000
    ttft_requests: int = 200
    #: The headline CPU figure: this many streams at the paced rate, started over the first spread.
    paced_streams: int = 40
    levels: tuple[int, ...] = (25, 50, 100, 150, 200, 250, 300, 400, 500, 600, 800)
    paced_delay_ms: float = 20.0
    #: Arrival spreads every level is run with; a level passes only if it passes with each.
    spreads: tuple[float, ...] = (2.0, 6.0)
    #: Each stream lasts its spread plus this, so every stream could be open together this long.
    overlap_s: float = 4.0
    cold_trials: int = 3
    #: Wall-clock measurements disturbed by other processes are taken again, at most this many times.
    trials: int = 3
    #: Memory per stream is read at this many streams for every contender (below naive's ceiling), in a
    #: batch of its own right after warm-up, before larger batches have grown the heap.
    memory_level: int = 25
    gap_limit_ms: float = 100.0
    ttft_limit_s: float = 1.0
    #: Share of a level's streams that must be streaming at the same moment.
    together_share: float = 0.95
    #: How far the slowest streams (p99 of first-to-last-delta time) may fall behind the upstream's pace.
    pace_tolerance: float = 0.05
    #: How long to wait, at most, for other processes to leave the machine quiet before a measurement.
    quiet_wait_s: float = 20.0
    #: Pause between measurements, so the previous one's connections are gone.
    settle_s: float = 0.5
    #: How often the contender's accept queue is read (`ss -ltn`).
    queue_sample_s: float = 0.2

    def paced_tokens(self, spread: float) -> int:
        return max(2, round((spread + self.overlap_s) * 1000 / self.paced_delay_ms))


SMOKE = Sizes(
    long_tokens=300,
    ttft_requests=5,
    paced_streams=3,
    levels=(4,),
    spreads=(0.05, 0.1),
    overlap_s=0.1,
    cold_trials=1,
    trials=1,
    memory_level=4,
    quiet_wait_s=0.0,
    settle_s=0.0,
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
class Run:
    """One batch of paced streams: `streams` of them, started evenly over `spread_s`."""

    streams: int
    spread_s: float
    tokens: int
    ok: int
    errors: list[str]
    p50_gap_ms: float | None
    p99_gap_ms: float | None
    max_gap_ms: float | None
    #: Request sent -> first delta, per stream (includes any wait in the accept queue).
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    #: Most streams between their first and last delta at one moment, as a share of `streams`.
    together: float
    #: p99 over streams of first-to-last-delta time, divided by the upstream's own (tokens - 1) x delay.
    pace: float | None
    #: Largest Recv-Q of the contender's listening socket seen (connections not yet accepted).
    accept_queue_max: int | None
    app_cpu_util: float
    app_cpu_s: float
    load_core_util: float
    #: CPU (in cores) used meanwhile by processes that are not part of the benchmark.
    foreign_cpu: float
    peak_rss_mb: float
    deltas: int
    failed: list[str]

    @property
    def passed(self) -> bool:
        return not self.failed


@dataclass
class Level:
    streams: int
    runs: list[Run]
    trials: int
    passed: bool


@dataclass
class ContenderResult:
    key: str
    label: str
    loop: str
    #: Whether uvloop's extension was mapped in the contender once it answered (checks `loop`).
    uvloop_loaded: bool | None = None
    cpu_us_per_token_paced: float | None = None
    paced: Run | None = None
    cpu_us_per_token: float | None = None
    cpu_us_per_delta: float | None = None
    tokens_per_s: float | None = None
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
    memory_level_passed: bool | None = None
    cold_start_s: float | None = None
    cold_start_trials: list[float] = field(default_factory=list)
    cold_start_deployed_s: float | None = None
    cold_start_deployed_trials: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _env(upstream: str) -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AZURE_", "OPENAI_", "CHAT_", "APPLICATIONINSIGHTS_", "IDENTITY_", "MSI_"))
        and k not in ("FUNCHOST_LOOP", "FUNCTIONS_WORKER_RUNTIME", "WEBSITE_SITE_NAME")
    }
    keep.update(
        AZURE_OPENAI_ENDPOINT=upstream,
        AZURE_OPENAI_API_KEY=cs.API_KEY,
        AZURE_OPENAI_DEPLOYMENT=cs.DEPLOYMENT,
        PYTHONPATH=str(cs.REPO),
        PYTHONUNBUFFERED="1",
    )
    return keep


#: A user-assigned identity's client id, as infra/app/api.bicep sets it (any GUID will do here).
BENCH_CLIENT_ID = "00000000-0000-0000-0000-0000000000b1"


def deployed_env(upstream: str, closed_port: int) -> dict[str, str]:
    """The app settings infra/app/api.bicep deploys, on loopback: no API key (DefaultAzureCredential ->
    App Service managed identity, its token endpoint served by the bench upstream) and Application
    Insights export (keyless) to an ingestion endpoint on a closed loopback port. Statsbeat (the
    exporter's usage reports) and its control plane (OneSettings, fetched from a fixed Microsoft host)
    are off, so nothing leaves the machine (checked with strace: loopback connects only);
    FUNCTIONS_WORKER_RUNTIME / WEBSITE_SITE_NAME are what Azure sets, and they make the resource
    detectors skip the VM metadata probe, as they do in Azure."""
    env = _env(upstream)
    del env["AZURE_OPENAI_API_KEY"]
    env.update(
        AZURE_CLIENT_ID=BENCH_CLIENT_ID,
        IDENTITY_ENDPOINT=f"{upstream}{TOKEN_PATH}",
        IDENTITY_HEADER="bench",
        APPLICATIONINSIGHTS_CONNECTION_STRING=(
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
            f"IngestionEndpoint=http://127.0.0.1:{closed_port}/"
        ),
        APPLICATIONINSIGHTS_AUTHENTICATION_STRING=f"ClientId={BENCH_CLIENT_ID};Authorization=AAD",
        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
        APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED="true",
        FUNCTIONS_WORKER_RUNTIME="python",
        WEBSITE_SITE_NAME="bench-app",
        PYTHON_ENABLE_INIT_INDEXING="1",
    )
    return env


class Bench:
    def __init__(
        self,
        sizes: Sizes,
        out: Path,
        keys: list[str],
        loops: tuple[str, ...] = LOOPS,
        command: str = "python -m bench",
        secondary_keys: list[str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.sizes = sizes
        self.out = out
        self.keys = keys
        self.loops = loops
        #: The contenders run on the loops after the first (default: all of them).
        self.secondary_keys = keys if secondary_keys is None else secondary_keys
        self.command = command
        self.log = log
        self.layout = Layout.detect()
        self.upstream: Child | None = None
        self.upstream_port = 0
        self.upstream_ttft: list[float] = []
        self.ss = shutil.which("ss")

    # --- helpers -------------------------------------------------------------------------------------

    def target(self, c: cs.Contender, port: int, question: str) -> Target:
        return Target(
            "127.0.0.1", port, c.path, c.body(question), c.marker, c.end_marker, c.error_marker, c.headers
        )

    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    def start(
        self, c: cs.Contender, port: int, loop: str, suffix: str = "", env: dict[str, str] | None = None
    ) -> Child:
        env = {**(env or _env(self.upstream_url())), **dict(c.env)}
        name = f"{c.key}.{loop}{suffix}"
        return Child(name, c.argv(port, loop), env, self.layout.app_cpus, self.out / f"{name}.log")

    # --- the run -------------------------------------------------------------------------------------

    def start_upstream(self) -> Child:
        """The simulated upstream on the load core (this process moves there too), with room for
        thousands of sockets; `run` and the probe both start it this way."""
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
                str(s.paced_tokens(s.spreads[0])),
                "--paced-delay-ms",
                str(s.paced_delay_ms),
            ],
            _env(""),
            self.layout.load_cpus,
            self.out / "upstream.log",
        )
        try:
            self.upstream.wait_port(self.upstream_port)
        except BaseException:
            self.upstream.stop()
            raise
        return self.upstream

    def run(self) -> dict[str, Any]:
        upstream = self.start_upstream()
        s = self.sizes
        results: list[ContenderResult] = []
        started = time.time()
        try:
            self.upstream_ttft = asyncio.run(self._upstream_ttft())
            for loop in self.loops:
                headline = loop == self.loops[0]
                for key in self.keys if headline else self.secondary_keys:
                    # Start-up does not depend on the loop much: cold starts are the headline loop's only.
                    results.append(self.measure(cs.ALL[key], loop, cold=headline))
        finally:
            upstream.stop()
        return {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "duration_s": round(time.time() - started, 1),
            "command": self.command,
            "layout": self.layout.note,
            "loops": list(self.loops),
            "sizes": {**asdict(self.sizes), "paced_tokens": [s.paced_tokens(x) for x in s.spreads]},
            "accept_queue_source": "ss -ltn (Recv-Q of the listening socket)" if self.ss else None,
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

    def measure(self, c: cs.Contender, loop: str, cold: bool) -> ContenderResult:
        self.log(f"== {c.label} on {loop}")
        result = ContenderResult(c.key, c.label, loop)
        port = free_port()
        t0 = time.perf_counter()
        app = self.start(c, port, loop)
        try:
            # Its first answer is also the first cold-start trial: a fresh process, polled until it answers.
            first = asyncio.run(_first_delta(self.target(c, port, "[bench:short] Hello?"), app, 60))
            if cold:
                result.cold_start_trials.append(first - t0)
            result.uvloop_loaded = maps_file(app.pid, "uvloop")
            if result.uvloop_loaded != (loop == "uvloop"):
                raise RuntimeError(f"asked for {loop}, but uvloop loaded: {result.uvloop_loaded}")
            asyncio.run(self._measure_running(c, app, port, result))
        except Exception as exc:  # a contender that breaks is reported, the run goes on
            result.failures.append(f"{type(exc).__name__}: {exc}")
            self.log(f"   failed: {exc}")
        finally:
            app.stop()
        if not cold:
            return result
        try:
            result.cold_start_trials += self._cold_starts(c, loop, None, self.sizes.cold_trials - 1)
            result.cold_start_s = statistics.median(result.cold_start_trials)
            self.log(f"   cold start {result.cold_start_s:.2f} s")
            if c.deployable:
                env = deployed_env(self.upstream_url(), free_port())
                result.cold_start_deployed_trials = self._cold_starts(c, loop, env, self.sizes.cold_trials)
                result.cold_start_deployed_s = statistics.median(result.cold_start_deployed_trials)
                self.log(f"   cold start, deployed configuration {result.cold_start_deployed_s:.2f} s")
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

        # Memory first, before any larger batch has grown the heap: the same level for every contender.
        await asyncio.sleep(s.settle_s)
        idle = rss_bytes(app.pid)
        r.idle_rss_mb = idle / 2**20
        spread = s.spreads[0]
        memory = await self._run(app, port, c, s.memory_level, spread, idle)
        r.memory_level = s.memory_level
        r.memory_level_passed = memory.passed
        r.memory_kb_per_stream = max(0.0, (memory.peak_rss_mb * 2**20 - idle) / s.memory_level / 1024)
        self.log(f"   memory at {s.memory_level} streams {r.memory_kb_per_stream:.0f} KB per stream")

        # a. CPU per upstream token at a realistic pace (the headline), then on a zero-delay upstream.
        r.paced = await self._run(app, port, c, s.paced_streams, spread, idle)
        r.cpu_us_per_token_paced = r.paced.app_cpu_s / (s.paced_streams * r.paced.tokens) * 1e6
        self.log(
            f"   cpu/token at {1000 / s.paced_delay_ms:g} tok/s x {s.paced_streams} streams "
            f"{r.cpu_us_per_token_paced:.1f} us (app core {r.paced.app_cpu_util:.0%})"
        )

        await self._quiet(app)
        before = cpu_seconds(app.pid)
        long = await stream_once(self.target(c, port, "[bench:long] Tell me everything."), 600)
        after = cpu_seconds(app.pid)
        if not long.ok:
            raise RuntimeError(f"long stream failed: {long.error}")
        r.long_deltas_seen = long.deltas
        r.cpu_us_per_token = (after - before) / s.long_tokens * 1e6
        r.cpu_us_per_delta = (after - before) / max(1, long.deltas) * 1e6
        assert long.ended is not None
        r.tokens_per_s = s.long_tokens / (long.ended - long.started)
        self.log(
            f"   zero-delay: cpu/token {r.cpu_us_per_token:.1f} us, cpu/delta {r.cpu_us_per_delta:.1f} us "
            f"({long.deltas} deltas for {s.long_tokens} tokens)"
        )

        # b. Time to first delta, minus the upstream's own.
        # Wall-clock timings: a run disturbed by other processes is measured again (at most 3 trials).
        ttft: list[float] = []
        for _ in range(s.trials):
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

        # c. Concurrent paced streams, rising until a level breaks the rule with any arrival spread.
        await asyncio.sleep(s.settle_s)
        for n in s.levels:
            level = await self._level(app, port, c, n, idle)
            while not level.passed and level.runs[-1].foreign_cpu > FOREIGN_LIMIT and level.trials < s.trials:
                # Other work on the machine took CPU meanwhile: measure again rather than report it.
                self.log(f"   {n:4d} streams: retry, {level.runs[-1].foreign_cpu:.2f} cores used elsewhere")
                await asyncio.sleep(1.0)
                trials = level.trials
                level = await self._level(app, port, c, n, idle)
                level.trials = trials + 1
            r.levels.append(level)
            if not level.passed:
                break
            r.max_streams = n
        r.max_streams_is_lower_bound = bool(r.levels) and r.levels[-1].passed

    async def _level(self, app: Child, port: int, c: cs.Contender, n: int, idle: int) -> Level:
        """Every spread, even after one failed: the table shows how each arrival pattern fared."""
        runs: list[Run] = []
        for spread in self.sizes.spreads:
            run = await self._run(app, port, c, n, spread, idle)
            runs.append(run)
            self.log(
                f"   {n:4d} streams over {spread:g} s: ok {run.ok}, p99 gap {run.p99_gap_ms} ms, "
                f"ttft p99 {run.ttft_p99_s} s, together {run.together:.0%}, pace {run.pace}, "
                f"accept queue {run.accept_queue_max}, app cpu {run.app_cpu_util:.0%}, "
                f"load core {run.load_core_util:.0%}, rss {run.peak_rss_mb:.0f} MB"
                + ("" if run.passed else f"  FAILED: {', '.join(run.failed)}")
            )
        return Level(streams=n, runs=runs, trials=1, passed=all(r.passed for r in runs))

    async def _quiet(self, app: Child) -> float:
        """Wait (bounded) until other processes use under FOREIGN_LIMIT cores; returns what they used."""
        assert self.upstream is not None
        if self.sizes.quiet_wait_s <= 0:
            return 0.0
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

    async def _accept_queue(self, port: int) -> int | None:
        """Recv-Q of the listening socket on `port`: connections the kernel holds, not yet accepted."""
        if self.ss is None:
            return None
        proc = await asyncio.create_subprocess_exec(
            self.ss,
            "-ltnH",
            f"sport = :{port}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        depths = [int(line.split()[1]) for line in out.decode().splitlines() if line.startswith("LISTEN")]
        return max(depths) if depths else None

    async def _run(self, app: Child, port: int, c: cs.Contender, n: int, spread: float, idle: int) -> Run:
        s = self.sizes
        await asyncio.sleep(s.settle_s)
        await self._quiet(app)
        tokens = s.paced_tokens(spread)
        target = self.target(c, port, f"[bench:paced:{tokens}] Tell me a story.")
        peak = idle
        queue: int | None = None
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak, queue
            while not done.is_set():
                peak = max(peak, rss_bytes(app.pid))
                depth = await self._accept_queue(port)
                if depth is not None:
                    queue = max(queue or 0, depth)
                try:
                    await asyncio.wait_for(done.wait(), s.queue_sample_s)
                except TimeoutError:
                    pass

        assert self.upstream is not None
        busy0 = machine_busy_seconds()
        wall0, app0, up0, me0 = (
            time.perf_counter(),
            cpu_seconds(app.pid),
            cpu_seconds(self.upstream.pid),
            _self_cpu(),
        )
        sampler = asyncio.create_task(sample())
        budget = spread + tokens * s.paced_delay_ms / 1000 * 3 + 30
        results: list[StreamResult] = await many(target, n, spread, budget)
        done.set()
        await sampler
        wall = time.perf_counter() - wall0
        app_cpu = cpu_seconds(app.pid) - app0
        ours = app_cpu + cpu_seconds(self.upstream.pid) - up0 + _self_cpu() - me0
        foreign = max(0.0, (machine_busy_seconds() - busy0 - ours) / wall)
        load = (
            (cpu_seconds(self.upstream.pid) - up0 + _self_cpu() - me0)
            / wall
            / max(1, len(self.layout.load_cpus or {0}))
        )
        gaps = [g * 1000 for res in results for g in res.gaps]
        errors = [res.error or "no deltas" for res in results if not res.ok]
        ttfts = [res.first_delta - res.started for res in results if res.first_delta is not None]
        nominal = (tokens - 1) * s.paced_delay_ms / 1000
        spans = [
            res.last_delta - res.first_delta
            for res in results
            if res.ok and res.last_delta is not None and res.first_delta is not None
        ]
        p99_gap, ttft99, span99 = pct(gaps, 99), pct(ttfts, 99), pct(spans, 99)
        together = _most_at_once(results) / max(1, n)
        pace = span99 / nominal if span99 is not None and nominal > 0 else None
        failed = []
        if errors:
            failed.append(f"{len(errors)} incomplete")
        if p99_gap is None or p99_gap > s.gap_limit_ms:
            failed.append("gap")
        if ttft99 is None or ttft99 > s.ttft_limit_s:
            failed.append("ttft")
        if together < s.together_share:
            failed.append("together")
        if pace is None or pace > 1 + s.pace_tolerance:
            failed.append("pace")
        return Run(
            streams=n,
            spread_s=spread,
            tokens=tokens,
            ok=n - len(errors),
            errors=sorted(set(errors))[:5],
            p50_gap_ms=_round(pct(gaps, 50)),
            p99_gap_ms=_round(p99_gap),
            max_gap_ms=_round(max(gaps) if gaps else None),
            ttft_p50_s=_round(pct(ttfts, 50), 3),
            ttft_p99_s=_round(ttft99, 3),
            together=together,
            pace=_round(pace, 3),
            accept_queue_max=queue,
            app_cpu_util=app_cpu / wall,
            app_cpu_s=app_cpu,
            load_core_util=load,
            foreign_cpu=foreign,
            peak_rss_mb=peak / 2**20,
            deltas=sum(res.deltas for res in results),
            failed=failed,
        )

    def _cold_starts(self, c: cs.Contender, loop: str, env: dict[str, str] | None, count: int) -> list[float]:
        trials = []
        suffix = ".deployed" if env else ".cold"
        for trial in range(count):
            port = free_port()
            t0 = time.perf_counter()
            child = self.start(c, port, loop, f"{suffix}{trial}", env)
            try:
                first = asyncio.run(_first_delta(self.target(c, port, "[bench:short] Hello?"), child, 60))
                trials.append(first - t0)
            finally:
                child.stop()
        return trials


def _most_at_once(results: list[StreamResult]) -> int:
    """Most streams between their first and last delta at the same moment (a sweep over the intervals)."""
    events: list[tuple[float, int]] = []
    for res in results:
        if res.first_delta is not None and res.last_delta is not None:
            events += [(res.first_delta, 1), (res.last_delta, -1)]
    most = now = 0
    for _, step in sorted(events, key=lambda e: (e[0], -e[1])):
        now += step
        most = max(most, now)
    return most


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
        if res.status:  # it answered, wrongly: say so now rather than poll until the deadline
            raise RuntimeError(f"first answer failed: {res.error} {res.head[:300]!r}; log: {child.tail()}")
        await asyncio.sleep(0.01)
    raise TimeoutError("no first delta")


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


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
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
