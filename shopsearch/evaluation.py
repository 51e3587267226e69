"""`make eval`: retrieval quality of what is served, next to BM25, on the same queries in one run.

Systems: `served` (the `search` ensemble through tritonclient, on a server this run starts or at a
given URL), `in_process` (the same steps and artifacts in this process) and `bm25` (bm25s over the
same catalog text). Metrics come from pytrec_eval over each system's first 100 products from the
full catalog, unjudged products irrelevant.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from shopsearch.data.schema import Dataset
from shopsearch.errors import DataError
from shopsearch.metrics import evaluate_run
from shopsearch.pipeline import SearchPipeline
from shopsearch.serving.repository import BUILD_MANIFEST

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


def evaluate_repository(repo: Path, dataset: Dataset, split: str = "dev", served_url: str | None = None,
                        limit: int = 0, serve: bool = False, bm25: bool = False) -> dict:
    """Metrics of the in-process pipeline and, on the same queries, of the served ensemble (at
    `served_url`, or on a server started here when `serve`) and of BM25 (when `bm25`)."""
    repo = Path(repo)
    _check_catalog(repo, dataset)
    queries, qrels = dataset.split(split)
    qids = sorted(queries)[: limit or None]
    judged = {q: qrels.get(q, {}) for q in qids}
    report: dict = {"dataset": dataset.name, "split": split, "queries": len(qids), "depth": DEPTH}

    def measure(name: str, make_run) -> None:
        t = time.time()
        report[name] = evaluate_run(make_run(), judged, dataset.relevant_min_gain)
        report[name]["seconds"] = round(time.time() - t, 1)

    if bm25:
        from shopsearch.lexical import Bm25Index

        measure("bm25", lambda: Bm25Index(dataset.products).run(queries, qids, DEPTH))
    measure("in_process", lambda: _run(SearchPipeline.from_repository(repo).search, queries, qids))
    if served_url or serve:
        from shopsearch.serving.client import SearchClient
        from shopsearch.serving.server import TritonServer

        server = None if served_url else TritonServer(repo).start()
        client = SearchClient(served_url or server.http_url)
        try:
            measure("served", lambda: _run(client.search, queries, qids))
        finally:
            client.close()
            if server:
                server.stop()
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
    return [s for s in ("bm25", "in_process", "served") if s in report]


def report_markdown(report: dict) -> str:
    lines = [f"# Retrieval quality: {report['dataset']} {report['split']} ({report['queries']} queries, "
             f"full catalog, unjudged = irrelevant)", "", "| system | nDCG@10 | Recall@100 | MRR@10 | seconds |",
             "|---|---|---|---|---|"]
    for system in _systems(report):
        r = report[system]
        lines.append(f"| {system} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['mrr@10']:.4f} | {r['seconds']} |")
    if report.get("comparisons"):
        lines += ["", *(f"- {k}: {v}" for k, v in report["comparisons"].items())]
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
    ax.legend(loc="upper center", ncol=len(systems), fontsize=8)
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
    return paths
