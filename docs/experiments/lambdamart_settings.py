"""How the Home Depot recipe's LambdaMART cascade was set: an experiment, not part of the product.

On a trained search checkpoint (bi-encoder + the 20% re-ranker holdout), in-process, with the
product's own training code (shopsearch.train.reranker.train_reranker):

1. tree settings (trees x learning rate, 15 leaves) of LambdaMART scoring every candidate:
   4-fold cross-validated nDCG@10 on the re-ranker's own queries, dev nDCG@10 (reported, never
   used to choose), and ONNX Runtime milliseconds per query on one thread (the exported graph,
   batches of 4 queries' candidates, as the served ranker calls it);
2. with the chosen trees, the cascade's head size: the MLP orders every candidate and the trees
   re-order its best k per query (k = 0: the MLP alone; "all": the trees alone), cross-validated
   the same way.

    .venv/bin/python docs/experiments/lambdamart_settings.py --checkpoint artifacts/checkpoints/homedepot \\
        --data-dir ../shared/data/homedepot

About 9 minutes on 2 cores (the catalog embedded once, candidate lists of 2,857 queries, 8 tree
settings and the MLP x 5 fits each, the cascade's 5 fits).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from shopsearch.core.hybrid import OnnxReranker
from shopsearch.core.metrics import evaluate_run
from shopsearch.core.reranker import RerankerConfig, reranker_scorer
from shopsearch.data.homedepot import load_homedepot
from shopsearch.export.reranker import export_reranker
from shopsearch.train.reranker import CheckpointRanker, candidate_lists, train_reranker

TREE_GRID = [(trees, rate) for trees in (50, 100, 200, 400) for rate in (0.03, 0.1)]
HEADS = (0, 10, 20, 30, 50, 100, None)  # None: the trees score every candidate


def query_lists(ranker: CheckpointRanker, split: str, limit: int) -> list[tuple]:
    qids, texts, vectors, judged = ranker.split_inputs(split, limit)
    lists = candidate_lists(ranker.hybrid, texts, vectors, judged, ranker.product_ids)
    rows = [ranker.hybrid.candidates(t, v)[0] for t, v in zip(texts, vectors)]
    return list(zip(qids, lists, rows, judged))


def cascade_scores(first, trees, features: np.ndarray, rows: np.ndarray, head: int | None) -> np.ndarray:
    """The served cascade's order (shopsearch.core.hybrid.HybridRanker.score_lists) for one list."""
    if first is None or head is None:
        return trees(features)
    s = first(features).astype(np.float64)
    if not head:
        return s
    order = np.lexsort((rows, -s))[:head]
    out = s - s.max() - 1e6  # below every re-ordered candidate, in the first stage's order
    out[order] = trees(features[order])
    return out


def metrics(score, items: list[tuple], ids: list[str], min_gain: int) -> dict[str, float]:
    run, qrels = {}, {}
    for qid, candidates, rows, judged in items:
        s = score(candidates.features, rows)
        top = np.lexsort((rows, -s))[:100]
        run[qid] = {ids[rows[i]]: float(s[i]) for i in top}
        qrels[qid] = judged
    return evaluate_run(run, qrels, min_gain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=0, help="queries per split (0: all); a smoke run")
    args = parser.parse_args()
    started = time.time()
    ranker = CheckpointRanker.load(args.checkpoint, load_homedepot(args.data_dir), 100, 150)
    rerank, dev = query_lists(ranker, "rerank", args.limit), query_lists(ranker, "dev", args.limit)
    ids, min_gain = ranker.product_ids, ranker.data.relevant_min_gain
    print(f"{len(rerank)} re-ranker queries, {len(dev)} dev queries ({time.time() - started:.0f}s)\n", flush=True)
    folds = np.random.default_rng(7).permutation(len(rerank)) % 4

    def fit(cfg: RerankerConfig, items: list[tuple]):
        return train_reranker([item[1] for item in items], cfg, log=lambda m: None)

    def cross_validated(make_score) -> float:
        """nDCG@10 pooled over the 4 held-out folds; `make_score(fold, train items)` -> score(features, rows)."""
        run, qrels = {}, {}
        for k in range(4):
            score = make_score(k, [item for item, f in zip(rerank, folds) if f != k])
            for qid, candidates, rows, judged in (item for item, f in zip(rerank, folds) if f == k):
                s = score(candidates.features, rows)
                run[qid] = {ids[rows[i]]: float(s[i]) for i in np.lexsort((rows, -s))[:100]}
                qrels[qid] = judged
        return evaluate_run(run, qrels, min_gain)["ndcg@10"]

    def onnx_ms(model) -> float:
        probe = np.concatenate([item[1].features for item in dev[:40]])
        batch = np.concatenate([item[1].features for item in dev[:4]])
        with tempfile.TemporaryDirectory() as tmp:
            export_reranker(model, Path(tmp) / "reranker.onnx", probe)
            session = OnnxReranker(Path(tmp) / "reranker.onnx")
            for _ in range(20):
                session(batch)
            t = time.perf_counter()
            for _ in range(200):
                session(batch)
        return (time.perf_counter() - t) / 200 / 4 * 1000

    print("| re-ranker | CV nDCG@10 | dev nDCG@10 / R@100 / MRR@10 | ONNX ms per query |\n|---|---|---|---|")
    base = dict(n_dense=100, n_lexical=150)
    settings = [("MLP", RerankerConfig(**base))] + [
        (f"LambdaMART {t} trees, lr {r}", RerankerConfig(kind="lambdamart", trees=t, tree_learning_rate=r, **base))
        for t, r in TREE_GRID]
    cv = {}
    for name, cfg in settings:
        def make(fold, train, cfg=cfg):
            score = reranker_scorer(fit(cfg, train))
            return lambda features, rows: score(features)

        cv[name] = cross_validated(make)
        model = fit(cfg, rerank)
        d = metrics(lambda f, rows, s=reranker_scorer(model): s(f), dev, ids, min_gain)
        print(f"| {name} | {cv[name]:.4f} | {d['ndcg@10']:.4f} / {d['recall@100']:.4f} / {d['mrr@10']:.4f} | "
              f"{onnx_ms(model):.3f} |", flush=True)
    best = max((n for n in cv if n != "MLP"), key=cv.get)
    trees_cfg = dict(settings)[best]
    print(f"\nchosen by CV: {best}\n\n| cascade: MLP top k -> trees | CV nDCG@10 | dev nDCG@10 |\n|---|---|---|", flush=True)
    mlp_cfg, stages = RerankerConfig(**base), {}  # fold ("all": every re-ranker query) -> (MLP, trees), fitted once

    for head in HEADS:
        def make_cascade(fold, train, head=head):
            if fold not in stages:
                stages[fold] = reranker_scorer(fit(mlp_cfg, train)), fit(trees_cfg, train)
            first, trees = stages[fold]
            return lambda features, rows: cascade_scores(first, trees, features, rows, head)

        d = metrics(make_cascade("all", rerank), dev, ids, min_gain)
        print(f"| {'all (trees alone)' if head is None else head} | {cross_validated(make_cascade):.4f} | {d['ndcg@10']:.4f} |",
              flush=True)
    print(f"\n{time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
