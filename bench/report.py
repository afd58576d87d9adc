"""Results as a ratio table (Markdown), raw JSON, and an SVG plot of concurrency vs p99 gap."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLORS = {
    "product": "#1f77b4",
    "product-1to1": "#17becf",
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


# metric, target, getter, lower is better, digits, target check
ROWS: list[
    tuple[str, str, Callable[[dict[str, Any]], float | None], bool, int, Callable[[float], bool] | None]
] = [
    ("app CPU per forwarded delta (µs)", "≤ 40", lambda c: c["cpu_us_per_delta"], True, 1, lambda v: v <= 40),
    ("deltas/s, one zero-delay stream", "", lambda c: c["deltas_per_s"], False, 0, None),
    ("TTFT overhead p50 (ms)", "≤ 2", lambda c: c["ttft_overhead_ms_p50"], True, 2, lambda v: v <= 2),
    ("TTFT overhead p99 (ms)", "", lambda c: c["ttft_overhead_ms_p99"], True, 2, None),
    (
        "memory per open stream (KB)",
        "≤ 100",
        lambda c: c["memory_kb_per_stream"],
        True,
        0,
        lambda v: v <= 100,
    ),
    ("cold start to first delta (s)", "≤ 1.5", lambda c: c["cold_start_s"], True, 2, lambda v: v <= 1.5),
]


def markdown(data: dict[str, Any]) -> str:
    cs = data["contenders"]
    by = {c["key"]: c for c in cs}
    naive = by.get("naive")
    head = ["metric", "target", *(c["key"] for c in cs)]
    if "product" in by and naive:
        head += ["product vs naive", "product target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, target, get, lower, digits, check in ROWS:
        row = [name, target or "—", *(_fmt(get(c), digits) for c in cs)]
        if "product" in by and naive:
            p, n = get(by["product"]), get(naive)
            ratio = "—"
            if p is not None and n is not None and p > 0 and n > 0:
                ratio = f"{n / p:.1f}x better" if lower else f"{p / n:.1f}x more"
            verdict = "—"
            if check is not None and p is not None:
                verdict = "met" if check(p) else f"missed by {_fmt(abs(p - _limit(target)), digits)}"
            row += [ratio, verdict]
        lines.append("| " + " | ".join(row) + " |")
    row = ["concurrent 50 tok/s streams, one core, p99 gap ≤ 100 ms", "≥ 250", *(_streams(c) for c in cs)]
    if "product" in by and naive:
        p, n = by["product"]["max_streams"], naive["max_streams"]
        row.append(f"{p / n:.1f}x more" if p and n else "—")
        row.append("met" if p and p >= 250 else f"missed by {250 - (p or 0)}")
    lines.append("| " + " | ".join(row) + " |")
    notes = [
        "",
        f"Run {data['date']}, {data['duration_s']} s; {data['machine']['cpu']} "
        f"({data['machine']['cores']} cores), Python {data['machine']['python']}; {data['layout']}.",
        f"Upstream's own TTFT (simulator, zero delay): p50 {_fmt(data['upstream_ttft_ms_p50'], 2)} ms, "
        f"p99 {_fmt(data['upstream_ttft_ms_p99'], 2)} ms.",
    ]
    notes.append(
        "Memory per open stream: (peak RSS - idle RSS) / streams at the "
        + ", ".join(f"{c['key']} {c['memory_level']}" for c in cs)
        + "-stream level (the largest level run up to 100)."
    )
    for c in cs:
        if c["failures"]:
            notes.append(f"{c['key']} failures: {'; '.join(c['failures'])}")
    notes += [
        "",
        "Concurrency levels: p99 inter-delta gap ms / app core busy / load core busy / other processes' CPU"
        " / median first-to-last-delta time of a stream (the upstream's pace alone: "
        f"{_nominal(data)} s); a failed level with other processes busy above 0.1 core is measured again,"
        " up to 3 trials:",
        "",
    ]
    levels = sorted({lv["streams"] for c in cs for lv in c["levels"]})
    notes.append("| streams | " + " | ".join(c["key"] for c in cs) + " |")
    notes.append("|" + "---|" * (len(cs) + 1))
    for n in levels:
        cells = []
        for c in cs:
            lv = next((x for x in c["levels"] if x["streams"] == n), None)
            if lv is None:
                cells.append("")
                continue
            mark = "" if lv["passed"] else " ✗"
            err = f", {lv['streams'] - lv['ok']} failed" if lv["ok"] < lv["streams"] else ""
            retry = f" ({lv['trials']} trials)" if lv.get("trials", 1) > 1 else ""
            cells.append(
                f"{_fmt(lv['p99_gap_ms'])} / {lv['app_cpu_util']:.0%} / {lv['load_core_util']:.0%}"
                f" / {lv.get('foreign_cpu', 0):.2f} / {_fmt(lv.get('stream_s_p50'), 2)} s{err}{retry}{mark}"
            )
        notes.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines + notes) + "\n"


def _nominal(data: dict[str, Any]) -> str:
    sizes = data["sizes"]
    return f"{(sizes['paced_tokens'] - 1) * sizes['paced_delay_ms'] / 1000:.2f}"


def _limit(target: str) -> float:
    return float(target.split()[-1])


def svg(data: dict[str, Any], limit_ms: float = 100.0) -> str:
    width, height, left, bottom, top, right = 720, 420, 70, 50, 30, 190
    series = [
        (c["key"], [(lv["streams"], lv["p99_gap_ms"]) for lv in c["levels"] if lv["p99_gap_ms"]])
        for c in data["contenders"]
    ]
    xs = [x for _, pts in series for x, _ in pts] or [1]
    ys = [y for _, pts in series for _, y in pts] or [limit_ms]
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
        "p99 inter-delta gap vs concurrent 50 tok/s streams (one core)</text>",
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
    for row, (key, pts) in enumerate(series):
        color = COLORS.get(key, "black")
        if pts:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        legend_y = top + 20 * row + 30
        out.append(f'<rect x="{width - right + 10}" y="{legend_y}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{width - right + 28}" y="{top + 20 * row + 40}">{key}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write(data: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "svg": out / "concurrency.svg"}
    paths["json"].write_text(json.dumps(data, indent=2) + "\n")
    paths["markdown"].write_text(markdown(data))
    paths["svg"].write_text(svg(data))
    return paths
