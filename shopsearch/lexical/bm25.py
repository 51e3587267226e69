"""BM25 over the catalog (bm25s, English stop words, Snowball stemming): the lexical baseline and,
later, the lexical candidate source of hybrid retrieval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shopsearch.data.schema import Product
from shopsearch.errors import InvalidInputError

K1, B = 1.2, 0.75


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


class Bm25Index:
    """BM25 scores of every catalog product for a query; rows index the catalog's product order."""

    def __init__(self, products: Sequence[Product], k1: float = K1, b: float = B):
        import bm25s

        self._bm25s = bm25s
        self.product_ids = [p.product_id for p in products]
        self.stemmer = _stemmer()
        corpus = self._tokenize([p.search_text() for p in products])
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(corpus, show_progress=False)

    def _tokenize(self, texts: list[str]):
        return self._bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k catalog rows and BM25 scores per query, [n, k] each. A query whose terms match no
        product (or are all stop words) gets rows with score 0, which callers treat as no hit."""
        if not queries:
            raise InvalidInputError("bm25", "queries", "no queries")
        k = min(k, len(self.product_ids))
        tokens = self._tokenize(list(queries))
        indices, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return np.asarray(indices, dtype=np.int64), np.asarray(scores, dtype=np.float32)

    def run(self, queries: dict[str, str], qids: Sequence[str], depth: int = 100, batch: int = 512) -> dict[str, dict[str, float]]:
        """A TREC-style run {query id: {product id: score}} with zero-score rows dropped."""
        run: dict[str, dict[str, float]] = {}
        for start in range(0, len(qids), batch):
            chunk = list(qids[start : start + batch])
            indices, scores = self.search([queries[q] for q in chunk], depth)
            for qid, rows, row_scores in zip(chunk, indices, scores):
                run[qid] = {self.product_ids[r]: float(s) for r, s in zip(rows, row_scores) if s > 0}
        return run
