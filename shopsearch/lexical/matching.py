"""Query-time lexical matching that costs what the query matches, not what the catalog holds.

The hybrid ranker needs, per query, BM25 scores and term coverage of its candidates, the query's
BM25 top list, and the share of the query's character trigrams each candidate's text contains.
Computed naively these touch every product (a dense score vector per query term, an argpartition
over the catalog) or build Python sets per product (an unbounded per-process cache). Here:
- BM25 reads the posting lists of the query's terms straight from bm25s' precomputed score matrix
  (the same float32 values bm25s' `get_scores` adds, added in the same order), so a query costs
  the products that contain one of its terms;
- trigrams are ids into a sorted vocabulary, stored per product as CSR arrays at build time and
  memory-mapped at load, so coverage of a few hundred candidates is a gather and a count.
Both are exact: the features equal the whole-catalog computation (tested against it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import numpy as np

TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")  # bm25s.tokenize's default (scikit-learn's CountVectorizer)
TRIGRAM_VOCABULARY, TRIGRAM_INDPTR, TRIGRAM_IDS = "trigram_vocabulary.npy", "trigram_indptr.npy", "trigram_ids.npy"


class QueryTokenizer:
    """`bm25s.tokenize([text], stopwords="en", stemmer=stemmer, return_ids=False)[0]` for one text,
    without the progress bars bm25s creates on every call (a third of a query's lexical time)."""

    def __init__(self, stemmer):
        from bm25s.stopwords import STOPWORDS_EN

        self.stemmer = stemmer
        self.stopwords = frozenset(STOPWORDS_EN)

    def __call__(self, text: str) -> list[str]:
        tokens = [t for t in TOKEN_PATTERN.findall(text.lower()) if t not in self.stopwords]
        return self.stemmer.stemWords(tokens) if tokens else []


@dataclass(frozen=True)
class LexicalMatches:
    """One query's BM25 matches: only the products that contain at least one of its terms."""

    rows: np.ndarray  # int64, sorted ascending
    bm25: np.ndarray  # float32: the BM25 score of each row (sum over the query's distinct terms)
    coverage: np.ndarray  # float32: share of the query's distinct terms each row contains
    n_terms: int  # the query's distinct stemmed terms, known to the index or not

    @classmethod
    def none(cls, n_terms: int) -> "LexicalMatches":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32), n_terms)

    def at(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BM25 score and coverage of `rows` (0 for products without a query term)."""
        if not self.rows.size:
            return np.zeros(rows.size, np.float32), np.zeros(rows.size, np.float32)
        position = np.minimum(np.searchsorted(self.rows, rows), self.rows.size - 1)
        hit = self.rows[position] == rows
        return (np.where(hit, self.bm25[position], 0.0).astype(np.float32),
                np.where(hit, self.coverage[position], 0.0).astype(np.float32))

    def best(self) -> float:
        """The catalog's best BM25 score for this query (0 when nothing matches)."""
        return float(self.bm25.max()) if self.bm25.size else 0.0

    def top(self, n: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """The `n` best rows with a positive score, best first, ties by row; `allowed` ([catalog]
        bool): only those rows."""
        rows, scores = self.rows, self.bm25
        keep = scores > 0 if allowed is None else (scores > 0) & allowed[rows]
        rows, scores = rows[keep], scores[keep]
        if n <= 0:
            return rows[:0]
        if rows.size > n:  # everything scoring at least the n-th best, ties at the cut included
            cut = np.partition(scores, rows.size - n)[rows.size - n]
            within = scores >= cut
            rows, scores = rows[within], scores[within]
        return rows[np.lexsort((rows, -scores))][:n]

    def dense(self, n_products: int) -> tuple[np.ndarray, np.ndarray]:
        """[catalog] BM25 and coverage vectors (for inspection and tests; serving never needs them)."""
        bm25, coverage = np.zeros(n_products, np.float32), np.zeros(n_products, np.float32)
        bm25[self.rows], coverage[self.rows] = self.bm25, self.coverage
        return bm25, coverage


def match_postings(scores: dict, term_ids: Sequence[int], n_terms: int) -> LexicalMatches:
    """LexicalMatches from a bm25s score matrix (CSC by term: `data`, `indices`, `indptr`) for the
    query's distinct known `term_ids`; `n_terms` counts its distinct terms, unknown ones included."""
    if not term_ids:
        return LexicalMatches.none(n_terms)
    data, indices, indptr = scores["data"], scores["indices"], scores["indptr"]
    postings = [(indices[indptr[t]: indptr[t + 1]], data[indptr[t]: indptr[t + 1]]) for t in term_ids]
    rows = np.unique(np.concatenate([docs for docs, _ in postings])).astype(np.int64)
    bm25 = np.zeros(rows.size, np.float32)
    found = np.zeros(rows.size, np.int64)
    for docs, values in postings:  # term by term, in float32, as bm25s' per-term vectors would be summed
        at = np.searchsorted(rows, docs)  # a term lists each product once: no repeated index here
        bm25[at] += values.astype(np.float32, copy=False)
        found[at] += values > 0
    return LexicalMatches(rows, bm25, found.astype(np.float32) / n_terms, n_terms)


def trigram_keys(text: str) -> np.ndarray:
    """The distinct character trigrams of a text (lower-cased, whitespace runs as one space), each as
    one int64: three 21-bit Unicode code points."""
    normalized = " ".join(text.lower().split())
    if len(normalized) < 3:
        return np.zeros(0, np.int64)
    points = np.frombuffer(normalized.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
    return np.unique((points[:-2] << 42) | (points[1:-1] << 21) | points[2:])


class TrigramIndex:
    """Every product's distinct trigrams as ids into a sorted vocabulary, in CSR arrays."""

    def __init__(self, vocabulary: np.ndarray, indptr: np.ndarray, ids: np.ndarray):
        if indptr.ndim != 1 or indptr.size == 0 or int(indptr[-1]) != ids.size:
            raise ValueError(f"trigram index: indptr ends at {int(indptr[-1]) if indptr.size else None}, "
                             f"{ids.size} trigram ids")
        self.vocabulary, self.indptr, self.ids = vocabulary, indptr, ids

    def __len__(self) -> int:
        return self.indptr.size - 1

    @classmethod
    def build(cls, texts: Sequence[str]) -> "TrigramIndex":
        per_text = [trigram_keys(t) for t in texts]
        keys = np.concatenate(per_text) if per_text else np.zeros(0, np.int64)
        vocabulary = np.unique(keys)
        indptr = np.zeros(len(per_text) + 1, np.int64)
        np.cumsum([k.size for k in per_text], out=indptr[1:])
        return cls(vocabulary, indptr, np.searchsorted(vocabulary, keys).astype(np.int32))

    def save(self, directory: Path) -> None:
        np.save(directory / TRIGRAM_VOCABULARY, self.vocabulary)
        np.save(directory / TRIGRAM_INDPTR, self.indptr)
        np.save(directory / TRIGRAM_IDS, self.ids)

    @classmethod
    def load(cls, directory: Path) -> "TrigramIndex | None":
        """None when the directory predates the index (the caller builds it from the texts)."""
        if not (directory / TRIGRAM_IDS).exists():
            return None
        # Memory-mapped: a process keeps resident only the pages of candidates it has scored, and
        # the ranker's instances share them through the page cache.
        return cls(np.load(directory / TRIGRAM_VOCABULARY), np.load(directory / TRIGRAM_INDPTR),
                   np.load(directory / TRIGRAM_IDS, mmap_mode="r"))

    def coverage(self, text: str, rows: np.ndarray) -> np.ndarray:
        """Share of the query's distinct trigrams found in each row's text, [len(rows)] float32."""
        query = trigram_keys(text)
        if not query.size or not rows.size:
            return np.zeros(rows.size, np.float32)
        position = np.minimum(np.searchsorted(self.vocabulary, query), max(self.vocabulary.size - 1, 0))
        wanted = np.zeros(max(self.vocabulary.size, 1), bool)
        if self.vocabulary.size:
            wanted[position[self.vocabulary[position] == query]] = True
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        # The rows' id slices side by side: each slice's start, then counting up within it.
        offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
        hits = wanted[self.ids[offsets]]
        counts = np.bincount(np.repeat(np.arange(rows.size), lengths), weights=hits, minlength=rows.size)
        return (counts / query.size).astype(np.float32)
