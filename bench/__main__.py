"""`python -m bench [--smoke] [--only K,...] [--loops asyncio,uvloop] [--secondary-only K,...] [--out D]`."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from bench import contenders, report
from bench.run import LOOPS, SMOKE, Bench, Sizes

#: What `--smoke` runs: enough contenders for every row and ratio of the headline table, and the
#: cheapest one on the secondary loop (each contender start costs seconds).
SMOKE_KEYS = "product,naive,raw"
SMOKE_SECONDARY = "raw"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks the benchmark works, proves nothing"
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated contenders (default: all; with --smoke: {SMOKE_KEYS})",
    )
    parser.add_argument(
        "--loops",
        default=",".join(LOOPS),
        help="comma-separated event loops; the first is the headline (default: asyncio,uvloop; Azure's "
        "Functions Python worker runs plain asyncio)",
    )
    parser.add_argument(
        "--secondary-only",
        default=None,
        help=f"contenders run on the loops after the first (default: all of --only; with --smoke: "
        f"{SMOKE_SECONDARY})",
    )
    parser.add_argument(
        "--levels",
        default=None,
        help="comma-separated concurrency levels to climb (default: 25,50,100,...,800; a subset is quicker)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default bench/results[/smoke]")
    args = parser.parse_args(argv)
    only = args.only or (SMOKE_KEYS if args.smoke else ",".join(contenders.ALL))
    keys = [k.strip() for k in only.split(",") if k.strip()]
    secondary = args.secondary_only or (SMOKE_SECONDARY if args.smoke else only)
    secondary_keys = [k.strip() for k in secondary.split(",") if k.strip()]
    unknown = [k for k in keys + secondary_keys if k not in contenders.ALL]
    if unknown:
        parser.error(f"unknown contender(s) {unknown}; choose from {sorted(contenders.ALL)}")
    loops = tuple(x.strip() for x in args.loops.split(",") if x.strip())
    if not loops or any(x not in LOOPS for x in loops):
        parser.error(f"--loops takes a comma-separated subset of {','.join(LOOPS)}")
    out = args.out or contenders.REPO / "bench" / "results" / ("smoke" if args.smoke else "")
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    sizes = SMOKE if args.smoke else Sizes()
    if args.levels:
        try:
            levels = tuple(sorted(int(x) for x in args.levels.split(",") if x.strip()))
        except ValueError:
            parser.error("--levels takes comma-separated stream counts")
        sizes = dataclasses.replace(sizes, levels=levels)
    data = Bench(sizes, out, keys, loops, command, secondary_keys).run()
    paths = report.write(data, out)
    print(paths["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    failed = [f"{c['key']} ({c['loop']})" for c in data["contenders"] if c["failures"]]
    if failed:
        print(f"contenders with failures: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
