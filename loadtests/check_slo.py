"""Read Locust's aggregated statistics CSV and exit 1 when an SLO in slo.toml is broken."""

from __future__ import annotations

import argparse
import csv
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Triton 24.xx containers): the same parser as a package
    import tomli as tomllib
from pathlib import Path


def check(stats_csv: Path, slo: dict) -> list[str]:
    with open(stats_csv, newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows.get("Aggregated")
    if total is None:
        return [f"{stats_csv} has no Aggregated row"]
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    p99 = float(total["99%"]) if total["99%"] not in ("", "N/A") else float("inf")
    error_rate = failures / requests if requests else 1.0
    print(f"requests {requests}, failures {failures} ({error_rate:.2%}), p99 {p99:.0f} ms")
    broken = []
    if requests < slo["min_requests"]:
        broken.append(f"only {requests} requests (min_requests {slo['min_requests']})")
    if p99 > slo["p99_ms"]:
        broken.append(f"p99 {p99:.0f} ms > {slo['p99_ms']} ms")
    if error_rate > slo["max_error_rate"]:
        broken.append(f"error rate {error_rate:.2%} > {slo['max_error_rate']:.2%}")
    return broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stats_csv", type=Path, help="Locust's <prefix>_stats.csv")
    parser.add_argument("--slo", type=Path, default=Path(__file__).parent / "slo.toml")
    args = parser.parse_args(argv)
    broken = check(args.stats_csv, tomllib.loads(args.slo.read_text()))
    for problem in broken:
        print(f"SLO broken: {problem}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
