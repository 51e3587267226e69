"""`make tune`: find instance counts and dynamic-batching settings per model for this machine.

Coordinate descent on the served `search` ensemble: for each model in turn, try each value of one
setting (instances, then max queue delay, then preferred batch sizes) with everything else at the
best found so far, each trial on a fresh tritonserver serving a hard-linked variant of the built
repository, measured by perf_analyzer at the target concurrency. A trial replaces the best only
when it is clearly faster (`min_gain`) and its p99 is no worse than `p99_slack` allows, so noise
on a small shared machine does not flip settings back and forth.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from shopsearch.errors import ConfigError, ShopSearchError
from shopsearch.perf.perf_analyzer import SweepPoint, measure_repository
from shopsearch.triton.repository import BUILD_MANIFEST
from shopsearch.triton.tuning import REQUEST_ISOLATED, TUNED_MODELS, Tuning, current_tuning, variant_repository


@dataclass(frozen=True)
class TuneGrid:
    models: tuple[str, ...] = ("ranker", "embedder", "tokenizer", "postprocess")
    instance_counts: tuple[int, ...] = (1, 2)
    queue_delays_us: tuple[int, ...] = (100, 1000, 4000)
    preferred_batch_sizes: tuple[tuple[int, ...], ...] = ((), (4, 8, 16))

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in TUNED_MODELS]
        if unknown:
            raise ConfigError("tune", "models", f"unknown {unknown}; tunable: {list(TUNED_MODELS)}")

    def dimensions(self, model: str) -> list[tuple[str, tuple]]:
        if model in REQUEST_ISOLATED:
            return [("instance_count", self.instance_counts)]
        return [("instance_count", self.instance_counts), ("max_queue_delay_us", self.queue_delays_us),
                ("preferred_batch_sizes", self.preferred_batch_sizes)]


def machine_description() -> dict:
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor() or None,
            "system": f"{platform.system()} {platform.release()}"}


def _point(point: SweepPoint) -> dict:
    return {"throughput": round(point.throughput, 1), "p50_ms": round(point.p50_ms, 2), "p99_ms": round(point.p99_ms, 2)}


def tune(repo: Path, input_data: Path, work: Path, grid: TuneGrid = TuneGrid(), concurrency: int = 16,
         measurement_ms: int = 2000, min_gain: float = 0.05, p99_slack: float = 0.10, log=print) -> Tuning:
    repo = Path(repo)
    if not (repo / BUILD_MANIFEST).exists():
        raise ShopSearchError(f"{repo} is not a built repository (no {BUILD_MANIFEST}): run make build-repo")
    started = time.time()
    trial_number = 0

    def measure(tuning: Tuning) -> SweepPoint:
        nonlocal trial_number
        trial_number += 1
        trial_dir = work / f"trial_{trial_number:02d}"
        variant = variant_repository(repo, work / "repository", tuning)
        return measure_repository(variant, input_data, concurrency, trial_dir, measurement_ms)

    best = current_tuning(repo)
    best_point = measure(best)
    baseline_point = best_point
    log(f"baseline (as built): {best_point.throughput:.1f} infer/s, p99 {best_point.p99_ms:.1f} ms")
    trials = [{"model": None, "settings": None, **_point(best_point), "kept": True}]
    for model in grid.models:
        for dimension, values in grid.dimensions(model):
            for value in values:
                candidate = dataclasses.replace(best.settings(model), **{dimension: value})
                if candidate == best.settings(model):
                    continue
                tuning = Tuning({**best.models, model: candidate})
                point = measure(tuning)
                kept = (point.throughput >= best_point.throughput * (1 + min_gain)
                        and point.p99_ms <= best_point.p99_ms * (1 + p99_slack))
                trials.append({"model": model, "settings": candidate.label(), **_point(point), "kept": kept})
                log(f"{model} {candidate.label()}: {point.throughput:.1f} infer/s, p99 {point.p99_ms:.1f} ms"
                    + ("  <- best so far" if kept else ""))
                if kept:
                    best, best_point = tuning, point
    measured = {
        "machine": machine_description(),
        "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "repository": str(repo),
        "ensemble": "search",
        "concurrency": concurrency,
        "measurement_ms": measurement_ms,
        "rule": f"keep a trial when throughput >= {1 + min_gain:.2f}x the best so far and p99 <= {1 + p99_slack:.2f}x",
        "as_built": _point(baseline_point),
        "best": _point(best_point),
        "trials": trials,
        "seconds": round(time.time() - started, 1),
    }
    return Tuning(dict(best.models), measured)


def describe(tuning: Tuning) -> str:
    lines = [f"  {model}: {settings.label()}" for model, settings in sorted(tuning.models.items())]
    m = tuning.measured
    if m:
        lines.append(f"  search @ concurrency {m['concurrency']}: as built {m['as_built']['throughput']} infer/s "
                     f"(p99 {m['as_built']['p99_ms']} ms) -> tuned {m['best']['throughput']} infer/s (p99 {m['best']['p99_ms']} ms)")
    return "\n".join(lines)

