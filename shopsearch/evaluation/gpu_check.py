"""`make gpu-check`: one prepared run on a CUDA host that has torch but no TensorRT, no tritonserver
and no network (the GPU machines lent to this project), in a few minutes.

1. training: the bi-encoder and the recommender, a few hundred steps each, on the CPU (the
   reference, capped at the 2 threads of this project's CPU machines) and on CUDA with bf16 autocast
   and with fp16 autocast + gradient scaling; final loss and a dev metric compared with the CPU run;
2. the embedder in torch FP16 and BF16 at batch 1-256 and sequence 32/64 (sequences/s, p50/p99 per
   batch), for the trained small encoder and the MiniLM-sized shapes of the large-model chain;
3. the catalog embedded on the GPU against the CPU FP32 artifact (the exported ONNX graph under
   ONNX Runtime): cosine and top-10 overlap of dev queries, and the time to embed a catalog of
   Home Depot's size.
Goals are recorded beside the numbers, never asserted. `--dry-run` runs every step on the CPU at a
tiny size (CUDA variants become CPU bf16), so the unit tier proves the script before a GPU sees it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HOME_DEPOT_PRODUCTS = 54_667  # the catalog size the embedding goal is stated for


@dataclass(frozen=True)
class GpuCheckPlan:
    products: int = 20_000
    queries: int = 14_000
    users: int = 6_000
    train_steps: int = 200
    rec_epochs: int = 2
    eval_queries: int = 400
    batches: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
    sequences: tuple[int, ...] = (32, 64)
    iterations: int = 30
    catalog_products: int = HOME_DEPOT_PRODUCTS
    cpu_threads: int = 2  # the CPU reference runs like this project's 2-core machines
    # The trained encoder (the synthetic recipe's) and the untrained shapes timed beside it:
    # label -> (vocab, hidden, layers, heads, ffn); MiniLM's and its 3-layer student's by default.
    encoder: tuple[int, int, int, int] = (256, 4, 4, 512)  # hidden, layers, heads, ffn
    shapes: tuple[tuple[str, int, int, int, int, int], ...] = (("minilm_6x384", 30522, 384, 6, 12, 1536),
                                                               ("student_3x384", 30522, 384, 3, 12, 1536))
    dry_run: bool = False

    @classmethod
    def tiny(cls) -> "GpuCheckPlan":
        """Every step at a size that proves the code in seconds on a CPU (the numbers mean nothing)."""
        return cls(products=300, queries=200, users=200, train_steps=3, rec_epochs=1, eval_queries=30,
                   batches=(1, 8), sequences=(16,), iterations=2, catalog_products=400, encoder=(32, 1, 2, 64),
                   shapes=(("wide_1x48", 500, 48, 1, 4, 96),), dry_run=True)


@dataclass(frozen=True)
class Variant:
    """One training run: where, and in which precision."""

    name: str
    device: str  # "cpu" or "cuda"
    amp: str  # "fp32", "bf16", "fp16" (fp16: with gradient scaling)


def variants(dry_run: bool) -> list[Variant]:
    if dry_run:  # every CUDA call replaced by the CPU; the code path is otherwise the same
        return [Variant("cpu_fp32", "cpu", "fp32"), Variant("cuda_bf16", "cpu", "bf16"), Variant("cuda_fp16", "cpu", "bf16")]
    return [Variant("cpu_fp32", "cpu", "fp32"), Variant("cuda_bf16", "cuda", "bf16"), Variant("cuda_fp16", "cuda", "fp16")]


def environment() -> dict:
    import onnxruntime
    import torch

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "onnxruntime": onnxruntime.__version__, "cpu_count": __import__("os").cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported())}


def shop(plan: GpuCheckPlan):
    from shopsearch.data.interactions import SessionConfig, generate_sessions
    from shopsearch.data.synthetic import SyntheticShopConfig, generate_shop

    dataset = generate_shop(SyntheticShopConfig(n_products=plan.products, n_queries=plan.queries))
    interactions = generate_sessions(dataset.products, SessionConfig(n_users=plan.users))
    return dataset, interactions


def train_search_variants(dataset, plan: GpuCheckPlan, work: Path, log) -> dict[str, dict]:
    """The synthetic recipe's encoder, `train_steps` steps per variant, one tokenizer for all (so
    every variant's vectors live in the same token space)."""
    from shopsearch.core.tokenization import train_wordpiece
    from shopsearch.train.biencoder import TrainConfig, train_biencoder

    tokenizer = work / "tokenizer.json"
    train_wordpiece([p.search_text() for p in dataset.products], vocab_size=8000).save(str(tokenizer))
    results = {}
    for variant in variants(plan.dry_run):
        hidden, layers, heads, ffn = plan.encoder
        cfg = TrainConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=ffn,
                          steps=plan.train_steps, eval_queries=plan.eval_queries, device=variant.device,
                          threads=plan.cpu_threads if variant.device == "cpu" else 0,
                          amp_bf16=variant.amp == "bf16", amp_fp16=variant.amp == "fp16")
        card = train_biencoder(dataset, cfg, work / f"search_{variant.name}", log=lambda m: None, tokenizer_file=tokenizer)
        results[variant.name] = {"device": card["device"], "amp": variant.amp, "final_loss": card["final_loss"],
                                 "ndcg@10": card["dev_metrics"].get("ndcg@10"),
                                 "step_ms": 1000 * card["seconds"]["train"] / plan.train_steps}
        log(f"search {variant.name}: loss {card['final_loss']:.4f}, dev nDCG@10 {results[variant.name]['ndcg@10']:.4f}, "
            f"{results[variant.name]['step_ms']:.1f} ms/step")
    return results


def train_rec_variants(interactions, plan: GpuCheckPlan, log) -> dict[str, dict]:
    from shopsearch.evaluation.recs import ModelScorer, evaluate_scorer
    from shopsearch.train.recommender import RecTrainConfig, train_recommender

    results = {}
    for variant in variants(plan.dry_run):
        cfg = RecTrainConfig(epochs=plan.rec_epochs, use_titles=False, device=variant.device,
                             threads=plan.cpu_threads if variant.device == "cpu" else 0,
                             mixed_precision=variant.amp != "fp32", cuda_amp="fp16" if variant.amp == "fp16" else "bf16")
        model, card = train_recommender(interactions, cfg, log=lambda m: None)
        metrics = evaluate_scorer(ModelScorer(model), interactions.histories, interactions.targets, interactions.item_ids)
        results[variant.name] = {"device": card["device"], "amp": variant.amp, "final_loss": card["loss_curve"][-1],
                                 "hr@10": metrics["hr@10"], "seconds": card["seconds"]}
        log(f"recommender {variant.name}: loss {card['loss_curve'][-1]:.4f}, HR@10 {metrics['hr@10']:.4f}")
    return results


def compare_to_cpu(results: dict[str, dict], metric: str, loss_tolerance: float, metric_tolerance: float) -> dict[str, dict]:
    """Each accelerated run against the CPU FP32 run: same recipe, so loss and quality must agree
    within what reduced precision and a different kernel order explain."""
    reference = results["cpu_fp32"]
    out = {}
    for name, row in results.items():
        if name == "cpu_fp32":
            continue
        loss_gap = abs(row["final_loss"] - reference["final_loss"]) / max(abs(reference["final_loss"]), 1e-9)
        metric_gap = abs(row[metric] - reference[metric])
        out[name] = {"relative_loss_gap": loss_gap, f"{metric}_gap": metric_gap,
                     "agrees": bool(loss_gap <= loss_tolerance and metric_gap <= metric_tolerance)}
    return out


def time_forward(model, batch: int, sequence: int, iterations: int, device) -> dict[str, float]:
    """p50/p99 ms per batch and sequences/s of the encoder's forward pass (CUDA: timed after a
    synchronize, so the number is the GPU's, not the launch's)."""
    import torch

    ids = torch.randint(5, model.config.vocab_size, (batch, sequence), device=device)
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for i in range(iterations + 3):  # 3 warm-up passes
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(ids, mask)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - started)
    p50 = float(np.percentile(times, 50))
    return {"p50_ms": 1000 * p50, "p99_ms": 1000 * float(np.percentile(times, 99)), "sequences_per_s": batch / p50}


def benchmark_encoders(trained_checkpoint: Path, plan: GpuCheckPlan, device, log) -> list[dict]:
    """The trained small encoder ("small"), plus the plan's other shapes (MiniLM's 6 x 384 and its
    3-layer student's) with random weights: a forward pass takes as long whatever the weights' values."""
    import torch

    from shopsearch.core.modeling import BiEncoder, EncoderConfig, load_checkpoint

    shapes = {"small": load_checkpoint(trained_checkpoint)[0]}
    for label, vocab, hidden, layers, heads, ffn in plan.shapes:
        shapes[label] = BiEncoder(EncoderConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                                                intermediate_size=ffn, max_positions=512))
    dtypes = {"fp32": torch.float32} if plan.dry_run else {"fp16": torch.float16, "bf16": torch.bfloat16}
    rows = []
    for label, model in shapes.items():
        for precision, dtype in dtypes.items():
            # Weights and arithmetic in the precision itself, as a served FP16 engine runs them.
            cast = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
            for sequence in plan.sequences:
                for batch in plan.batches:
                    rows.append({"encoder": label, "precision": precision, "batch": batch, "sequence": sequence,
                                 **time_forward(cast, batch, sequence, plan.iterations, device)})
            best = max(r["sequences_per_s"] for r in rows if r["encoder"] == label and r["precision"] == precision)
            log(f"{label} {precision}: up to {best:,.0f} sequences/s")
            del cast
    return rows


class DeviceEmbedder:
    """The PyTorch encoder on a device in a precision, behind the Embedder interface."""

    def __init__(self, model, device, dtype):
        import torch

        self.torch, self.device = torch, device
        self.model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()

    def embed(self, batch) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(batch.input_ids).to(self.device), torch.from_numpy(batch.attention_mask).to(self.device))
        return out.float().cpu().numpy()


def catalog_parity(checkpoint: Path, dataset, plan: GpuCheckPlan, device, work: Path, log) -> dict:
    """The catalog and dev queries embedded on the device in FP16 (BF16 beside it) against the CPU
    FP32 artifact (the exported ONNX graph under ONNX Runtime, as the CPU target serves it)."""
    import torch

    from shopsearch.core.embedding import OnnxEmbedder, embed_texts
    from shopsearch.core.index import top_k_rows
    from shopsearch.core.modeling import load_checkpoint
    from shopsearch.core.tokenization import TOKENIZER_FILE, TextEncoder
    from shopsearch.export.onnx import export_onnx

    model, _ = load_checkpoint(checkpoint)
    cfg = model.config
    products = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, cfg.max_product_length)
    queries = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, cfg.max_query_length)
    texts = [p.search_text() for p in dataset.products]
    dev_queries = list(dataset.split("dev")[0].values())[: plan.eval_queries]
    artifact = OnnxEmbedder(export_onnx(model, work / "model.fp32.onnx"))
    cpu_catalog, cpu_queries = embed_texts(artifact, products, texts), embed_texts(artifact, queries, dev_queries)
    reference_top = top_k_rows(cpu_queries @ cpu_catalog.T, 10)[0]
    out = {}
    precisions = {"fp32": torch.float32} if plan.dry_run else {"fp16": torch.float16, "bf16": torch.bfloat16}
    for precision, dtype in precisions.items():
        embedder = DeviceEmbedder(model, device, dtype)
        catalog, vectors = embed_texts(embedder, products, texts), embed_texts(embedder, queries, dev_queries)
        cosine = np.sum(catalog * cpu_catalog, axis=1) / (np.linalg.norm(catalog, axis=1) * np.linalg.norm(cpu_catalog, axis=1))
        top = top_k_rows(vectors @ catalog.T, 10)[0]
        overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(reference_top, top)]))
        large = (texts * (plan.catalog_products // len(texts) + 1))[: plan.catalog_products]
        embed_texts(embedder, products, large[:2048])  # warm-up: kernels chosen, memory pooled
        started = time.perf_counter()
        embed_texts(embedder, products, large)
        out[precision] = {"mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()), "top10_overlap": overlap,
                          "catalog_products": plan.catalog_products, "catalog_seconds": time.perf_counter() - started}
        log(f"catalog {precision} vs CPU FP32 artifact: mean cosine {cosine.mean():.5f}, top-10 overlap {overlap:.4f}, "
            f"{plan.catalog_products:,} products in {out[precision]['catalog_seconds']:.2f}s")
    return out


def goals(report: dict) -> list[dict]:
    """The issue's goals for the GPU run, each with what was measured: recorded, not asserted."""
    small = [r for r in report["encoders"] if r["encoder"] == "small" and r["sequence"] == max(report["plan"]["sequences"])]
    best = max((r["sequences_per_s"] for r in small if r["precision"] == ("fp32" if report["plan"]["dry_run"] else "fp16")), default=0.0)
    catalog = next(iter(report["catalog"].values()))
    search = report["training"]["search"]
    speedup = search["cpu_fp32"]["step_ms"] / search["cuda_bf16"]["step_ms"]
    return [
        {"goal": "small embedder >= 100k sequences/s at the longest sequence, FP16", "measured": best, "met": best >= 100_000},
        {"goal": f"catalog of {catalog['catalog_products']:,} titles embedded in < 2 s", "measured": catalog["catalog_seconds"],
         "met": catalog["catalog_seconds"] < 2.0},
        {"goal": "bf16 training step >= 20x the 2-thread CPU step", "measured": speedup, "met": speedup >= 20},
        {"goal": "device vectors within cosine 0.99 of the CPU FP32 artifact", "measured": catalog["mean_cosine"],
         "met": catalog["mean_cosine"] >= 0.99},
    ]


def checks(report: dict) -> list[dict]:
    """What must hold for the GPU path to be right (not fast): reported as passed or failed."""
    rows = [{"check": f"{name} catalog: mean cosine >= 0.99 and top-10 overlap >= 0.95 vs the CPU FP32 artifact",
             "passed": c["mean_cosine"] >= 0.99 and c["top10_overlap"] >= 0.95} for name, c in report["catalog"].items()]
    for kind in ("search", "recommender"):
        rows += [{"check": f"{kind} {name} agrees with the CPU run (loss, dev metric)", "passed": c["agrees"]}
                 for name, c in report["training"][f"{kind}_vs_cpu"].items()]
    return rows


def run_gpu_check(plan: GpuCheckPlan, out_dir: Path, log=print) -> dict:
    import torch

    if not plan.dry_run and not torch.cuda.is_available():
        from shopsearch.errors import BackendUnavailableError

        raise BackendUnavailableError("gpu-check: torch sees no CUDA device; run it on a GPU host, or --dry-run here")
    started = time.time()
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if plan.dry_run else "cuda")
    report: dict = {"plan": dataclasses.asdict(plan), "environment": environment()}
    log(f"gpu-check on {report['environment']['gpu'] or 'the CPU (dry run)'}: generating the shop")
    dataset, interactions = shop(plan)
    search = train_search_variants(dataset, plan, work, log)
    rec = train_rec_variants(interactions, plan, log)
    report["training"] = {"search": search, "search_vs_cpu": compare_to_cpu(search, "ndcg@10", 0.15, 0.03),
                          "recommender": rec, "recommender_vs_cpu": compare_to_cpu(rec, "hr@10", 0.15, 0.03)}
    trained = work / "search_cuda_bf16"
    report["encoders"] = benchmark_encoders(trained, plan, device, log)
    report["catalog"] = catalog_parity(trained, dataset, plan, device, work, log)
    report["checks"], report["goals"] = checks(report), goals(report)
    report["seconds"] = round(time.time() - started, 1)
    write_report(report, out_dir)
    log(f"gpu-check: {sum(c['passed'] for c in report['checks'])}/{len(report['checks'])} checks passed, "
        f"{sum(g['met'] for g in report['goals'])}/{len(report['goals'])} goals met, {report['seconds']}s -> {out_dir}")
    return report


def write_report(report: dict, out_dir: Path) -> None:
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    env = report["environment"]
    lines = [f"# gpu-check{' (dry run on the CPU: not GPU numbers)' if report['plan']['dry_run'] else ''}", "",
             f"{env['gpu'] or 'no GPU'}; Python {env['python']}, torch {env['torch']} (CUDA {env['cuda']}), "
             f"onnxruntime {env['onnxruntime']}; {report['seconds']} s in all.", "", "## Checks", ""]
    lines += [f"- {'PASS' if c['passed'] else 'FAIL'}: {c['check']}" for c in report["checks"]]
    lines += ["", "## Goals (recorded, not asserted)", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {g['measured']:,.4g} | {'yes' if g['met'] else 'no'} |" for g in report["goals"]]
    lines += ["", "## Training (same recipe and steps; CPU capped at the project's 2 threads)", "",
              "| model | run | device | precision | final loss | dev metric | time |", "|---|---|---|---|---|---|---|"]
    for name, row in report["training"]["search"].items():
        lines.append(f"| bi-encoder | {name} | {row['device']} | {row['amp']} | {row['final_loss']:.4f} | "
                     f"nDCG@10 {row['ndcg@10']:.4f} | {row['step_ms']:.1f} ms/step |")
    for name, row in report["training"]["recommender"].items():
        lines.append(f"| recommender | {name} | {row['device']} | {row['amp']} | {row['final_loss']:.4f} | "
                     f"HR@10 {row['hr@10']:.4f} | {row['seconds']} s |")
    lines += ["", "## Catalog on the device vs the CPU FP32 artifact", "",
              "| precision | mean cosine | min cosine | top-10 overlap | products | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {p} | {c['mean_cosine']:.5f} | {c['min_cosine']:.5f} | {c['top10_overlap']:.4f} | {c['catalog_products']:,} | "
              f"{c['catalog_seconds']:.2f} |" for p, c in report["catalog"].items()]
    lines += ["", "## Encoder forward pass", "", "| encoder | precision | sequence | batch | p50 ms | p99 ms | sequences/s |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['encoder']} | {r['precision']} | {r['sequence']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
              f"{r['sequences_per_s']:,.0f} |" for r in report["encoders"]]
    (out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")
