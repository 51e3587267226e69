"""In-process embedder benchmark: PyTorch eager vs each ONNX Runtime artifact, side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from shopsearch.core.embedding import OnnxEmbedder
from shopsearch.export.onnx import export_onnx
from shopsearch.core.modeling import load_checkpoint
from shopsearch.export.optimize import attention_shape, fuse_transformer, quantize_int8
from shopsearch.triton.repository import repository_size_bytes
from shopsearch.core.tokenization import EncodedBatch

BASELINE = "pytorch_eager_fp32"


def _time_calls(call, min_seconds: float, min_calls: int = 10) -> list[float]:
    for _ in range(3):  # warm-up: allocator, thread pools, lazy kernels
        call()
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < min_calls or time.perf_counter() - started < min_seconds:
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return latencies


def _load_seconds(factory, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        factory()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_models(checkpoint: Path, work: Path, batches=(1, 32), sequences=(16, 32, 64), threads: int = 2,
                 min_seconds: float = 1.0, repo: Path | None = None) -> dict:
    torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    cfg = model.config
    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(model, work / "model.fp32.onnx")
    shape = attention_shape(cfg) or (cfg.num_heads, cfg.hidden_size)
    fused, _ = fuse_transformer(fp32, work / "model.fused.onnx", *shape)
    int8 = quantize_int8(fused, work / "model.int8.onnx")
    files = {"onnxruntime_fp32": fp32, "onnxruntime_fused": fused, "onnxruntime_fused_int8": int8}
    sessions = {name: OnnxEmbedder(path, intra_op_threads=threads) for name, path in files.items()}

    def torch_call(batch: EncodedBatch):
        ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
        with torch.inference_mode():
            model(ids, mask)

    # As served: the INT8 embedder runs each query alone (see OnnxEmbedder.row_by_row).
    served_int8 = OnnxEmbedder(int8, intra_op_threads=threads, row_by_row=True)
    variants = {BASELINE: torch_call, **{name: session.embed for name, session in sessions.items()},
                "onnxruntime_fused_int8_rowwise": served_int8.embed}
    rng = np.random.default_rng(0)
    rows = []
    for batch_size in batches:
        for seq in sequences:
            if seq > cfg.max_positions:
                continue
            ids = rng.integers(5, cfg.vocab_size, size=(batch_size, seq), dtype=np.int64)
            batch = EncodedBatch(ids, np.ones_like(ids))
            for name, run in variants.items():
                if name.endswith("_rowwise") and batch_size == 1:
                    continue  # identical to the batched variant at batch 1
                latencies = _time_calls(lambda: run(batch), min_seconds)
                rows.append({
                    "variant": name, "batch": batch_size, "seq": seq, "calls": len(latencies),
                    "queries_per_s": batch_size * len(latencies) / sum(latencies),
                    "p50_ms": 1000 * float(np.percentile(latencies, 50)),
                    "p99_ms": 1000 * float(np.percentile(latencies, 99)),
                })
    # Intra-op threads for the served INT8 embedder: one Triton instance on a small machine.
    thread_rows = []
    ids = rng.integers(5, cfg.vocab_size, size=(1, 32), dtype=np.int64)
    single = EncodedBatch(ids, np.ones_like(ids))
    for n in sorted({1, threads}):
        session = OnnxEmbedder(int8, intra_op_threads=n, row_by_row=True)
        latencies = _time_calls(lambda: session.embed(single), min_seconds)
        thread_rows.append({"variant": "onnxruntime_fused_int8", "threads": n, "batch": 1, "seq": 32,
                            "queries_per_s": len(latencies) / sum(latencies),
                            "p50_ms": 1000 * float(np.percentile(latencies, 50)),
                            "p99_ms": 1000 * float(np.percentile(latencies, 99))})
    baseline = {(r["batch"], r["seq"]): r["queries_per_s"] for r in rows if r["variant"] == BASELINE}
    for row in rows:
        row["speedup_vs_pytorch"] = row["queries_per_s"] / baseline[(row["batch"], row["seq"])]
    load = {BASELINE: _load_seconds(lambda: load_checkpoint(checkpoint))}
    load.update({name: _load_seconds(lambda p=path: OnnxEmbedder(p, threads)) for name, path in files.items()})
    return {
        "checkpoint": str(checkpoint), "threads": threads, "rows": rows, "thread_rows": thread_rows,
        "model_load_s": load,
        "artifact_bytes": {name: path.stat().st_size for name, path in files.items()},
        "repository_bytes": repository_size_bytes(repo) if repo and repo.exists() else None,
    }


def format_table(report: dict) -> str:
    lines = [f"{'variant':<26} {'batch':>5} {'seq':>4} {'q/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x pytorch':>9}"]
    for r in report["rows"]:
        lines.append(f"{r['variant']:<26} {r['batch']:>5} {r['seq']:>4} {r['queries_per_s']:>9.1f} "
                     f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['speedup_vs_pytorch']:>9.2f}")
    for r in report["thread_rows"]:
        lines.append(f"int8 as served, batch 1 seq 32, {r['threads']} intra-op thread(s): {r['queries_per_s']:.1f} q/s, "
                     f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
    lines.append("model load (s): " + ", ".join(f"{k} {v:.3f}" for k, v in report["model_load_s"].items()))
    lines.append("artifact size (MB): " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in report["artifact_bytes"].items()))
    if report["repository_bytes"]:
        lines.append(f"repository size: {report['repository_bytes'] / 1e6:.1f} MB")
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
