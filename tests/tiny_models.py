"""Tiny models made in memory for the unit tier: random weights, nothing trained.

A checkpoint here has the layout training writes (weights + config, tokenizer, card, an optional
re-ranker), so the build, the steps and the in-process pipeline run on it exactly as on a trained
one; only quality differs. The tokenizer is WordPiece over a vocabulary of the catalog's whole
words (counted, not trained), so it is the same on every run.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from shopsearch.core.hybrid import FEATURE_NAMES
from shopsearch.core.modeling import BiEncoder, EncoderConfig, save_checkpoint
from shopsearch.core.recommender import RecConfig, SequentialRecommender, save_rec_checkpoint
from shopsearch.core.reranker import PROBE_FEATURES, RERANKER_DIR, RerankerConfig, RerankerMLP, save_reranker
from shopsearch.core.tokenization import SPECIAL_TOKENS

TINY_ENCODER = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                    max_query_length=16, max_product_length=24, max_positions=48, dropout=0.0)


def word_tokenizer(texts: list[str], max_words: int = 3000) -> Tokenizer:
    """BERT-style WordPiece (lower-cased, accents stripped) over the most frequent whole words."""
    counts = Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_words]]
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tokenizer


def random_search_checkpoint(dataset, out: Path, seed: int = 0, reranker: bool = True) -> Path:
    """A search checkpoint over `dataset` with random weights; `reranker`: also a random re-ranker,
    so the build lays out the hybrid ranker (BM25 + dense + learned re-ranking)."""
    tokenizer = word_tokenizer([p.search_text() for p in dataset.products])
    torch.manual_seed(seed)
    model = BiEncoder(EncoderConfig(vocab_size=tokenizer.get_vocab_size(), **TINY_ENCODER)).eval()
    card = {"dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint()}, "dev_metrics": {},
            "train_config": {"rerank_holdout": 0.3 if reranker else 0.0}}
    save_checkpoint(model, tokenizer.to_str(), out, card)
    if reranker:
        add_random_reranker(out, seed)
    return out


def add_random_reranker(checkpoint: Path, seed: int = 0) -> None:
    """A random re-ranker (and its parity probe) in `checkpoint`, which the build then serves
    (weights from torch's global generator: seed it first for the same ones)."""
    config = RerankerConfig(hidden=8)
    mlp = RerankerMLP(len(FEATURE_NAMES), config.hidden).eval()
    save_reranker(mlp, config, checkpoint / RERANKER_DIR, {"holdout": 0.3, "training_queries": 0, "eval_metrics": {}})
    probe = np.random.default_rng(seed).random((64, len(FEATURE_NAMES)), dtype=np.float32)
    np.save(checkpoint / RERANKER_DIR / PROBE_FEATURES, probe)


def random_rec_checkpoint(interactions, out: Path, seed: int = 0) -> Path:
    """A recommender checkpoint over `interactions` with random weights (id embeddings only)."""
    torch.manual_seed(seed)
    config = RecConfig(n_items=interactions.n_items, hidden_size=16, num_layers=1, num_heads=2, max_length=8, dropout=0.0)
    model = SequentialRecommender(config, None, trained_items=interactions.item_counts() > 0).eval()
    card = {"dataset": {"name": interactions.name, "fingerprint": interactions.fingerprint()}, "title_vectors": None}
    probes = interactions.histories[:32]
    save_rec_checkpoint(model, out, card, interactions.item_ids, interactions.titles, interactions.item_counts(), probes)
    return out
