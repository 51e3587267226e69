"""`make bench`: served vs in-process, dynamic batching on vs off, compute share per model, HTTP vs
gRPC, all at one concurrency in one run on the built repository (it starts its own servers)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from shopsearch.errors import ShopSearchError
from shopsearch.perf.bench_serving import bench_serving, report_markdown

DEFAULT_QUERIES = Path(__file__).parent / "perf_data" / "search_queries.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="perf_analyzer input data for the ensemble")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--measurement-ms", type=int, default=3000)
    parser.add_argument("--in-process-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved Triton rounds; the report gives medians")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="shopsearch-bench-") as work:
            report = bench_serving(args.repo, args.queries, Path(work), args.concurrency, args.measurement_ms,
                                   args.in_process_seconds, log=lambda m: print(m, flush=True),
                                   rounds=args.rounds)
    except ShopSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = report_markdown(report)
    (args.out / "report.md").write_text(markdown)
    print(markdown)
    print(f"written: {args.out}/report.md, {args.out}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
