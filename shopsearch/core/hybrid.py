"""Hybrid retrieval: lexical (BM25) and dense candidates, merged, then ordered by a learned re-ranker.

Per query: the `n_dense` best products by embedding similarity and the `n_lexical` best by BM25
form the candidate set (BM25 ties at the cut: the lower rows); each candidate gets the features
below, computed from the candidates' dense scores and the query's lexical matches (only the products
sharing one of its terms: `shopsearch.lexical.matching`); the re-ranker (a small MLP, trained on
judgments the bi-encoder never saw, served as ONNX) scores a whole batch's candidates in one call,
and the best `k` come out. Everything here is numpy in -> numpy out, so the served
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
from shopsearch.lexical.matching import LexicalMatches, QueryTokenizer, TrigramIndex, match_postings

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


RERANKER_ONNX = "reranker.onnx"
RESCORER_ONNX = "rescorer.onnx"  # a cascade's second stage: re-orders the re-ranker's best few
INPUT_NAME, OUTPUT_NAME = "features", "scores"

Scorer = Callable[[np.ndarray], np.ndarray]  # features [m, F] float32 -> scores [m] float32


class LexicalScorer:
    """BM25 over the catalog text (bm25s, English stop words, Snowball stemming) with per-term
    coverage, character-trigram coverage and whole-query containment, for a query's candidates."""

    def __init__(self, retriever, doc_lengths: np.ndarray, texts: list[str], popularity: np.ndarray,
                 trigrams: TrigramIndex | None = None):
        import Stemmer

        if not len(texts) == len(doc_lengths) == len(popularity):
            raise ArtifactError(f"lexical index: {len(texts)} product texts, {len(popularity)} popularity values "
                                f"for {len(doc_lengths)} indexed products")
        self.popularity = popularity.astype(np.float32)
        self.normalized_texts = [" ".join(t.lower().split()) for t in texts]
        self.retriever = retriever
        self.doc_lengths = doc_lengths.astype(np.float32)
        self.texts = texts
        self.trigrams = trigrams if trigrams is not None else TrigramIndex.build(texts)
        if len(self.trigrams) != len(texts):
            raise ArtifactError(f"lexical index: trigrams of {len(self.trigrams)} products for {len(texts)} product texts")
        self.terms = QueryTokenizer(Stemmer.Stemmer("english"))
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

    def match(self, text: str) -> LexicalMatches:
        """The products sharing a term with the query: BM25 score and share of the query's terms."""
        terms = list(dict.fromkeys(self.terms(text)))
        return match_postings(self.retriever.scores, [self.vocab[t] for t in terms if t in self.vocab], len(terms))

    def trigram_coverage(self, text: str, rows: np.ndarray) -> np.ndarray:
        return self.trigrams.coverage(text, np.asarray(rows, dtype=np.int64))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(directory))
        np.save(directory / DOC_LENGTHS, self.doc_lengths)
        (directory / PRODUCT_TEXTS).write_text(json.dumps(self.texts))
        np.save(directory / POPULARITY, self.popularity)
        self.trigrams.save(directory)
        (directory / LEXICAL_MANIFEST).write_text(json.dumps({"products": len(self), "k1": self.retriever.k1, "b": self.retriever.b}))

    @classmethod
    def load(cls, directory: Path) -> "LexicalScorer":
        import bm25s

        if not (directory / LEXICAL_MANIFEST).exists():
            raise ArtifactError(f"lexical index: {directory / LEXICAL_MANIFEST} is missing")
        retriever = bm25s.BM25.load(str(directory))
        return cls(retriever, np.load(directory / DOC_LENGTHS), json.loads((directory / PRODUCT_TEXTS).read_text()),
                   np.load(directory / POPULARITY), TrigramIndex.load(directory))

    def contains(self, text: str, rows: np.ndarray) -> np.ndarray:
        query = " ".join(text.lower().split())
        return np.array([bool(query) and query in self.normalized_texts[r] for r in rows.tolist()], dtype=np.float32)


LEXICAL_FEATURE_NAMES = (  # the query/product-text features of FEATURE_NAMES, in their order
    "bm25_score", "bm25_norm", "bm25_rank_recip", "query_coverage", "query_trigram_coverage", "title_contains_query",
    "doc_length_log", "query_terms_log",
)


def lexical_features(lexical: LexicalScorer, text: str, rows: np.ndarray, n_lexical: int,
                     matches: LexicalMatches | None = None, lexical_top: np.ndarray | None = None) -> np.ndarray:
    """LEXICAL_FEATURE_NAMES of `rows` for one query [len(rows), 8]; BM25 ranks count within the
    query's `n_lexical` best. `matches`: lexical.match(text), and `lexical_top`: its ordered best
    `n_lexical`, when the caller has them already."""
    matches = matches if matches is not None else lexical.match(text)
    if lexical_top is None:
        lexical_top = matches.top(n_lexical)
    bm25, coverage = matches.at(rows)
    best_bm25 = matches.best()
    return np.stack([
        bm25,
        bm25 / best_bm25 if best_bm25 > 0 else np.zeros(rows.size, np.float32),
        _rank_recip(rows, lexical_top),
        coverage,
        lexical.trigram_coverage(text, rows),
        lexical.contains(text, rows),
        np.log1p(lexical.doc_lengths[rows]),
        np.full(rows.size, np.log1p(matches.n_terms), np.float32),
    ], axis=1).astype(np.float32)


def _rank_recip(rows: np.ndarray, top: np.ndarray) -> np.ndarray:
    """1 / (1 + rank) for rows within `top` (distinct rows, best first), else 0."""
    if not top.size:
        return np.zeros(len(rows), np.float32)
    order = np.argsort(top)
    position = np.minimum(np.searchsorted(top[order], rows), top.size - 1)
    rank = order[position]
    return np.where(top[rank] == rows, 1.0 / (1 + rank), 0.0).astype(np.float32)


class HybridRanker:
    """Dense + BM25 candidates, ordered by `reranker`; with a `rescorer` (a cascade), each list's
    `rescore_top` best by the re-ranker are ordered again by the rescorer, above the rest."""

    def __init__(self, dense: CatalogIndex, lexical: LexicalScorer, reranker: Scorer | None,
                 n_dense: int = 100, n_lexical: int = 100, rescorer: Scorer | None = None, rescore_top: int = 0):
        if len(dense) != len(lexical):
            raise ArtifactError(f"hybrid ranker: dense index has {len(dense)} products, lexical index {len(lexical)}")
        if (rescorer is None) != (rescore_top == 0):
            raise ArtifactError(f"hybrid ranker: a rescorer needs rescore_top > 0 and the other way round (got {rescore_top})")
        self.dense, self.lexical, self.reranker = dense, lexical, reranker
        self.n_dense, self.n_lexical = n_dense, n_lexical
        self.rescorer, self.rescore_top = rescorer, rescore_top

    def score_lists(self, lists: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Final scores of each (rows, features) candidate list. One re-ranker call for all lists
        (it scores rows independently): per-call overhead was a tenth of the ranker's time when
        every query made its own. A cascade makes one more call, for every list's head: the
        rescorer costs the few candidates that can reach the page, not all of them (LambdaMART's
        trees cost ~13 us per candidate on one core, the MLP 0.2)."""
        if self.reranker is None:
            raise ArtifactError("hybrid ranker: no re-ranker loaded")
        bounds = np.cumsum([0] + [rows.size for rows, _ in lists])
        first = self.reranker(np.concatenate([features for _, features in lists]))
        scores = [first[bounds[i]: bounds[i + 1]] for i in range(len(lists))]
        if self.rescorer is None:
            return scores
        heads = [np.lexsort((rows, -s))[: self.rescore_top] for (rows, _), s in zip(lists, scores)]
        second = self.rescorer(np.concatenate([features[head] for (_, features), head in zip(lists, heads)]))
        head_bounds = np.cumsum([0] + [head.size for head in heads])
        final = []
        for i, (s, head) in enumerate(zip(scores, heads)):
            out = s.astype(np.float32, copy=True)
            head_scores = second[head_bounds[i]: head_bounds[i + 1]]
            tail = np.ones(s.size, bool)
            tail[head] = False
            if tail.any():  # below the head, in the re-ranker's order
                out[tail] = head_scores.min() - 1.0 + (s[tail] - s[tail].max())
            out[head] = head_scores
            final.append(out)
        return final

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
        matches = self.lexical.match(text)
        lexical_top = matches.top(self.n_lexical, allowed)
        rows = np.unique(np.concatenate([dense_top, lexical_top]))
        # Dense scores of the candidates only (a few hundred rows), not of the whole catalog.
        dense_scores = self.dense.row_vectors(rows) @ query_vector
        best_dense = (float(self.dense.row_vectors(dense_top[:1])[0] @ query_vector) if dense_top.size
                      else float(dense_scores.max(initial=0.0)))
        lexical = lexical_features(self.lexical, text, rows, self.n_lexical, matches, lexical_top)
        features = np.column_stack([
            dense_scores,
            dense_scores - best_dense,
            _rank_recip(rows, dense_top),
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
        pools = [self.candidates(text, vector, dense_tops[i], allowed) for i, (text, vector) in enumerate(zip(texts, query_vectors))]
        if pool_sizes is not None:
            pool_sizes.extend(rows.size for rows, _ in pools)
        if not any(rows.size for rows, _ in pools):  # the filters allow nothing any query could find
            return indices, scores
        for i, ((rows, _), row_scores) in enumerate(zip(pools, self.score_lists(pools))):
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
