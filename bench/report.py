"""Results as a ratio table (Markdown), raw JSON, and an SVG plot of concurrency vs p99 gap."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLORS = {
    "product": "#1f77b4",
    "product-1to1": "#17becf",
    "product-agent": "#9467bd",
    "naive": "#d62728",
    "langserve": "#ff7f0e",
    "raw": "#7f7f7f",
}


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _streams(c: dict[str, Any]) -> str:
    if c["max_streams"] is None:
        return "< " + str(c["levels"][0]["streams"]) if c["levels"] else "—"
    return ("≥ " if c["max_streams_is_lower_bound"] else "") + str(c["max_streams"])


def _rate(data: dict[str, Any]) -> str:
    return f"{1000 / data['sizes']['paced_delay_ms']:g}"


@dataclass(frozen=True)
class Row:
    """One metric: its name says exactly what is divided by what."""

    name: str
    get: Callable[[dict[str, Any]], float | None]
    #: True: less is better; False: more is better; None: no ratio (a count that explains another row).
    lower_better: bool | None
    digits: int
    show: Callable[[dict[str, Any]], str] | None = None


def rows(data: dict[str, Any]) -> list[Row]:
    sz = data["sizes"]
    rate = _rate(data)
    return [
        Row(
            f"app CPU per upstream token at {rate} tok/s ({sz['paced_streams']} streams) (µs)",
            lambda c: c["cpu_us_per_token_paced"],
            True,
            1,
        ),
        Row("app CPU per upstream token, zero-delay upstream (µs)", lambda c: c["cpu_us_per_token"], True, 1),
        Row("app CPU per delta written, zero-delay upstream (µs)", lambda c: c["cpu_us_per_delta"], True, 1),
        Row(
            f"deltas written for {sz['long_tokens']:,} upstream tokens, zero-delay upstream",
            lambda c: c["long_deltas_seen"] or None,
            None,
            0,
        ),
        Row("upstream tokens/s through one zero-delay stream", lambda c: c["tokens_per_s"], False, 0),
        Row("TTFT overhead p50 (ms)", lambda c: c["ttft_overhead_ms_p50"], True, 2),
        Row("TTFT overhead p99 (ms)", lambda c: c["ttft_overhead_ms_p99"], True, 2),
        Row(
            f"concurrent {rate} tok/s streams per core passing the rule",
            lambda c: c["max_streams"],
            False,
            0,
            _streams,
        ),
        Row(
            f"memory per open stream at {sz['memory_level']} streams (KB)",
            lambda c: c["memory_kb_per_stream"],
            True,
            0,
        ),
        Row("cold start to first delta (s)", lambda c: c["cold_start_s"], True, 2),
        Row("cold start, deployed configuration (s)", lambda c: c["cold_start_deployed_s"], True, 2),
    ]


def ratio(product: float | None, other: float | None, lower_better: bool | None, bound: bool = False) -> str:
    """How the product compares, in words a reader cannot misread ("2.4x less (better)")."""
    if lower_better is None or product is None or other is None or product <= 0 or other <= 0:
        return "—"
    r = product / other
    text = f"{r:.1f}x more" if r >= 1 else f"{1 / r:.1f}x less"
    better = (r < 1) if lower_better else (r > 1)
    verdict = "same" if round(r, 1) == 1.0 else ("better" if better else "worse")
    return ("≥ " if bound and r >= 1 else "") + f"{text} ({verdict})"


LOOP_TITLES = {
    "asyncio": "plain asyncio, as the Azure Functions Python worker runs",
    "uvloop": "uvloop (secondary: not what Azure runs)",
}


def _table(data: dict[str, Any], loop: str, headline: bool) -> list[str]:
    cs = [c for c in data["contenders"] if c["loop"] == loop]
    by = {c["key"]: c for c in cs}
    product = by.get("product")
    others = [k for k in ("naive", "raw") if k in by and product is not None]
    head = ["metric", *(c["key"] for c in cs), *(f"product vs {k}" for k in others)]
    kind = "Headline" if headline else "Secondary"
    lines = [
        f"**{kind}: {LOOP_TITLES.get(loop, loop)}**",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows(data):
        values = [row.get(c) for c in cs]
        if all(v is None for v in values):
            continue  # e.g. cold starts, measured on the headline loop only
        cells = [row.show(c) if row.show else _fmt(row.get(c), row.digits) for c in cs]
        for k in others:
            assert product is not None
            if row.show is _streams and by[k]["max_streams_is_lower_bound"]:
                cells.append("—")  # the other's limit was not reached: no ratio to state
                continue
            bound = row.show is _streams and bool(product["max_streams_is_lower_bound"])
            cells.append(ratio(row.get(product), row.get(by[k]), row.lower_better, bound))
        lines.append("| " + " | ".join([row.name, *cells]) + " |")
    return lines


def _levels(data: dict[str, Any], loop: str) -> list[str]:
    cs = [c for c in data["contenders"] if c["loop"] == loop]
    keys = sorted({(lv["streams"], run["spread_s"]) for c in cs for lv in c["levels"] for run in lv["runs"]})
    lines = [
        f"Concurrency levels on {loop}: p99 inter-delta gap (ms) / TTFT p99 (s) / streams streaming at once "
        "/ pace (p99 stream time ÷ the upstream's) / accept-queue max / app core busy; ✗ names what failed:",
        "",
        "| streams | arrivals over | " + " | ".join(c["key"] for c in cs) + " |",
        "|" + "---|" * (len(cs) + 2),
    ]
    for n, spread in keys:
        cells = []
        for c in cs:
            lv = next((x for x in c["levels"] if x["streams"] == n), None)
            run = next((r for r in (lv or {}).get("runs", []) if r["spread_s"] == spread), None)
            if lv is None or run is None:
                cells.append("")
                continue
            queue = "—" if run["accept_queue_max"] is None else str(run["accept_queue_max"])
            cell = (
                f"{_fmt(run['p99_gap_ms'])} / {_fmt(run['ttft_p99_s'], 2)} / {run['together']:.0%}"
                f" / {_fmt(run['pace'], 2)} / {queue} / {run['app_cpu_util']:.0%}"
            )
            if lv.get("trials", 1) > 1:
                cell += f" ({lv['trials']} trials)"
            if run["failed"]:
                cell += " ✗ " + ", ".join(run["failed"])
            cells.append(cell)
        lines.append(f"| {n} | {spread:g} s | " + " | ".join(cells) + " |")
    return lines


def markdown(data: dict[str, Any]) -> str:
    sz = data["sizes"]
    rate = _rate(data)
    m = data["machine"]
    loops: list[str] = data["loops"]
    spreads = " and ".join(f"{x:g} s" for x in sz["spreads"])
    lines = [
        f"`{data['command']}`, run {data['date']}, {data['duration_s']} s; {m['cpu']} ({m['cores']} cores),"
        f" Linux {m.get('kernel', '?')}, Python {m['python']}; {data['layout']}. The simulated upstream runs"
        " on uvloop + httptools (it is not a contender). Ratios compare contenders within this run.",
        "",
    ]
    for i, loop in enumerate(loops):
        lines += [*_table(data, loop, i == 0), ""]
    first = [c for c in data["contenders"] if c["loop"] == loops[0]]
    lines += [
        f"- **CPU per upstream token at {rate} tok/s**: {sz['paced_streams']} streams of "
        f"{sz['paced_tokens'][0]} tokens, started over {sz['spreads'][0]:g} s; the contender's CPU time "
        "(utime + stime) over the whole batch, connection set-up included, divided by the upstream tokens "
        "sent. App core busy meanwhile: " + ", ".join(_paced_note(c) for c in first) + ".",
        f"- **Zero-delay rows**: one {sz['long_tokens']:,}-token answer from an upstream that sends tokens "
        "as fast as it can, so many arrive together; CPU divided by the upstream tokens, and by the deltas "
        "the contender actually wrote (the row below them).",
        f"- **The rule** for a concurrency level: every stream completes; p99 inter-delta gap ≤ "
        f"{sz['gap_limit_ms']:g} ms; TTFT p99 ≤ {sz['ttft_limit_s']:g} s (from sending the request, so time "
        f"in the accept queue counts); at least {sz['together_share']:.0%} of the streams streaming at the "
        f"same moment; the p99 stream keeps the upstream's pace within {sz['pace_tolerance']:.0%}. Each "
        f"level runs with arrivals spread over {spreads} (streams of "
        + " and ".join(str(t) for t in sz["paced_tokens"])
        + f" tokens at {rate} tok/s) and passes only if both pass; levels rise until one fails.",
        f"- **Memory per open stream**: (peak RSS - idle RSS) / {sz['memory_level']} during a batch of "
        f"{sz['memory_level']} paced streams ({sz['spreads'][0]:g} s arrivals) run right after warm-up, "
        "before any larger batch, for every contender" + _memory_note(data["contenders"]) + ".",
        "- **Cold start**: process start to the first delta of its first answer (the client polls until "
        f"the port answers), median of {sz['cold_trials']}, on {loops[0]}. **Deployed configuration**: the "
        "product with the app settings infra deploys, on loopback: no API key (DefaultAzureCredential "
        "takes the App Service managed-identity path, its token endpoint served by the bench upstream) and "
        "Application Insights export configured (keyless, to a closed loopback port; statsbeat and the "
        "exporter's control-plane fetch off, so nothing leaves the machine).",
        f"- Upstream's own TTFT (simulator, zero delay): p50 {_fmt(data['upstream_ttft_ms_p50'], 2)} ms, "
        f"p99 {_fmt(data['upstream_ttft_ms_p99'], 2)} ms (subtracted for TTFT overhead).",
    ]
    if data.get("accept_queue_source") is None:
        lines.append("- Accept-queue depth not recorded: `ss` was not found.")
    for c in data["contenders"]:
        if c["failures"]:
            lines.append(f"- {c['key']} on {c['loop']} failures: {'; '.join(c['failures'])}")
    for loop in loops:
        lines += ["", *_levels(data, loop)]
    return "\n".join(lines) + "\n"


def _paced_note(c: dict[str, Any]) -> str:
    run = c.get("paced")
    if not run:
        return f"{c['key']} —"
    verdict = "" if not run["failed"] else f", rule failed: {', '.join(run['failed'])}"
    return f"{c['key']} {run['app_cpu_util']:.0%}{verdict}"


def _memory_note(cs: list[dict[str, Any]]) -> str:
    failed = sorted({f"{c['key']} ({c['loop']})" for c in cs if c.get("memory_level_passed") is False})
    return "; that batch failed the concurrency rule for " + ", ".join(failed) if failed else ""


def svg(data: dict[str, Any], limit_ms: float = 100.0) -> str:
    width, height, left, bottom, top, right = 720, 420, 70, 50, 30, 190
    loops = data["loops"]
    series = [
        (
            c["key"],
            c["loop"],
            [
                (lv["streams"], lv["runs"][0]["p99_gap_ms"])
                for lv in c["levels"]
                if lv["runs"] and lv["runs"][0]["p99_gap_ms"]
            ],
        )
        for c in data["contenders"]
    ]
    xs = [x for _, _, pts in series for x, _ in pts] or [1]
    ys = [y for _, _, pts in series for _, y in pts] or [limit_ms]
    xmax = max(xs) * 1.05
    ymax = min(max(max(ys), limit_ms) * 1.1, 2000.0)

    def px(x: float) -> float:
        return left + (width - left - right) * x / xmax

    def py(y: float) -> float:
        return height - bottom - (height - bottom - top) * min(y, ymax) / ymax

    mid = (top + height - bottom) / 2
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">'
        f"p99 inter-delta gap vs concurrent streams, {data['sizes']['spreads'][0]:g} s arrivals (one core;"
        f" solid: {loops[0]}, dashed: other loops)</text>",
        f'<line x1="{left}" y1="{py(0)}" x2="{width - right}" y2="{py(0)}" stroke="black"/>',
        f'<line x1="{left}" y1="{py(0)}" x2="{left}" y2="{py(ymax)}" stroke="black"/>',
        f'<line x1="{left}" y1="{py(limit_ms)}" x2="{width - right}" y2="{py(limit_ms)}" '
        'stroke="#2ca02c" stroke-dasharray="6 4"/>',
        f'<text x="{width - right + 4}" y="{py(limit_ms) + 4}" fill="#2ca02c">{limit_ms:g} ms limit</text>',
        f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">'
        "concurrent streams</text>",
        f'<text x="16" y="{mid}" transform="rotate(-90 16 {mid})" text-anchor="middle">'
        f"p99 gap (ms, clipped at {ymax:.0f})</text>",
    ]
    for i in range(6):
        yv = ymax * i / 5
        out.append(f'<text x="{left - 6}" y="{py(yv) + 4}" text-anchor="end">{yv:.0f}</text>')
    for xv in sorted(set(xs)):
        out.append(f'<text x="{px(xv)}" y="{py(0) + 16}" text-anchor="middle">{xv}</text>')
    for row, (key, loop, pts) in enumerate(series):
        color = COLORS.get(key, "black")
        dash = "" if loop == loops[0] else ' stroke-dasharray="5 3"'
        if pts:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        legend_y = top + 20 * row + 30
        out.append(f'<rect x="{width - right + 10}" y="{legend_y}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{width - right + 28}" y="{top + 20 * row + 40}">{key} ({loop})</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write(data: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "svg": out / "concurrency.svg"}
    paths["json"].write_text(json.dumps(data, indent=2) + "\n")
    paths["markdown"].write_text(markdown(data))
    paths["svg"].write_text(svg(data))
    return paths
