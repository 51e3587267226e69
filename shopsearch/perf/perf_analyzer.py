"""perf_analyzer sweeps: input data from real queries, runs per model, CSV parsing, plots, summary.

perf_analyzer ships in tritonclient[all]==2.50.0 (later wheels dropped it). It starts only when
libb64.so.0d and libcudart.so.12 are found (no GPU needed); `perf_analyzer_env` supplies both from
wheels already in the venv.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shopsearch.errors import ShopSearchError
from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.triton.repository import read_config
from shopsearch.serving.steps import QUERY

VENV_BIN = Path(sys.executable).parent
LIB_DIR = Path(sys.prefix) / "lib" / "perf_analyzer"


def perf_analyzer_env() -> dict[str, str]:
    """LD_LIBRARY_PATH with libcudart (nvidia-cuda-runtime-cu12 wheel) and libb64 (the copy the
    nvidia-pytriton wheel carries under a hashed name, linked under the name perf_analyzer wants)."""
    import nvidia.cuda_runtime

    cudart = Path(list(nvidia.cuda_runtime.__path__)[0]) / "lib"
    LIB_DIR.mkdir(parents=True, exist_ok=True)
    link = LIB_DIR / "libb64.so.0d"
    if not link.exists():
        if link.is_symlink():
            link.unlink()  # dangling: the venv was rebuilt or moved
        import pytriton

        candidates = sorted((Path(list(pytriton.__path__)[0]).parent / "nvidia_pytriton.libs").glob("libb64-*.so.0d"))
        if not candidates:
            raise ShopSearchError("perf_analyzer needs libb64.so.0d: not in the nvidia-pytriton wheel; apt-get install libb64-0d")
        link.symlink_to(candidates[0])
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(cudart), str(LIB_DIR), env.get("LD_LIBRARY_PATH")]))
    return env


def _entry(arrays: dict[str, np.ndarray]) -> dict:
    entry = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        content = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value.reshape(-1).tolist()]
        entry[name] = {"content": content, "shape": list(value.shape)}
    return entry


def ensemble_input_data(dataset, n: int = 200) -> dict:
    """perf_analyzer --input-data for the `search` ensemble: the first `n` distinct dev queries of
    `dataset` in sorted order (string inputs cannot be random; sorted keeps the file reproducible)."""
    queries = sorted(set(dataset.split("dev")[0].values()))[:n]
    if not queries:
        raise ShopSearchError(f"dataset {dataset.name}: no dev queries to write perf_analyzer input data from")
    return {"data": [_entry({QUERY: np.array([query])}) for query in queries]}


def query_input_data(queries: list[str]) -> dict:
    """perf_analyzer --input-data for the `search` ensemble replaying `queries` in this order
    (repeats included: a replayed log)."""
    return {"data": [_entry({QUERY: np.array([query])}) for query in queries]}


def write_input_data(repo: Path, queries: list[str], out_dir: Path) -> dict[str, Path]:
    """One perf_analyzer --input-data file per model, from real queries: each inner model gets the
    tensors the step before it really produces (e.g. token ids inside the vocabulary). Input names
    come from each model's config.pbtxt; shapes are per request, without the batch axis."""
    pipeline = InProcessEnsemble.from_repository(repo)
    models = ["search"] + [step.name for step in pipeline.steps]
    inputs = {m: [i.name for i in read_config(repo / m).input if not i.optional] for m in models}
    entries: dict[str, list[dict]] = {m: [] for m in models}
    for query in queries:
        state: dict[str, np.ndarray] = {QUERY: np.array([[query.encode("utf-8")]], dtype=object)}
        for step in [None, *pipeline.steps]:
            model = "search" if step is None else step.name
            entries[model].append(_entry({n: state[n][0] for n in inputs[model]}))
            if step is not None:
                outcome = step.run([dict(state)])[0]
                if isinstance(outcome, ShopSearchError):
                    raise outcome
                state.update(outcome)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for model in models:
        paths[model] = out_dir / f"{model}.json"
        paths[model].write_text(json.dumps({"data": entries[model]}))
    return paths


@dataclass(frozen=True)
class SweepPoint:
    model: str
    concurrency: int
    throughput: float
    p50_ms: float
    p99_ms: float
    queue_us: float
    compute_us: float


def run_perf_analyzer(model: str, url: str, input_data: Path, concurrency: list[int], csv_dir: Path,
                      measurement_ms: int = 2000, protocol: str = "grpc", stability_percentage: int = 25) -> list[SweepPoint]:
    """One perf_analyzer run per concurrency level (exact levels, e.g. 1, 2, 4, 8, 16), over
    `protocol` (grpc or http) to `url` (host:port of that protocol)."""
    csv_dir.mkdir(parents=True, exist_ok=True)
    env = perf_analyzer_env()
    points: list[SweepPoint] = []
    for level in concurrency:
        csv_path = csv_dir / f"{model}_{protocol}_c{level}.csv"
        command = [
            str(VENV_BIN / "perf_analyzer"), "-m", model, "-i", protocol, "-u", url, "--input-data", str(input_data),
            "--concurrency-range", f"{level}:{level}", "--measurement-interval", str(measurement_ms),
            "-f", str(csv_path), "--verbose-csv",
            # A 2-core machine running server and client is noisy: accept windows within 25% of
            # each other (default 10%) and try up to 20 windows before giving up.
            "--stability-percentage", str(stability_percentage), "--max-trials", "20",
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            tail = (result.stderr.strip() or result.stdout.strip())[-500:]
            raise ShopSearchError(f"perf_analyzer failed on {model} at concurrency {level} over {protocol} (exit {result.returncode}): {tail}")
        points += parse_csv(model, csv_path)
    return points


def measure_repository(repo: Path, input_data: Path, concurrency: int, work: Path, measurement_ms: int = 2000,
                       model: str = "search") -> SweepPoint:
    """Serve `repo` on a fresh tritonserver (free ports) and measure `model` over gRPC at one concurrency."""
    from shopsearch.ops.server import TritonServer

    # No response cache: perf_analyzer cycles through a few hundred queries, which the cache would
    # answer after one pass; this measures the models (make bench-scale measures the cache).
    with TritonServer(repo, log_path=work / "tritonserver.log", profiling=True, response_cache=False) as server:
        return run_perf_analyzer(model, server.grpc_url, input_data, [concurrency], work / "csv", measurement_ms)[0]


def parse_csv(model: str, path: Path) -> list[SweepPoint]:
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("Concurrency", "").isdigit()]
    return [
        SweepPoint(model, int(r["Concurrency"]), float(r["Inferences/Second"]), int(r["p50 latency"]) / 1000,
                   int(r["p99 latency"]) / 1000, float(r["Server Queue"]),
                   float(r["Server Compute Input"]) + float(r["Server Compute Infer"]) + float(r["Server Compute Output"]))
        for r in rows
    ]


def plot_sweep(points: list[SweepPoint], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in sorted({p.model for p in points}):
        series = sorted((p for p in points if p.model == model), key=lambda p: p.concurrency)
        ax.plot([p.p99_ms for p in series], [p.throughput for p in series], marker="o", label=model)
        for p in series:
            ax.annotate(f"c{p.concurrency}", (p.p99_ms, p.throughput), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (inferences/s)")
    ax.set_title("perf_analyzer sweep: throughput vs p99 (labels: concurrency)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_markdown(points: list[SweepPoint]) -> str:
    lines = ["| model | concurrency | infer/s | p50 ms | p99 ms | server queue us | server compute us |",
             "|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p.model, p.concurrency)):
        lines.append(f"| {p.model} | {p.concurrency} | {p.throughput:.1f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | "
                     f"{p.queue_us:.0f} | {p.compute_us:.0f} |")
    return "\n".join(lines) + "\n"
