"""`make rescoring`: what a cross-encoder re-scoring the served top-k would buy, per millisecond.

The served `search` ensemble answers a query with its re-ranker's top 100. A cross-encoder reads the
query and each title together (`shopsearch.compress.distillation.CrossEncoder`), which is more
accurate and costs a transformer pass per (query, product) pair instead of one per query. Before it
becomes a served stage, this measures it in-process on the dev split:
- quality: the built ensemble's top 100 (in-process == served, held by the integration tests) as is,
  and with its first `depth` products re-ordered by the cross-encoder alone or by the sum of both
  scores' within-list z-scores (equal weights: nothing is tuned on the split reported);
- cost: CPU milliseconds per query of scoring `depth` pairs on one thread (one model instance on one
  core), against the ensemble's own in-process milliseconds per query on one thread.
Re-ordering inside the top 100 changes nDCG@10 and MRR@10, never Recall@100.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from shopsearch.compress.distillation import LEXICAL_RANK_DEPTH, PairEncoder, load_cross_encoder, score_pairs
from shopsearch.core.hybrid import LexicalScorer, lexical_features
from shopsearch.core.metrics import evaluate_run
from shopsearch.core.tokenization import TOKENIZER_FILE
from shopsearch.data.schema import Dataset
from shopsearch.errors import ConfigError
from shopsearch.evaluation.search import DEPTH, METRICS
from shopsearch.serving.pipeline import InProcessEnsemble

TIMED_QUERIES = 100  # queries the per-query milliseconds are timed over


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-6)


def rescored(ids: list[str], base: np.ndarray, cross: np.ndarray, blend: bool) -> dict[str, float]:
    """One query's run: its first len(cross) products re-ordered (by the cross-encoder, or by the
    sum of both z-scores), placed above the rest, which keep the ensemble's order."""
    depth = len(cross)
    key = _zscore(cross) + _zscore(base[:depth]) if blend else cross
    order = np.argsort(-key, kind="stable")
    ranked = [ids[i] for i in order] + ids[depth:]
    return {pid: float(len(ranked) - r) for r, pid in enumerate(ranked)}


def measure_rescoring(repo: Path, cross_encoder_dir: Path, dataset: Dataset, depths: tuple[int, ...] = (20, 50),
                      split: str = "dev", limit: int = 0, log=print) -> dict:
    if not depths or min(depths) < 1 or max(depths) > DEPTH:
        raise ConfigError("rescoring", "depth", f"each depth must be within 1..{DEPTH}, got {list(depths)}")
    model, card = load_cross_encoder(cross_encoder_dir)
    tokenizer_json = (Path(cross_encoder_dir) / TOKENIZER_FILE).read_text()
    cfg = card["config"]
    pairs = PairEncoder(tokenizer_json, cfg["max_query_tokens"], model.config.max_product_length, model.config.max_positions)
    lexical = LexicalScorer.build(dataset.products) if model.n_features else None  # as the cross-encoder trained
    row_of = {p.product_id: i for i, p in enumerate(dataset.products)}
    text = {p.product_id: p.search_text() for p in dataset.products}
    queries, qrels = dataset.split(split)
    qids = sorted(queries)[: limit or None]
    if not qids:
        raise ConfigError("rescoring", "split", f"{dataset.name} has no {split} queries")
    judged = {q: qrels.get(q, {}) for q in qids}
    from tqdm.auto import tqdm

    pipeline = InProcessEnsemble.from_repository(repo)
    hits = {}
    for start in range(0, len(qids), 64):
        chunk = qids[start : start + 64]
        for qid, answer in zip(chunk, pipeline.search([queries[q] for q in chunk], top_k=DEPTH)):
            hits[qid] = ([h.product_id for h in answer], np.array([h.score for h in answer], dtype=np.float32))

    def cross_scores(qid: str, depth: int) -> np.ndarray:
        ids = hits[qid][0][:depth]
        if not ids:
            return np.zeros(0, np.float32)
        features = (lexical_features(lexical, queries[qid], np.array([row_of[p] for p in ids], dtype=np.int64), LEXICAL_RANK_DEPTH)
                    if lexical is not None else None)
        return score_pairs(model, pairs, [queries[qid]] * len(ids), [text[p] for p in ids], features)

    base_run = {q: {pid: float(DEPTH - r) for r, pid in enumerate(hits[q][0])} for q in qids}
    report: dict = {"dataset": dataset.name, "split": split, "queries": len(qids), "repository": str(repo),
                    "cross_encoder": {"path": str(cross_encoder_dir), "layers": model.config.num_layers,
                                      "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                                      "trained": card.get("teacher_dev")},
                    "ensemble": _metrics(base_run, judged, dataset), "depths": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one instance on one core, as the ensemble's timing below
    try:
        timed = qids[:TIMED_QUERIES]
        t = time.perf_counter()
        for q in timed:
            pipeline.search([queries[q]], top_k=DEPTH)
        report["ensemble_ms_per_query"] = round(1000 * (time.perf_counter() - t) / max(1, len(timed)), 2)
        for depth in sorted(depths):
            bar = tqdm(total=len(qids), desc=f"cross-encoder, top {depth}", unit="query", disable=None)
            t = time.perf_counter()
            scored = {}
            for q in qids:
                scored[q] = cross_scores(q, depth)
                bar.update()
                if q == timed[-1]:
                    ms = 1000 * (time.perf_counter() - t) / len(timed)
            bar.close()
            runs = {blend: {q: rescored(hits[q][0], hits[q][1], scored[q], blend) if scored[q].size else base_run[q] for q in qids}
                    for blend in (False, True)}
            row = {"depth": depth, "cross_encoder_ms_per_query": round(ms, 2),
                   "cross_encoder_order": _metrics(runs[False], judged, dataset), "blend": _metrics(runs[True], judged, dataset)}
            report["depths"].append(row)
            log(f"rescoring top {depth}: nDCG@10 {row['cross_encoder_order']['ndcg@10']:.4f} (cross-encoder), "
                f"{row['blend']['ndcg@10']:.4f} (blend) vs {report['ensemble']['ndcg@10']:.4f}; {row['cross_encoder_ms_per_query']} ms/query")
    finally:
        torch.set_num_threads(threads)
    return report


def _metrics(run: dict, judged: dict, dataset: Dataset) -> dict[str, float]:
    measured = evaluate_run(run, judged, dataset.relevant_min_gain)
    return {m: round(measured[m], 4) for m in METRICS}


def rescoring_markdown(report: dict) -> str:
    base, ms = report["ensemble"], report["ensemble_ms_per_query"]
    ce = report["cross_encoder"]
    lines = [f"# Cross-encoder re-scoring of the served top k: {report['dataset']} {report['split']} ({report['queries']} queries)", "",
             f"Cross-encoder: {ce['layers']} layers, {ce['parameters_m']} M parameters ({ce['path']}); ensemble: {report['repository']}. "
             "Milliseconds: CPU per query on one thread (one instance on one core).", "",
             "| system | nDCG@10 | MRR@10 | Recall@100 | ms / query | gain in nDCG@10 per added ms |",
             "|---|---|---|---|---|---|",
             f"| ensemble as served | {base['ndcg@10']:.4f} | {base['mrr@10']:.4f} | {base['recall@100']:.4f} | {ms} | - |"]
    for row in report["depths"]:
        for name, key in (("cross-encoder order", "cross_encoder_order"), ("blend of both", "blend")):
            m, added = row[key], row["cross_encoder_ms_per_query"]
            lines.append(f"| + top {row['depth']} re-scored, {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@100']:.4f} | "
                         f"{ms} + {added} | {(m['ndcg@10'] - base['ndcg@10']) / added:+.5f} |")
    return "\n".join(lines) + "\n"


def write_rescoring(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rescoring.json").write_text(json.dumps(report, indent=2))
    (out / "rescoring.md").write_text(rescoring_markdown(report))
    return [out / "rescoring.json", out / "rescoring.md"]
