"""`make bench-models`: embedder throughput and latency per artifact, printed and written as JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shopsearch.perf.bench_models import bench_models, format_table, write_report
from shopsearch.errors import ShopSearchError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--repo", type=Path, help="a built repository whose size to report")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_models.json"))
    parser.add_argument("--work", type=Path, default=Path("artifacts/bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds per cell")
    args = parser.parse_args(argv)
    try:
        report = bench_models(args.checkpoint, args.work, threads=args.threads, min_seconds=args.seconds, repo=args.repo)
    except ShopSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    write_report(report, args.out)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
