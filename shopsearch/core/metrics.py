"""Ranking metrics through pytrec_eval (the reference trec_eval implementation)."""

from __future__ import annotations

import pytrec_eval

# pytrec_eval measure name -> the name we report.
_GRADED = {"ndcg_cut_10": "ndcg@10"}
_BINARY = {"recall_100": "recall@100"}


def evaluate_run(
    run: dict[str, dict[str, float]],
    qrels: dict[str, dict[str, int]],
    relevant_min_gain: int,
) -> dict[str, float]:
    """Mean nDCG@10 (graded gains), Recall@100 and MRR@10 over queries with >= 1 relevant product.

    Products missing from a query's judgments are irrelevant. `run` holds each query's retrieved
    products with scores over the full catalog.
    """
    judged = {q: j for q, j in qrels.items() if any(g >= relevant_min_gain for g in j.values())}
    run = {q: run.get(q, {}) for q in judged}
    graded = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10"})
    binary = pytrec_eval.RelevanceEvaluator(judged, {"recall.100"}, relevance_level=relevant_min_gain)
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}, relevance_level=relevant_min_gain)
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:10]) for q, docs in run.items()}
    per_query = [graded.evaluate(run), binary.evaluate(run), rr.evaluate(top10)]
    n = max(len(judged), 1)
    out = {"queries": float(len(judged))}
    for name, label in {**_GRADED, **_BINARY}.items():
        source = per_query[0] if name in _GRADED else per_query[1]
        out[label] = sum(m[name] for m in source.values()) / n
    out["mrr@10"] = sum(m["recip_rank"] for m in per_query[2].values()) / n
    return out
