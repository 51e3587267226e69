"""Hybrid retrieval: lexical (BM25) and dense candidates, merged, then ordered by a learned re-ranker.

Per query: the `n_dense` best products by embedding similarity and the `n_lexical` best by BM25
form the candidate set; each candidate gets the features below, computed from the two full score
vectors; the re-ranker (a small MLP, trained on judgments the bi-encoder never saw, served as ONNX)
scores them, and the best `k` come out. Everything here is numpy in -> numpy out, so the served
ranker and the in-process pipeline run the same code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from shopsearch.data.schema import Product
from shopsearch.errors import ArtifactError
from shopsearch.core.index import CatalogIndex

FEATURE_NAMES = (
    "dense_score",  # cosine similarity of query and product embeddings
    "dense_gap",  # dense_score minus the query's best dense score
    "dense_rank_recip",  # 1 / (1 + rank by dense score), 0 beyond the dense candidates
    "bm25_score",
    "bm25_norm",  # bm25_score / the query's best BM25 score
    "bm25_rank_recip",
    "query_coverage",  # share of the query's (stemmed, non-stop) terms found in the product text
    "query_trigram_coverage",  # share of the query's character trigrams in the product text: misspellings, run-together words
    "title_contains_query",  # 1 when the whole query (lower-cased, spaces normalized) occurs in the product text
    "popularity_log",  # log(1 + popularity): the catalog's own, or how often training judgments name the product
    "doc_length_log",  # log(1 + stemmed terms in the product text)
    "query_terms_log",  # log(1 + stemmed query terms)
)
LEXICAL_DIR = "lexical"
DOC_LENGTHS = "doc_lengths.npy"
LEXICAL_MANIFEST = "lexical.json"
PRODUCT_TEXTS = "texts.json"
POPULARITY = "popularity.npy"


def catalog_popularity(dataset, split: str = "train") -> np.ndarray:
    """Per catalog product: its own popularity where the catalog has one, else how many judgments of
    `split` name it (a shop's impression log in miniature: what the old engine kept showing)."""
    if all(p.popularity is not None for p in dataset.products):
        return np.array([p.popularity for p in dataset.products], dtype=np.float32)
    counts: dict[str, int] = {}
    for judged in dataset.qrels.get(split, {}).values():
        for pid in judged:
            counts[pid] = counts.get(pid, 0) + 1
    return np.array([counts.get(p.product_id, 0) for p in dataset.products], dtype=np.float32)


def popularity_feature(dataset, use_popularity: bool = True, split: str = "train") -> np.ndarray:
    """What the re-ranker's popularity feature reads, the same in training and in the build:
    `catalog_popularity`, or 0 for every product when the re-ranker was configured without it."""
    if not use_popularity:
        return np.zeros(len(dataset.products), dtype=np.float32)
    return catalog_popularity(dataset, split)


def char_trigrams(text: str) -> set[str]:
    text = " ".join(text.lower().split())
    return {text[i : i + 3] for i in range(len(text) - 2)}

RERANKER_ONNX = "reranker.onnx"
INPUT_NAME, OUTPUT_NAME = "features", "scores"

Scorer = Callable[[np.ndarray], np.ndarray]  # features [m, F] float32 -> scores [m] float32


class LexicalScorer:
    """BM25 over the catalog text (bm25s, English stop words, Snowball stemming), scoring every
    product per query term so that term coverage comes with the score."""

    def __init__(self, retriever, doc_lengths: np.ndarray, texts: list[str], popularity: np.ndarray):
        import Stemmer

        if not len(texts) == len(doc_lengths) == len(popularity):
            raise ArtifactError(f"lexical index: {len(texts)} product texts, {len(popularity)} popularity values "
                                f"for {len(doc_lengths)} indexed products")
        self.popularity = popularity.astype(np.float32)
        self.normalized_texts = [" ".join(t.lower().split()) for t in texts]
        self.retriever = retriever
        self.doc_lengths = doc_lengths.astype(np.float32)
        self.texts = texts
        self._trigrams: dict[int, set[str]] = {}  # filled lazily: only candidates ever need them
        self.stemmer = Stemmer.Stemmer("english")
        self.vocab = retriever.vocab_dict

    @classmethod
    def build(cls, products: Sequence[Product], popularity: np.ndarray | None = None, k1: float = 1.2,
              b: float = 0.75) -> "LexicalScorer":
        import bm25s
        import Stemmer

        texts = [p.search_text() for p in products]
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False)
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(tokens, show_progress=False)
        lengths = np.array([len(doc) for doc in tokens.ids], dtype=np.float32)
        return cls(retriever, lengths, texts, popularity if popularity is not None else np.zeros(len(texts), np.float32))

    def __len__(self) -> int:
        return len(self.doc_lengths)

    def terms(self, text: str) -> list[str]:
        import bm25s

        return bm25s.tokenize([text], stopwords="en", stemmer=self.stemmer, return_ids=False, show_progress=False)[0]

    def score(self, text: str) -> tuple[np.ndarray, np.ndarray, int]:
        """BM25 score of every product, share of query terms each product contains, term count."""
        terms = list(dict.fromkeys(self.terms(text)))
        n = len(self.doc_lengths)
        known = [t for t in terms if t in self.vocab]
        if not known:
            return np.zeros(n, np.float32), np.zeros(n, np.float32), len(terms)
        per_term = np.stack([self.retriever.get_scores([t]) for t in known]).astype(np.float32)
        return per_term.sum(axis=0), (per_term > 0).sum(axis=0).astype(np.float32) / len(terms), len(terms)

    def trigram_coverage(self, text: str, rows: np.ndarray) -> np.ndarray:
        query = char_trigrams(text)
        if not query:
            return np.zeros(rows.size, np.float32)
        out = np.empty(rows.size, np.float32)
        for i, row in enumerate(rows.tolist()):
            grams = self._trigrams.get(row)
            if grams is None:
                grams = self._trigrams[row] = char_trigrams(self.texts[row])
            out[i] = len(query & grams) / len(query)
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(directory))
        np.save(directory / DOC_LENGTHS, self.doc_lengths)
        (directory / PRODUCT_TEXTS).write_text(json.dumps(self.texts))
        np.save(directory / POPULARITY, self.popularity)
        (directory / LEXICAL_MANIFEST).write_text(json.dumps({"products": len(self), "k1": self.retriever.k1, "b": self.retriever.b}))

    @classmethod
    def load(cls, directory: Path) -> "LexicalScorer":
        import bm25s

        if not (directory / LEXICAL_MANIFEST).exists():
            raise ArtifactError(f"lexical index: {directory / LEXICAL_MANIFEST} is missing")
        retriever = bm25s.BM25.load(str(directory))
        return cls(retriever, np.load(directory / DOC_LENGTHS), json.loads((directory / PRODUCT_TEXTS).read_text()),
                   np.load(directory / POPULARITY))

    def contains(self, text: str, rows: np.ndarray) -> np.ndarray:
        query = " ".join(text.lower().split())
        return np.array([bool(query) and query in self.normalized_texts[r] for r in rows.tolist()], dtype=np.float32)


LEXICAL_FEATURE_NAMES = (  # the query/product-text features of FEATURE_NAMES, in their order
    "bm25_score", "bm25_norm", "bm25_rank_recip", "query_coverage", "query_trigram_coverage", "title_contains_query",
    "doc_length_log", "query_terms_log",
)


def lexical_features(lexical: LexicalScorer, text: str, rows: np.ndarray, n_lexical: int,
                     scored: tuple[np.ndarray, np.ndarray, int] | None = None,
                     lexical_top: np.ndarray | None = None) -> np.ndarray:
    """LEXICAL_FEATURE_NAMES of `rows` for one query [len(rows), 8]; BM25 ranks count within the
    query's `n_lexical` best. `scored`: lexical.score(text), and `lexical_top`: its ordered best
    `n_lexical`, when the caller has them already."""
    bm25, coverage, n_terms = scored if scored is not None else lexical.score(text)
    if lexical_top is None:
        lexical_top = _ordered_top(bm25, n_lexical, positive_only=True)
    best_bm25 = float(bm25.max()) if bm25.size else 0.0
    return np.stack([
        bm25[rows],
        bm25[rows] / best_bm25 if best_bm25 > 0 else np.zeros(rows.size, np.float32),
        _rank_recip(bm25, rows, lexical_top),
        coverage[rows],
        lexical.trigram_coverage(text, rows),
        lexical.contains(text, rows),
        np.log1p(lexical.doc_lengths[rows]),
        np.full(rows.size, np.log1p(n_terms), np.float32),
    ], axis=1).astype(np.float32)


def _rank_recip(scores: np.ndarray, rows: np.ndarray, top: np.ndarray) -> np.ndarray:
    """1 / (1 + rank) for rows within `top` (already ordered best first), else 0."""
    position = {int(r): i for i, r in enumerate(top)}
    return np.array([1.0 / (1 + position[int(r)]) if int(r) in position else 0.0 for r in rows], dtype=np.float32)


def _ordered_top(scores: np.ndarray, n: int, positive_only: bool = False) -> np.ndarray:
    n = min(n, scores.size)
    top = np.argpartition(-scores, n - 1)[:n]
    top = top[np.lexsort((top, -scores[top]))]  # best first, ties by row
    return top[scores[top] > 0] if positive_only else top


class HybridRanker:
    def __init__(self, dense: CatalogIndex, lexical: LexicalScorer, reranker: Scorer | None,
                 n_dense: int = 100, n_lexical: int = 100):
        if len(dense) != len(lexical):
            raise ArtifactError(f"hybrid ranker: dense index has {len(dense)} products, lexical index {len(lexical)}")
        self.dense, self.lexical, self.reranker = dense, lexical, reranker
        self.n_dense, self.n_lexical = n_dense, n_lexical

    def candidates(self, text: str, query_vector: np.ndarray, dense_top: np.ndarray | None = None,
                   allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Candidate rows (dense top ∪ BM25 top) and their features [m, len(FEATURE_NAMES)].
        `dense_top`: the query's `n_dense` best rows by dense score, best first (`rank` finds
        them for a whole batch in one exact search); searched here when not given. `allowed`
        ([n] bool, a request's filters): both candidate sets come from those rows only."""
        query_vector = query_vector.astype(np.float32)
        if dense_top is None:
            dense_top = (self.dense.search(query_vector[None, :], self.n_dense) if allowed is None
                         else self.dense.search_within(query_vector[None, :], self.n_dense, allowed))[0][0]
        dense_top = dense_top[dense_top >= 0]  # an approximate index pads a short answer with -1
        scored = self.lexical.score(text)
        ranked_bm25 = scored[0] if allowed is None else np.where(allowed, scored[0], 0.0)
        lexical_top = _ordered_top(ranked_bm25, self.n_lexical, positive_only=True)
        rows = np.unique(np.concatenate([dense_top, lexical_top]))
        # Dense scores of the candidates only (a few hundred rows), not of the whole catalog.
        dense_scores = self.dense.row_vectors(rows) @ query_vector
        best_dense = (float(self.dense.row_vectors(dense_top[:1])[0] @ query_vector) if dense_top.size
                      else float(dense_scores.max(initial=0.0)))
        lexical = lexical_features(self.lexical, text, rows, self.n_lexical, scored, lexical_top)
        features = np.column_stack([
            dense_scores,
            dense_scores - best_dense,
            _rank_recip(dense_scores, rows, dense_top),
            lexical[:, :6],
            np.log1p(self.lexical.popularity[rows]),
            lexical[:, 6:],
        ]).astype(np.float32)
        return rows.astype(np.int64), features

    def rank(self, texts: Sequence[str], query_vectors: np.ndarray, k: int,
             pool_sizes: list[int] | None = None, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k catalog rows and re-ranker scores per query, [n, k]; rows -1 pad short lists.
        `pool_sizes`, when given, receives how many candidates each query's re-ranker scored;
        `allowed` ([n] bool): every query searches those rows only (a request's filters)."""
        if self.reranker is None:
            raise ArtifactError("hybrid ranker: no re-ranker loaded")
        indices = np.full((len(texts), k), -1, dtype=np.int64)
        scores = np.full((len(texts), k), -np.inf, dtype=np.float32)
        dense_tops = []
        if len(texts):
            dense_tops = (self.dense.search(query_vectors, self.n_dense) if allowed is None
                          else self.dense.search_within(query_vectors, self.n_dense, allowed))[0]
        for i, (text, vector) in enumerate(zip(texts, query_vectors)):
            rows, features = self.candidates(text, vector, dense_tops[i], allowed)
            if pool_sizes is not None:
                pool_sizes.append(len(rows))
            if rows.size == 0:  # the filters allow nothing this query could find: an empty answer
                continue
            row_scores = self.reranker(features)
            order = np.lexsort((rows, -row_scores))[:k]
            indices[i, : order.size], scores[i, : order.size] = rows[order], row_scores[order]
        return indices, scores


class OnnxReranker:
    """The exported re-ranker on ONNX Runtime (what the served ranker runs; no torch import)."""

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: features.astype(np.float32, copy=False)})[0]
