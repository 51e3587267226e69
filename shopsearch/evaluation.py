"""Retrieval quality of a built repository, measured on what is actually served."""

from __future__ import annotations

import time
from pathlib import Path

from shopsearch.data.schema import Dataset
from shopsearch.metrics import evaluate_run
from shopsearch.pipeline import SearchPipeline

BATCH = 64
DEPTH = 100  # Recall@100 needs the first 100 products of each ranking


def _run(search, queries: dict[str, str], qids: list[str]) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(qids), BATCH):
        chunk = qids[start : start + BATCH]
        for qid, hits in zip(chunk, search([queries[q] for q in chunk], top_k=DEPTH)):
            run[qid] = {h.product_id: h.score for h in hits}
    return run


def evaluate_repository(repo: Path, dataset: Dataset, split: str = "dev", served_url: str | None = None,
                        limit: int = 0) -> dict:
    """Metrics over the ensemble's first 100 products for the in-process pipeline and,
    when `served_url` is given, for the served ensemble on the same queries."""
    queries, qrels = dataset.split(split)
    qids = sorted(queries)[: limit or None]
    judged = {q: qrels.get(q, {}) for q in qids}
    report = {"dataset": dataset.name, "split": split, "queries": len(qids)}
    t = time.time()
    report["in_process"] = evaluate_run(_run(SearchPipeline.from_repository(repo).search, queries, qids),
                                        judged, dataset.relevant_min_gain)
    report["in_process"]["seconds"] = round(time.time() - t, 1)
    if served_url:
        from shopsearch.serving.client import SearchClient

        client = SearchClient(served_url)
        t = time.time()
        report["served"] = evaluate_run(_run(client.search, queries, qids), judged, dataset.relevant_min_gain)
        report["served"]["seconds"] = round(time.time() - t, 1)
        client.close()
    return report
