"""`make bench-scale`: catalog search cost from 20k to 2M products per index kind (see
shopsearch.perf.bench_scale; this script is its command line)."""

from __future__ import annotations

import sys

from shopsearch.perf.bench_scale import main

if __name__ == "__main__":
    sys.exit(main())
