"""Second training stage: the re-ranker, on the train queries the bi-encoder was kept away from.

Candidates and features come from the trained bi-encoder (PyTorch) and BM25 over the catalog;
the stage ends with a dev evaluation of dense alone, BM25 alone and the hybrid re-ranked list on
the same queries, stored in the re-ranker's card.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shopsearch.data.schema import Dataset
from shopsearch.embedding import TorchEmbedder, embed_texts
from shopsearch.errors import ConfigError
from shopsearch.hybrid import HybridRanker, LexicalScorer, catalog_popularity
from shopsearch.index import CatalogIndex
from shopsearch.metrics import evaluate_run
from shopsearch.modeling import load_checkpoint
from shopsearch.reranker import (
    RerankerConfig, candidate_lists, save_reranker, torch_scorer, train_reranker,
)
from shopsearch.tokenization import TOKENIZER_FILE, TextEncoder

RERANKER_DIR = "reranker"  # inside the checkpoint directory


def _runs(hybrid: HybridRanker, texts: list[str], vectors: np.ndarray, qids: list[str], product_ids: list[str],
          depth: int = 100) -> dict[str, dict[str, dict[str, float]]]:
    runs: dict[str, dict[str, dict[str, float]]] = {"dense": {}, "bm25": {}, "rrf": {}, "hybrid": {}}
    for qid, text, vector in zip(qids, texts, vectors):
        rows, features = hybrid.candidates(text, vector)
        dense_rank = np.argsort(-features[:, 0], kind="stable")[:depth]
        runs["dense"][qid] = {product_ids[rows[i]]: float(features[i, 0]) for i in dense_rank if features[i, 2] > 0}
        runs["bm25"][qid] = {product_ids[rows[i]]: float(features[i, 3]) for i in range(rows.size) if features[i, 5] > 0}
        # Reciprocal rank fusion (k=60) of the two lists: the untrained way to merge them, for the ablation.
        rrf = sum(np.where(recip > 0, 1.0 / (60.0 + 1.0 / np.maximum(recip, 1e-9)), 0.0) for recip in (features[:, 2], features[:, 5]))
        top_rrf = np.lexsort((rows, -rrf))[:depth]
        runs["rrf"][qid] = {product_ids[rows[i]]: float(rrf[i]) for i in top_rrf}
        if hybrid.reranker is not None:
            scores = hybrid.reranker(features)
            top = np.lexsort((rows, -scores))[:depth]
            runs["hybrid"][qid] = {product_ids[rows[i]]: float(scores[i]) for i in top}
    return runs if hybrid.reranker is not None else {k: v for k, v in runs.items() if k != "hybrid"}


@dataclass
class CheckpointRanker:
    """A checkpoint's bi-encoder (PyTorch, FP32) + BM25 over the catalog, as the hybrid ranker
    sees them: what stage 2 trains on, and what the ablation in `make eval` measures."""

    data: Dataset  # with the checkpoint's re-ranker holdout applied
    hybrid: HybridRanker
    embedder: TorchEmbedder
    enc_q: TextEncoder
    product_ids: list[str]

    @classmethod
    def load(cls, checkpoint: Path, dataset: Dataset, n_dense: int, n_lexical: int) -> "CheckpointRanker":
        model, card = load_checkpoint(checkpoint)
        holdout = card.get("train_config", {}).get("rerank_holdout", 0.0)
        data = dataset.with_holdout(holdout) if holdout else dataset
        enc_q = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, model.config.max_query_length)
        enc_p = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, model.config.max_product_length)
        embedder = TorchEmbedder(model)
        dense = CatalogIndex(embed_texts(embedder, enc_p, [p.search_text() for p in data.products]), "pytorch")
        # Popularity from the judgments of the bi-encoder's train queries only: the re-ranker's own
        # queries must not leak their labels into a feature.
        lexical = LexicalScorer.build(data.products, catalog_popularity(data, "train"))
        return cls(data, HybridRanker(dense, lexical, None, n_dense, n_lexical), embedder, enc_q,
                   [p.product_id for p in data.products])

    def split_inputs(self, split: str, limit: int = 0):
        queries, qrels = self.data.split(split)
        qids = sorted(queries)[: limit or None]
        texts = [queries[q] for q in qids]
        return qids, texts, embed_texts(self.embedder, self.enc_q, texts), [qrels.get(q, {}) for q in qids]

    def evaluate(self, split: str, limit: int = 0) -> dict[str, dict[str, float]]:
        """dense alone, BM25 alone, their reciprocal rank fusion and (with a re-ranker) the hybrid list."""
        qids, texts, vectors, judged = self.split_inputs(split, limit)
        runs = _runs(self.hybrid, texts, vectors, qids, self.product_ids)
        qrels = dict(zip(qids, judged))
        return {name: {k: round(v, 4) for k, v in evaluate_run(run, qrels, self.data.relevant_min_gain).items()}
                for name, run in runs.items()}


def train_reranker_stage(checkpoint: Path, dataset: Dataset, cfg: RerankerConfig = RerankerConfig(),
                         eval_split: str = "dev", log=print) -> dict:
    started = time.time()
    holdout = load_checkpoint(checkpoint)[1].get("train_config", {}).get("rerank_holdout", 0.0)
    if not holdout:
        raise ConfigError(str(checkpoint), "train_config.rerank_holdout",
                          "the bi-encoder trained on every train query; set rerank_holdout in the recipe and retrain")
    ranker = CheckpointRanker.load(checkpoint, dataset, cfg.n_dense, cfg.n_lexical)
    log(f"re-ranker: catalog embedded and BM25-indexed ({time.time() - started:.1f}s)")
    _, texts, vectors, judged = ranker.split_inputs("rerank")
    lists = candidate_lists(ranker.hybrid, texts, vectors, judged, ranker.product_ids)
    log(f"re-ranker: {len(lists)} training queries, {sum(len(c.gains) for c in lists)} candidates")
    reranker = train_reranker(lists, cfg, log)
    ranker.hybrid.reranker = torch_scorer(reranker)

    metrics = {}
    if eval_split in ranker.data.queries:
        metrics = ranker.evaluate(eval_split)
        for name, m in metrics.items():
            log(f"re-ranker {eval_split} [{name}]: nDCG@10 {m['ndcg@10']:.4f}, Recall@100 {m['recall@100']:.4f}, MRR@10 {m['mrr@10']:.4f}")
    probe = np.concatenate([c.features for c in lists[:50]])
    save_reranker(reranker, cfg, checkpoint / RERANKER_DIR, {
        "holdout": holdout, "training_queries": len(lists), "eval_split": eval_split, "eval_metrics": metrics,
        "seconds": round(time.time() - started, 1),
    })
    np.save(checkpoint / RERANKER_DIR / "probe_features.npy", probe)
    return metrics
