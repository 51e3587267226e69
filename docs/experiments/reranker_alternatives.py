"""What else might lift the hybrid ranker on Home Depot: an experiment, not part of the product.

Measured on a trained search checkpoint (bi-encoder + the 20% re-ranker holdout), in-process,
against the re-ranker it ships (the listwise MLP of `shopsearch.train.reranker`):

1. query-log features: how well the query matches the train queries the bi-encoder's share of the
   judgments names a product for (BM25 over each product's "query document": every such query, or
   only those judging it relevant), the product's mean judged gain, and a k-nearest-train-queries
   vote with the checkpoint's own query embeddings;
2. LambdaMART (LightGBM `lambdarank`) instead of the MLP on the same 12 features, its settings
   chosen by 4-fold cross-validation over the re-ranker's own training queries (never on dev);
3. more training queries for the re-ranker: the bi-encoder's 80% added (popularity counted
   leave-one-query-out), against the learning curve of the 20% alone.

Every number is dev nDCG@10 / Recall@100 / MRR@10, mean of two seeds.
LambdaMART has since become a re-ranker kind of the product (`[rerank] kind = "lambdamart"`,
shopsearch.train.reranker.train_lambdamart); this script keeps its own fit, as it was measured.

    .venv/bin/python docs/experiments/reranker_alternatives.py --checkpoint artifacts/checkpoints/homedepot \\
        --data-dir ../shared/data/homedepot

42 minutes on 2 cores shared with other jobs (the catalog embedded once, candidate lists of 9,359
queries, 7 LambdaMART settings x 4 folds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from shopsearch.core.embedding import embed_texts
from shopsearch.core.metrics import evaluate_run
from shopsearch.core.reranker import RerankerConfig, torch_scorer
from shopsearch.data.homedepot import load_homedepot
from shopsearch.train.reranker import CandidateList, CheckpointRanker, train_reranker

POPULARITY = 9  # column of popularity_log in FEATURE_NAMES
SEEDS = (0, 1)


class QueryLog:
    """Query-log features of candidate rows, from the judgments of the `train` split only (the
    bi-encoder's share: the re-ranker's own queries never leak their labels into them)."""

    def __init__(self, ranker: CheckpointRanker):
        import bm25s
        import scipy.sparse as sp
        import Stemmer

        data, ids = ranker.data, ranker.product_ids
        row = {p: i for i, p in enumerate(ids)}
        queries, qrels = data.queries["train"], data.qrels["train"]
        docs_all, docs_rel = [[] for _ in ids], [[] for _ in ids]
        gain_sum, gain_n = np.zeros(len(ids), np.float32), np.zeros(len(ids), np.float32)
        for q, judged in qrels.items():
            for p, g in judged.items():
                if p in row:
                    docs_all[row[p]].append(queries[q])
                    gain_sum[row[p]] += g
                    gain_n[row[p]] += 1
                    if g >= data.relevant_min_gain:
                        docs_rel[row[p]].append(queries[q])
        self.stemmer, self.bm25s = Stemmer.Stemmer("english"), bm25s
        self.indexes = [self._index([" ".join(d) for d in docs]) for docs in (docs_all, docs_rel)]
        self.mean_gain = np.where(gain_n > 0, gain_sum / np.maximum(gain_n, 1), 0).astype(np.float32)
        qids = sorted(queries)
        self.vectors = embed_texts(ranker.embedder, ranker.enc_q, [queries[q] for q in qids])
        r, c, v = zip(*[(i, row[p], g / 6.0) for i, q in enumerate(qids) for p, g in qrels[q].items() if p in row])
        self.gains = sp.csr_matrix((v, (r, c)), shape=(len(qids), len(ids)), dtype=np.float32)

    def _index(self, texts):
        retriever = self.bm25s.BM25(k1=1.2, b=0.75)
        retriever.index(self.bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False), show_progress=False)
        return retriever

    def _bm25(self, retriever, text: str, rows: np.ndarray) -> np.ndarray:
        tokens = self.bm25s.tokenize([text], stopwords="en", stemmer=self.stemmer, show_progress=False, return_ids=False)[0]
        ids = [retriever.vocab_dict[t] for t in tokens if t in retriever.vocab_dict]
        return retriever.get_scores(ids)[rows].astype(np.float32) if ids else np.zeros(rows.size, np.float32)

    def features(self, text: str, vector: np.ndarray, rows: np.ndarray, k: int = 20) -> dict[str, np.ndarray]:
        sims = self.vectors @ vector
        top = np.argpartition(-sims, k)[:k]
        weights = np.maximum(sims[top], 0) ** 4
        vote = self.gains[top].multiply(weights[:, None]).sum(axis=0).A1[rows] / (weights.sum() + 1e-9)
        best = self.gains[top].multiply(sims[top][:, None]).max(axis=0).toarray().ravel()[rows]
        return {"qlog_all": self._bm25(self.indexes[0], text, rows)[:, None],
                "qlog_rel": self._bm25(self.indexes[1], text, rows)[:, None],
                "mean_gain": self.mean_gain[rows][:, None],
                "knn": np.stack([vote, best], axis=1).astype(np.float32)}


def candidate_lists(ranker: CheckpointRanker, qlog: QueryLog, split: str, limit: int = 0) -> list[dict]:
    qids, texts, vectors, judged = ranker.split_inputs(split, limit)
    lists = []
    for qid, text, vector, j in zip(qids, texts, vectors, judged):
        rows, features = ranker.hybrid.candidates(text, vector)
        gains = np.array([j.get(ranker.product_ids[r], 0) for r in rows], np.float32)
        lists.append({"qid": qid, "rows": rows, "base": features, "extra": qlog.features(text, vector, rows),
                      "gains": gains, "judged": j, "judged_mask": np.array([ranker.product_ids[r] in j for r in rows], np.float32)})
    return lists


def matrix(item: dict, extra: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([item["base"], *[item["extra"][name] for name in extra]], axis=1)


def dev_metrics(score, dev: list[dict], extra: tuple[str, ...], ids: list[str], min_gain: int) -> dict[str, float]:
    run, qrels = {}, {}
    for item in dev:
        s = score(matrix(item, extra))
        top = np.lexsort((item["rows"], -s))[:100]
        run[item["qid"]] = {ids[item["rows"][i]]: float(s[i]) for i in top}
        qrels[item["qid"]] = item["judged"]
    return evaluate_run(run, qrels, min_gain)


def fit_mlp(train: list[dict], extra: tuple[str, ...], seed: int):
    lists = [CandidateList(matrix(item, extra), item["gains"]) for item in train]
    return torch_scorer(train_reranker(lists, RerankerConfig(seed=seed), log=lambda m: None))


def fit_lambdamart(train: list[dict], extra: tuple[str, ...], seed: int, rounds: int, leaves: int, rate: float):
    import lightgbm

    x = np.concatenate([matrix(item, extra) for item in train])
    y = np.concatenate([item["gains"] for item in train]).astype(int)
    params = dict(objective="lambdarank", learning_rate=rate, num_leaves=leaves, min_data_in_leaf=50, bagging_fraction=0.8,
                  bagging_freq=1, feature_fraction=0.8, seed=seed, verbose=-1, label_gain=[2 ** g - 1 for g in range(7)],
                  lambdarank_truncation_level=20, num_threads=2)
    model = lightgbm.train(params, lightgbm.Dataset(x, y, group=[len(item["gains"]) for item in train]), num_boost_round=rounds)
    return lambda features: model.predict(features, num_threads=1)


def report(name: str, results: list[dict[str, float]]) -> None:
    cells = " / ".join(f"{np.mean([r[k] for r in results]):.4f}" for k in ("ndcg@10", "recall@100", "mrr@10"))
    per_seed = ", ".join(f"{r['ndcg@10']:.4f}" for r in results)
    print(f"| {name} | {cells} | {per_seed} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=0, help="queries per split (0: all); a smoke run")
    args = parser.parse_args()
    started = time.time()
    ranker = CheckpointRanker.load(args.checkpoint, load_homedepot(args.data_dir), 100, 150)
    qlog = QueryLog(ranker)
    lists = {split: candidate_lists(ranker, qlog, split, args.limit) for split in ("rerank", "train", "dev")}
    print(f"candidate lists: {({k: len(v) for k, v in lists.items()})} ({time.time() - started:.0f}s)\n", flush=True)
    ids, min_gain, rerank, dev = ranker.product_ids, ranker.data.relevant_min_gain, lists["rerank"], lists["dev"]
    print("| re-ranker | dev nDCG@10 / R@100 / MRR@10 | nDCG@10 per seed |\n|---|---|---|")

    def mlp_row(name, train, extra=()):
        report(name, [dev_metrics(fit_mlp(train, extra, s), dev, extra, ids, min_gain) for s in SEEDS])

    mlp_row("MLP, 12 features (as shipped)", rerank)
    for extra in (("qlog_all",), ("qlog_rel",), ("mean_gain",), ("knn",), ("qlog_all", "qlog_rel", "mean_gain", "knn")):
        mlp_row("MLP + " + " + ".join(extra), rerank, extra)

    # LambdaMART: settings by 4-fold cross-validation over the re-ranker's training queries.
    folds = np.random.default_rng(7).permutation(len(rerank)) % 4

    def cross_validated(fit) -> float:
        run, qrels = {}, {}
        for k in range(4):
            score = fit([item for item, f in zip(rerank, folds) if f != k])
            for item in (item for item, f in zip(rerank, folds) if f == k):
                s = score(item["base"])
                top = np.lexsort((item["rows"], -s))[:100]
                run[item["qid"]] = {ids[item["rows"][i]]: float(s[i]) for i in top}
                qrels[item["qid"]] = item["judged"]
        return evaluate_run(run, qrels, min_gain)["ndcg@10"]

    grid = [(100, 15, 0.05), (200, 15, 0.05), (400, 15, 0.05), (200, 7, 0.05), (300, 31, 0.05), (600, 31, 0.03), (400, 15, 0.03)]
    cv = {settings: cross_validated(lambda train, s=settings: fit_lambdamart(train, (), 0, *s)) for settings in grid}
    cv_mlp = cross_validated(lambda train: fit_mlp(train, (), 0))
    best = max(cv, key=cv.get)
    report(f"LambdaMART {best[0]} trees, {best[1]} leaves, lr {best[2]} (best of {len(grid)} by CV: "
           f"{cv[best]:.4f}; MLP's CV {cv_mlp:.4f})", [dev_metrics(fit_lambdamart(rerank, (), s, *best), dev, (), ids, min_gain) for s in SEEDS])

    # More training queries: the bi-encoder's own (its dense scores on them are fitted), with the
    # popularity count of each judged product less this query's own judgment.
    own = []
    for item in lists["train"]:
        base = item["base"].copy()
        base[:, POPULARITY] = np.log1p(np.maximum(np.expm1(base[:, POPULARITY]) - item["judged_mask"], 0))
        own.append({**item, "base": base})
    half = [rerank[i] for i in np.random.default_rng(100).permutation(len(rerank))[: len(rerank) // 2]]
    mlp_row("MLP on half the re-ranker's queries", half)
    mlp_row("MLP on its queries + the bi-encoder's (popularity leave-one-out)", rerank + own)
    print(f"\n{time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
