"""Leave-one-out evaluation with full ranking: every catalog item is a candidate except what the user
already has; HR@10 and NDCG@10 of the held-out next item, through pytrec_eval."""

from __future__ import annotations

import numpy as np
import pytrec_eval

from shopsearch.core.index import top_k_rows

CUTOFF = 10


def top_items_excluding_history(scores: np.ndarray, histories: list[list[int]], k: int = CUTOFF) -> np.ndarray:
    """[users, k] item rows by descending score (ties: lower row first), history items removed."""
    scores = scores.astype(np.float32, copy=True)
    for row, history in enumerate(histories):
        if history:
            scores[row, history] = -np.inf
    return top_k_rows(scores, k)[0]


def leave_one_out_metrics(ranked: list[list[str]], targets: list[str]) -> dict[str, float]:
    """`ranked[u]`: user u's recommended item ids, best first (at least the first CUTOFF are used);
    `targets[u]`: the held-out item. HR@10 = trec_eval's success@10, NDCG@10 = ndcg_cut@10."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} rankings for {len(targets)} targets")
    qrels = {str(u): {t: 1} for u, t in enumerate(targets)}
    # Scores that reproduce the given order exactly (trec_eval sorts by score, then by id).
    run = {str(u): {item: float(CUTOFF - pos) for pos, item in enumerate(items[:CUTOFF]) if item}
           for u, items in enumerate(ranked)}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"success.10", "ndcg_cut.10"})
    per_user = evaluator.evaluate(run)
    n = max(len(targets), 1)
    return {
        "users": float(len(targets)),
        "hr@10": sum(m["success_10"] for m in per_user.values()) / n,
        "ndcg@10": sum(m["ndcg_cut_10"] for m in per_user.values()) / n,
    }


def evaluate_scorer(scorer, histories: list[list[int]], targets: list[int], item_ids: list[str],
                    batch_size: int = 2048) -> dict[str, float]:
    """In-process evaluation of anything with `scores(histories) -> [users, items]`."""
    ranked: list[list[str]] = []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start : start + batch_size]
        top = top_items_excluding_history(scorer.scores(chunk), chunk)
        ranked.extend([[item_ids[i] for i in row] for row in top])
    return leave_one_out_metrics(ranked, [item_ids[t] for t in targets])


class ModelScorer:
    """The PyTorch recommender as a scorer over the whole catalog (the in-process reference)."""

    name = "model (in-process)"

    def __init__(self, model):
        import torch

        self.torch, self.model = torch, model.eval()
        self.vectors = torch.from_numpy(model.catalog_vectors())

    def scores(self, histories: list[list[int]]) -> np.ndarray:
        from shopsearch.core.recommender import pack

        cfg = self.model.config
        rows = pack([h[-cfg.max_length :] for h in histories], cfg.padding_item, cfg.max_length)
        with self.torch.inference_mode():
            users = self.model(self.torch.from_numpy(rows))
        return (users @ self.vectors.T).numpy()
