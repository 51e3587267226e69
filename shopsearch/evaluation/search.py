"""`make eval`: retrieval quality of what is served, next to BM25, on the same queries in one run.

Systems: `served` (the `search` ensemble through tritonclient, on a server this run starts or at a
given URL), `in_process` (the same steps and artifacts in this process) and `bm25` (bm25s over the
same catalog text). Metrics come from pytrec_eval over each system's first 100 products from the
full catalog, unjudged products irrelevant.

`ablation`: training variants (checkpoints) measured in the same run on the same queries, each as
dense alone, reciprocal rank fusion with BM25 and (when it has one) its learned re-ranker, with its
PyTorch bi-encoder in this process: what each training step contributes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path

from shopsearch.data.schema import Dataset
from shopsearch.errors import DataError
from shopsearch.core.metrics import evaluate_run
from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.triton.repository import BUILD_MANIFEST

BATCH = 64
DEPTH = 100  # Recall@100 needs the first 100 products of each ranking
METRICS = ("ndcg@10", "recall@100", "mrr@10")


def _run(search, queries: dict[str, str], qids: list[str]) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(qids), BATCH):
        chunk = qids[start : start + BATCH]
        for qid, hits in zip(chunk, search([queries[q] for q in chunk], top_k=DEPTH)):
            run[qid] = {h.product_id: h.score for h in hits}
    return run


def _check_catalog(repo: Path, dataset: Dataset) -> None:
    manifest_path = repo / BUILD_MANIFEST
    if not manifest_path.exists():
        return
    built = json.loads(manifest_path.read_text()).get("catalog", {})
    if built.get("fingerprint") and built["fingerprint"] != dataset.fingerprint():
        raise DataError(f"{repo} was built for catalog '{built.get('dataset')}' ({built['fingerprint']}), not for "
                        f"'{dataset.name}' ({dataset.fingerprint()}): pass the DATA / DATA_DIR it was built with")


def training_summary(card: dict, tokenizer_json: str) -> dict:
    """What distinguishes one training variant from another, from its checkpoint card."""
    train = card.get("train_config", {})
    distill = card.get("distillation", {}).get("config")
    return {
        "steps": train.get("steps"), "mlm_steps": train.get("mlm_steps", 0), "hard_negatives": train.get("hard_negatives", 0),
        "distillation": ({k: distill[k] for k in ("kd_weight", "teacher_steps", "student_steps")} if distill else None),
        "tokenizer": hashlib.sha256(tokenizer_json.encode()).hexdigest()[:12],
        "train_seconds": card.get("seconds", {}).get("total"),
        "distill_seconds": card.get("distillation", {}).get("seconds"),
    }


def ablation_cards(dataset: Dataset, checkpoints: dict[str, Path]) -> dict[str, dict]:
    """Each variant's checkpoint card, once every one exists and was trained on this catalog:
    checked before minutes go into measuring any of them."""
    from shopsearch.core.modeling import CHECKPOINT_META

    cards = {}
    for label, path in checkpoints.items():
        path = Path(path)
        if not (path / CHECKPOINT_META).exists():
            raise DataError(f"ablation '{label}': no checkpoint at {path}")
        cards[label] = card = json.loads((path / CHECKPOINT_META).read_text())
        trained_on = card.get("dataset", {}).get("fingerprint")
        if trained_on and trained_on != dataset.fingerprint():
            raise DataError(f"ablation '{label}': {path} was trained on '{card['dataset'].get('name')}' ({trained_on}), "
                            f"not on '{dataset.name}' ({dataset.fingerprint()})")
    return cards


def evaluate_ablation(dataset: Dataset, checkpoints: dict[str, Path], split: str = "dev", limit: int = 0,
                      log=print) -> dict:
    """Each checkpoint's dense / RRF / re-ranked hybrid metrics on `split` (PyTorch FP32, in process)."""
    from shopsearch.train.reranker import RERANKER_DIR, CheckpointRanker
    from shopsearch.core.reranker import RerankerConfig, install_reranker, load_reranker
    from shopsearch.core.tokenization import TOKENIZER_FILE

    cards = ablation_cards(dataset, checkpoints)
    out = {}
    for label, path in checkpoints.items():
        started = time.time()
        path, card = Path(path), cards[label]
        reranker, rerank_card = (load_reranker(path / RERANKER_DIR) if (path / RERANKER_DIR).exists() else (None, None))
        rcfg = rerank_card["config"] if rerank_card else {"n_dense": RerankerConfig.n_dense, "n_lexical": RerankerConfig.n_lexical}
        ranker = CheckpointRanker.load(path, dataset, rcfg["n_dense"], rcfg["n_lexical"], rcfg.get("use_popularity", True))
        if reranker is not None:
            install_reranker(ranker.hybrid, reranker)
        out[label] = {"checkpoint": str(path), "training": training_summary(card, (path / TOKENIZER_FILE).read_text()),
                      **ranker.evaluate(split, limit), "seconds": round(time.time() - started, 1)}
        best = out[label].get("hybrid") or out[label]["dense"]
        log(f"ablation {label}: nDCG@10 {best['ndcg@10']:.4f}, Recall@100 {best['recall@100']:.4f} ({out[label]['seconds']}s)")
    return out


def evaluate_repository(repo: Path, dataset: Dataset, split: str = "dev", served_url: str | None = None,
                        limit: int = 0, serve: bool = False, bm25: bool = False,
                        ablation: dict[str, Path] | None = None, log=print) -> dict:
    """Metrics of the in-process pipeline and, on the same queries, of the served ensemble (at
    `served_url`, or on a server started here when `serve`), of BM25 (when `bm25`) and of the
    `ablation` checkpoints ({label: checkpoint})."""
    repo = Path(repo)
    _check_catalog(repo, dataset)
    if ablation:
        ablation_cards(dataset, ablation)
    queries, qrels = dataset.split(split)
    qids = sorted(queries)[: limit or None]
    judged = {q: qrels.get(q, {}) for q in qids}
    report: dict = {"dataset": dataset.name, "split": split, "queries": len(qids), "depth": DEPTH}

    def measure(name: str, make_run) -> None:
        t = time.time()
        report[name] = evaluate_run(make_run(), judged, dataset.relevant_min_gain)
        report[name]["seconds"] = round(time.time() - t, 1)

    if bm25:
        from shopsearch.lexical.bm25 import Bm25Index

        measure("bm25", lambda: Bm25Index(dataset.products).run(queries, qids, DEPTH))
    pipeline = InProcessEnsemble.from_repository(repo)
    measure("in_process", lambda: _run(pipeline.search, queries, qids))
    # What collapsing identical listings (the default) does to the numbers: the same pipeline with
    # every listing kept (COLLAPSE false). Judgments name product ids, so a collapsed duplicate
    # that was judged relevant too no longer counts.
    measure("in_process_all_listings", lambda: _run(functools.partial(pipeline.search, collapse=False), queries, qids))
    if served_url or serve:
        from shopsearch.clients.search import SearchClient
        from shopsearch.ops.server import TritonServer

        server = None if served_url else TritonServer(repo).start()
        client = SearchClient(served_url or server.http_url)
        try:
            measure("served", lambda: _run(client.search, queries, qids))
        finally:
            client.close()
            if server:
                server.stop()
    if ablation:
        report["ablation"] = evaluate_ablation(dataset, ablation, split, limit, log)
    report["comparisons"] = compare(report)
    return report


def compare(report: dict) -> dict:
    """The numbers a shop decides on: the served ensemble against BM25, and served against in-process."""
    out = {}
    ours = report.get("served") or report.get("in_process")
    if ours and "bm25" in report:
        bm25 = report["bm25"]
        out["ndcg@10_vs_bm25"] = round(ours["ndcg@10"] / bm25["ndcg@10"], 4) if bm25["ndcg@10"] else None
        out["recall@100_minus_bm25"] = round(ours["recall@100"] - bm25["recall@100"], 4)
    if "served" in report:
        out["max_abs_served_minus_in_process"] = round(
            max(abs(report["served"][m] - report["in_process"][m]) for m in METRICS), 6)
    return out


def _systems(report: dict) -> list[str]:
    return [s for s in ("bm25", "in_process", "in_process_all_listings", "served") if s in report]


def report_markdown(report: dict) -> str:
    lines = [f"# Retrieval quality: {report['dataset']} {report['split']} ({report['queries']} queries, "
             f"full catalog, unjudged = irrelevant)", "", "| system | nDCG@10 | Recall@100 | MRR@10 | seconds |",
             "|---|---|---|---|---|"]
    for system in _systems(report):
        r = report[system]
        lines.append(f"| {system} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['mrr@10']:.4f} | {r['seconds']} |")
    if report.get("comparisons"):
        lines += ["", *(f"- {k}: {v}" for k, v in report["comparisons"].items())]
    if report.get("ablation"):
        lines += ["", "## Ablation: training variants on the same queries (PyTorch FP32 bi-encoder, in process)", "",
                  "| variant | training | dense nDCG@10 | dense R@100 | + BM25, RRF nDCG@10 | re-ranked nDCG@10 | re-ranked R@100 | re-ranked MRR@10 |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, row in report["ablation"].items():
            t = row["training"]
            what = [f"{t['steps']} steps", f"tokenizer {t['tokenizer'][:6]}"]
            what += [f"MLM {t['mlm_steps']}"] if t["mlm_steps"] else []
            what += [f"hard negatives top {t['hard_negatives']}"] if t["hard_negatives"] else []
            if t["distillation"]:
                d = t["distillation"]
                what.append(f"cross-encoder teacher {d['teacher_steps']} steps, distilled in {d['student_steps']} more steps"
                            if d["kd_weight"] else f"{d['student_steps']} more steps on the same groups, no teacher")
            hybrid = row.get("hybrid")
            cells = [f"{hybrid[m]:.4f}" for m in METRICS] if hybrid else ["-", "-", "-"]
            lines.append(f"| {label} | {'; '.join(what)} | {row['dense']['ndcg@10']:.4f} | {row['dense']['recall@100']:.4f} | "
                         f"{row['rrf']['ndcg@10']:.4f} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems = _systems(report)
    x = np.arange(len(METRICS))
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, system in enumerate(systems):
        values = [report[system][m] for m in METRICS]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=system)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, METRICS)
    ax.set_ylim(0, 1.1)
    ax.set_title(f"{report['dataset']} {report['split']}: {report['queries']} queries")
    ax.legend(loc="upper center", ncol=max(len(systems), 1), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.json", out_dir / "report.md", out_dir / "metrics.png"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(report_markdown(report))
    plot_report(report, paths[2])
    if report.get("ablation"):
        paths.append(plot_ablation(report, out_dir / "ablation.png"))
    return paths


def plot_ablation(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(report["ablation"])
    stages = [("dense", "dense alone"), ("rrf", "+ BM25 (RRF)"), ("hybrid", "+ learned re-ranker")]
    x = np.arange(len(labels))
    width = 0.8 / len(stages)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4))
    for i, (key, name) in enumerate(stages):
        values = [report["ablation"][label].get(key, {}).get("ndcg@10", 0.0) for label in labels]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    if "bm25" in report:
        ax.axhline(report["bm25"]["ndcg@10"], color="grey", linestyle="--", linewidth=1, label="BM25")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("nDCG@10")
    ax.set_ylim(0, 1.3 * max(max(row.get("hybrid", row["dense"])["ndcg@10"] for row in report["ablation"].values()), 0.1))
    ax.set_title(f"{report['dataset']} {report['split']}: training ablation")
    ax.legend(fontsize=8, loc="upper center", ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
