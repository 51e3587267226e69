"""Second training stage: the re-ranker, on the train queries the bi-encoder was kept away from.

Candidates and features come from the trained bi-encoder (PyTorch) and BM25 over the catalog;
the stage ends with a dev evaluation of dense alone, BM25 alone and the hybrid re-ranked list on
the same queries, stored in the re-ranker's card.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shopsearch.data.schema import Dataset
from shopsearch.core.embedding import TorchEmbedder, embed_texts
from shopsearch.errors import ArtifactError, ConfigError
from shopsearch.core.hybrid import HybridRanker, LexicalScorer, popularity_feature
from shopsearch.core.index import CatalogIndex
from shopsearch.core.metrics import evaluate_run
from shopsearch.core.modeling import CHECKPOINT_META, load_checkpoint
from shopsearch.core.reranker import (
    PROBE_FEATURES, RERANKER_DIR, Reranker, RerankerCascade, RerankerConfig, RerankerMLP, RerankerTrees, float32_exact_thresholds,
    install_reranker, save_reranker,
)
from shopsearch.core.tokenization import TOKENIZER_FILE, TextEncoder


@dataclass
class CandidateList:
    features: np.ndarray  # [m, F]
    gains: np.ndarray  # [m], unjudged = 0


def candidate_lists(ranker: HybridRanker, texts: list[str], vectors: np.ndarray, qrels: list[dict[str, int]],
                    product_ids: list[str]) -> list[CandidateList]:
    lists = []
    for text, vector, judged in zip(texts, vectors, qrels):
        rows, features = ranker.candidates(text, vector)
        gains = np.array([judged.get(product_ids[r], 0) for r in rows], dtype=np.float32)
        lists.append(CandidateList(features, gains))
    return lists


def listwise_loss(scores: torch.Tensor, gains: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ListNet cross-entropy against the distribution (2^gain - 1) / sum over each list: the
    candidates a shopper would rate higher should take more of the softmax mass. Lists are padded
    to one length; `mask` marks real candidates. Mean over lists."""
    target = (torch.pow(2.0, gains) - 1.0) * mask
    target = target / target.sum(dim=1, keepdim=True)
    log_p = torch.log_softmax(scores.masked_fill(mask == 0, -1e9), dim=1)
    return -(target * log_p).sum(dim=1).mean()


def _padded(lists: list[CandidateList]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = max(len(c.gains) for c in lists)
    n_features = lists[0].features.shape[1]
    features = np.zeros((len(lists), m, n_features), np.float32)
    gains = np.zeros((len(lists), m), np.float32)
    mask = np.zeros((len(lists), m), np.float32)
    for i, c in enumerate(lists):
        features[i, : len(c.gains)], gains[i, : len(c.gains)], mask[i, : len(c.gains)] = c.features, c.gains, 1.0
    return torch.from_numpy(features), torch.from_numpy(gains), torch.from_numpy(mask)


def train_reranker(lists: list[CandidateList], cfg: RerankerConfig = RerankerConfig(), log=print) -> Reranker:
    """The recipe's kind of re-ranker, on the lists that have a judged product among their
    candidates. A cascade's trees learn from every candidate, as measured (README)."""
    usable = [c for c in lists if c.gains.max() > 0]
    if not usable:
        raise ArtifactError("re-ranker: no training query has a judged relevant product among its candidates")
    if cfg.kind == "mlp":
        return train_mlp(usable, cfg, log)
    trees = train_lambdamart(usable, cfg, log)
    return RerankerCascade(train_mlp(usable, cfg, log), trees, cfg.cascade_top) if cfg.cascade_top else trees


def train_lambdamart(lists: list[CandidateList], cfg: RerankerConfig, log=print) -> RerankerTrees:
    """LightGBM lambdarank over the same features and lists as the MLP: nDCG's own gains
    (2^gain - 1), its gradient truncated at the top 20 (what the served page shows and more)."""
    import lightgbm

    labels = np.concatenate([c.gains for c in lists])
    if np.any(labels != np.round(labels)) or labels.min() < 0:
        raise ArtifactError("re-ranker: LambdaMART needs integer gains >= 0 (the dataset's graded judgments)")
    params = dict(objective="lambdarank", learning_rate=cfg.tree_learning_rate, num_leaves=cfg.leaves,
                  min_data_in_leaf=cfg.min_data_in_leaf, bagging_fraction=0.8, bagging_freq=1, feature_fraction=0.8,
                  label_gain=[2.0 ** g - 1 for g in range(int(labels.max()) + 1)], lambdarank_truncation_level=20,
                  seed=cfg.seed, deterministic=True, force_row_wise=True, num_threads=torch.get_num_threads(), verbose=-1)
    data = lightgbm.Dataset(np.concatenate([c.features for c in lists]), labels.astype(np.int32),
                            group=[len(c.gains) for c in lists])
    started = time.time()

    def progress(env) -> None:
        done = env.iteration + 1
        if done % 100 == 0 or done == cfg.trees:
            log(f"re-ranker LambdaMART: {done}/{cfg.trees} trees ({time.time() - started:.1f}s)")

    booster = lightgbm.train(params, data, num_boost_round=cfg.trees, callbacks=[progress])
    # Thresholds a float32 runtime reads exactly: the ONNX export then agrees on every input.
    return RerankerTrees(lightgbm.Booster(model_str=float32_exact_thresholds(booster.model_to_string())))


def train_mlp(usable: list[CandidateList], cfg: RerankerConfig, log=print) -> RerankerMLP:
    torch.manual_seed(cfg.seed)
    stacked = np.concatenate([c.features for c in usable])
    model = RerankerMLP(stacked.shape[1], cfg.hidden)
    model.mean.copy_(torch.from_numpy(stacked.mean(axis=0)))
    model.std.copy_(torch.from_numpy(stacked.std(axis=0) + 1e-6))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    features, gains, mask = _padded(usable)
    rng = np.random.default_rng(cfg.seed)
    started = time.time()
    for epoch in range(cfg.epochs):
        total, batches = 0.0, 0
        order = torch.from_numpy(rng.permutation(len(usable)))
        for start in range(0, len(usable), cfg.lists_per_batch):
            rows = order[start : start + cfg.lists_per_batch]
            loss = listwise_loss(model(features[rows]), gains[rows], mask[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        if (epoch + 1) % 10 == 0 or epoch == cfg.epochs - 1:
            log(f"re-ranker epoch {epoch + 1}/{cfg.epochs}: listwise loss {total / batches:.4f} ({time.time() - started:.1f}s)")
    return model.eval()


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
            scores = hybrid.score_lists([(rows, features)])[0]
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
    def load(cls, checkpoint: Path, dataset: Dataset, n_dense: int, n_lexical: int,
             use_popularity: bool = True) -> "CheckpointRanker":
        model, card = load_checkpoint(checkpoint)
        holdout = card.get("train_config", {}).get("rerank_holdout", 0.0)
        data = dataset.with_holdout(holdout) if holdout else dataset
        enc_q = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, model.config.max_query_length)
        enc_p = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, model.config.max_product_length)
        embedder = TorchEmbedder(model)
        dense = CatalogIndex(embed_texts(embedder, enc_p, [p.search_text() for p in data.products]), "pytorch")
        # Popularity from the judgments of the bi-encoder's train queries only: the re-ranker's own
        # queries must not leak their labels into a feature.
        lexical = LexicalScorer.build(data.products, popularity_feature(data, use_popularity))
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


def checkpoint_holdout(checkpoint: Path) -> float:
    """The share of train queries the checkpoint's bi-encoder left to the re-ranker (0: none)."""
    meta = Path(checkpoint) / CHECKPOINT_META
    if not meta.exists():
        raise ArtifactError(f"checkpoint {checkpoint}: {CHECKPOINT_META} is missing (train first)")
    return json.loads(meta.read_text()).get("train_config", {}).get("rerank_holdout", 0.0)


def _card_dense_metrics(checkpoint: Path, dense: dict | None) -> None:
    """A bi-encoder trained with `evaluate=False` left its card's dev metrics to this stage: the
    dense evaluation here is the same one (same model, split and queries), on the catalog embedding
    this stage needs anyway. A card that has its own is left as it is."""
    meta_path = Path(checkpoint) / CHECKPOINT_META
    card = json.loads(meta_path.read_text())
    if card.get("dev_metrics") or not dense:
        return
    card["dev_metrics"] = dict(dense)
    meta_path.write_text(json.dumps(card, indent=2, sort_keys=True))


def train_reranker_stage(checkpoint: Path, dataset: Dataset, cfg: RerankerConfig = RerankerConfig(),
                         eval_split: str = "dev", log=print) -> dict:
    started = time.time()
    holdout = load_checkpoint(checkpoint)[1].get("train_config", {}).get("rerank_holdout", 0.0)
    if not holdout:
        raise ConfigError(str(checkpoint), "train_config.rerank_holdout",
                          "the bi-encoder trained on every train query; set rerank_holdout in the recipe and retrain")
    ranker = CheckpointRanker.load(checkpoint, dataset, cfg.n_dense, cfg.n_lexical, cfg.use_popularity)
    log(f"re-ranker: catalog embedded and BM25-indexed ({time.time() - started:.1f}s)")
    _, texts, vectors, judged = ranker.split_inputs("rerank")
    lists = candidate_lists(ranker.hybrid, texts, vectors, judged, ranker.product_ids)
    log(f"re-ranker: {len(lists)} training queries, {sum(len(c.gains) for c in lists)} candidates")
    reranker = train_reranker(lists, cfg, log)
    install_reranker(ranker.hybrid, reranker)

    metrics = {}
    if eval_split in ranker.data.queries:
        metrics = ranker.evaluate(eval_split)
        for name, m in metrics.items():
            log(f"re-ranker {eval_split} [{name}]: nDCG@10 {m['ndcg@10']:.4f}, Recall@100 {m['recall@100']:.4f}, MRR@10 {m['mrr@10']:.4f}")
    _card_dense_metrics(checkpoint, metrics.get("dense"))
    probe = np.concatenate([c.features for c in lists[:50]])
    save_reranker(reranker, cfg, checkpoint / RERANKER_DIR, {
        "holdout": holdout, "training_queries": len(lists), "eval_split": eval_split, "eval_metrics": metrics,
        "seconds": round(time.time() - started, 1),
    })
    np.save(checkpoint / RERANKER_DIR / PROBE_FEATURES, probe)
    return metrics
