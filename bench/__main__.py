"""`python -m bench [--smoke] [--only product,naive,...] [--out DIR]`: run the benchmark, write the table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import contenders, report
from bench.run import SMOKE, Bench, Sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: checks the benchmark works, proves nothing"
    )
    parser.add_argument("--only", default=",".join(contenders.ALL), help="comma-separated contenders")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results[/smoke]")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in contenders.ALL]
    if unknown:
        parser.error(f"unknown contender(s) {unknown}; choose from {sorted(contenders.ALL)}")
    out = args.out or contenders.REPO / "bench" / "results" / ("smoke" if args.smoke else "")
    data = Bench(SMOKE if args.smoke else Sizes(), out, keys).run()
    paths = report.write(data, out)
    print(paths["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    failed = [c["key"] for c in data["contenders"] if c["failures"]]
    if failed:
        print(f"contenders with failures: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
