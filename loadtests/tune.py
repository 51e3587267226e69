"""`make tune`: sweep instance counts and dynamic batching per model of a built repository on this
machine (each trial on its own tritonserver, measured by perf_analyzer on the search ensemble) and
write the best settings to the tuning file that `make build-repo` applies."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from shopsearch.errors import ShopSearchError
from shopsearch.perf.tune import TuneGrid, describe, tune

DEFAULT_QUERIES = Path(__file__).parent / "perf_data" / "search_queries.json"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=Path("model_repository"), help="a built repository (make build-repo)")
    parser.add_argument("--out", type=Path, default=Path("tuning/cpu.json"), help="tuning file build-repo reads")
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="perf_analyzer input data for the ensemble")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--measurement-ms", type=int, default=2000)
    parser.add_argument("--models", default=",".join(TuneGrid.models))
    parser.add_argument("--instances", default=",".join(map(str, TuneGrid.instance_counts)))
    parser.add_argument("--delays-us", default=",".join(map(str, TuneGrid.queue_delays_us)))
    parser.add_argument("--preferred", nargs="*", default=[",".join(map(str, p)) for p in TuneGrid.preferred_batch_sizes],
                        help='preferred batch size lists to try, e.g. "" "4,8,16" ("" = none)')
    args = parser.parse_args(argv)
    try:
        grid = TuneGrid(tuple(m for m in args.models.split(",") if m), _ints(args.instances), _ints(args.delays_us),
                        tuple(_ints(p) for p in args.preferred))
        with tempfile.TemporaryDirectory(prefix="shopsearch-tune-") as work:
            tuning = tune(args.repo, args.queries, Path(work), grid, args.concurrency, args.measurement_ms,
                          log=lambda m: print(m, flush=True))
        tuning.save(args.out)
    except ShopSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"tuned settings ({tuning.measured['seconds']} s):\n{describe(tuning)}")
    print(f"written: {args.out} (make build-repo applies it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
