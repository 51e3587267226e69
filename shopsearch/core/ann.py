"""Approximate catalog search with faiss: which index, how it is built, how it answers.

`exact` is the ONNX MatMul + TopK search of `shopsearch.core.index` (every product scored);
the approximate kinds trade a measured share of recall@100 for a cost that stops growing
linearly with the catalog:

- `ivf`: an inverted file of `nlist` k-means cells over 8-bit scalar-quantized vectors (faiss
  IndexIVFScalarQuantizer, inner product). A query scores the products of its `nprobe` nearest
  cells only. One byte per dimension (a quarter of float32); its candidates are rescored exactly
  from the float32 vectors (CatalogIndex). Built in 12.5 minutes at 2 million products on 2 cores.
  `rescore = 0` serves the 8-bit scores as they are and never reads the float32 vectors: the
  memory-bounded choice (at 2M x 256 the codes are 0.5 GB, the float32 vectors 2 GB, and a
  rescoring ranker needs them in RAM: with their pages dropped before each query, a query took
  12-29 ms instead of 0.5-1.4 ms from 20k to 2M products, `bench_scale.py --cold-only`), at the
  price of exact order (`bench_scale.py --quality-only` measures it).
- `hnsw`: a navigable small-world graph over the float32 vectors (IndexHNSWFlat). Fast answers
  and exact scores, but the graph is slow to build on few cores (31 s for the synthetic shop at
  200,000 products, 4 minutes for 200,000 random 256-d vectors) and holds the float32 vectors.

Each search returns, per query row, the k best rows it found, ordered by score then by row (the
catalog's product order), padded with row -1 / score -inf when the probed cells hold fewer than
k products; for a given index file the answer is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from shopsearch.errors import ConfigError

INDEX_KINDS = ("exact", "ivf", "hnsw")
ANN_FILE = "ann.faiss"
MIN_POINTS_PER_CELL = 39  # faiss's k-means wants at least this many per cell (it warns below)
TRAINING_SAMPLE_PER_CELL = 40  # k-means sees this many vectors per cell at most ...
KMEANS_ITERATIONS = 10  # ... for this many rounds
FILTERED_WIDENING = 2  # a filtered search probes this many times the cells (candidates) an unfiltered one does


@dataclass(frozen=True)
class IndexSpec:
    """How the catalog is searched; a recipe's [index] table or `make build-repo INDEX=...`."""

    kind: str = "exact"
    nlist: int = 0  # ivf: cells; 0 = 4 * sqrt(products), at least 1
    nprobe: int = 32  # ivf: cells each query scores; 0 = the fewest that reach min_recall on dev (tune_search)
    # hnsw: links per node and the candidate list while building. A graph built with 16 / 40 found
    # at most 0.90 of exact search's top 100 at 200,000 products, however wide the search
    # (make bench-scale); 32 / 200 is the graph the search breadth can be tuned on.
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128  # hnsw: candidate list while searching (>= k); 0 = the smallest that reaches min_recall
    # ivf: candidates fetched per result, then scored exactly from the float32 vectors; 0 = no
    # rescoring: answers ranked by the 8-bit scores, the float32 vectors never read while serving.
    rescore: int = 2
    min_recall: float = 0.98  # the build fails when recall@100 against exact search on dev is lower
    seed: int = 0  # k-means initialisation

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError("index", "kind", f"'{self.kind}' is not one of {INDEX_KINDS}")
        for name in ("hnsw_m", "ef_construction"):
            if getattr(self, name) < 1:
                raise ConfigError("index", name, f"must be at least 1, got {getattr(self, name)}")
        if self.rescore < 0:
            raise ConfigError("index", "rescore", f"must be 0 (8-bit scores as they are) or positive, got {self.rescore}")
        for name in ("nprobe", "ef_search"):
            if getattr(self, name) < 0:
                raise ConfigError("index", name, f"must be 0 (tuned on dev by the build) or positive, got {getattr(self, name)}")
        if self.nlist < 0:
            raise ConfigError("index", "nlist", f"must be 0 (automatic) or positive, got {self.nlist}")
        if not 0.0 <= self.min_recall <= 1.0:
            raise ConfigError("index", "min_recall", f"must lie in [0, 1], got {self.min_recall}")

    @property
    def approximate(self) -> bool:
        return self.kind != "exact"

    @property
    def reads_vectors(self) -> bool:
        """Whether searches read the float32 catalog vectors (everything but IVF without rescoring)."""
        return not (self.kind == "ivf" and self.rescore == 0)

    @property
    def tuned_field(self) -> str | None:
        """The search setting left to the build (0 in the recipe), if any."""
        name = {"ivf": "nprobe", "hnsw": "ef_search"}.get(self.kind)
        return name if name and getattr(self, name) == 0 else None

    def cells(self, n: int) -> int:
        """IVF cells for n products: the configured number, or 4 * sqrt(n), never so many that a
        cell trains on fewer than MIN_POINTS_PER_CELL products."""
        wanted = self.nlist or int(round(4 * math.sqrt(n)))
        return max(1, min(wanted, n // MIN_POINTS_PER_CELL))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_mapping(cls, raw: dict, where: str = "[index]") -> "IndexSpec":
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ConfigError(where, "index", str(exc)) from None


def _faiss(threads: int | None = None):
    import faiss

    if threads is not None:
        # A served ranker shares the cores with the other models and parallelises across requests.
        faiss.omp_set_num_threads(threads)
    return faiss


def build_ann(vectors: np.ndarray, spec: IndexSpec, threads: int | None = None, progress=None):
    """The faiss index of `spec.kind` over `vectors` [n, dim] float32 (rows in catalog order).
    `progress(done, total)`, when given, hears how many rows have been added."""
    if not spec.approximate:
        raise ConfigError("index", "kind", "exact search needs no faiss index")
    faiss = _faiss(threads)
    n, dim = vectors.shape
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
    else:
        nlist = spec.cells(n)
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = spec.seed
        index.cp.niter = KMEANS_ITERATIONS
        rng = np.random.default_rng(spec.seed)
        sample = min(n, nlist * TRAINING_SAMPLE_PER_CELL)
        rows = np.sort(rng.choice(n, sample, replace=False)) if sample < n else np.arange(n)
        index.train(np.ascontiguousarray(vectors[rows]))
    chunk = 50_000
    for start in range(0, n, chunk):
        index.add(np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32))
        if progress is not None:
            progress(min(start + chunk, n), n)
    configure_search(index, spec)
    return index


def configure_search(index, spec: IndexSpec) -> None:
    """Set the index's search breadth from `spec` (a setting still 0 waits for tune_search)."""
    if spec.kind == "hnsw" and spec.ef_search:
        index.hnsw.efSearch = spec.ef_search
    elif spec.kind == "ivf" and spec.nprobe:
        index.nprobe = spec.nprobe


def tune_search(index, spec: IndexSpec, queries: np.ndarray, exact_rows: np.ndarray, search=None) -> tuple[IndexSpec, list[dict]]:
    """For a setting left at 0: the smallest breadth on a doubling ladder (nprobe 1, 2, 4, ... up to
    every cell; ef_search from k up) whose recall of `exact_rows` on `queries` reaches
    `spec.min_recall`, or the widest tried. `search(queries, k) -> rows`: how the served index
    answers (rescoring included); the faiss index alone when not given. Returns the resolved spec
    and every step measured."""
    search = search or (lambda q, k: ann_search(index, q, k)[0])
    name = spec.tuned_field
    if name is None:
        return spec, []
    k = exact_rows.shape[1]
    if name == "nprobe":
        ladder, widest = [], index.nlist
        value = 1
        while value < widest:
            ladder.append(value)
            value *= 2
        ladder.append(widest)
    else:
        ladder = [k * m for m in (1, 2, 4, 8, 16)]
    tried = []
    for value in ladder:
        resolved = replace(spec, **{name: value})
        configure_search(index, resolved)
        recall = recall_at(search(queries, k), exact_rows)
        tried.append({name: value, "recall": round(recall, 4)})
        if recall >= spec.min_recall:
            break
    return resolved, tried


def save_ann(index, path: Path) -> None:
    _faiss().write_index(index, str(path))


def load_ann(path: Path, spec: IndexSpec, threads: int | None = 1):
    """The index in `path`, read into memory and set up to search as `spec` says.

    Not memory-mapped: faiss 1.13's IO_FLAG_MMAP made an IVF search 50x slower (5.0 ms against
    0.10 ms per query, 20k products, nprobe 32, on the 2-core CI machine). The 8-bit codes are a
    quarter of the float32 vectors, which the ranker keeps memory-mapped instead."""
    faiss = _faiss(threads)
    index = faiss.read_index(str(path))
    configure_search(index, spec)
    return index


def ann_search(index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows and scores [batch, k] per query, ordered by score then row; -1 / -inf pad.
    `allowed` ([n] bool): only those rows (faiss applies the selector inside its search)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if allowed is None:
        scores, rows = index.search(queries, k)
    else:
        faiss = _faiss()
        bits = np.packbits(allowed, bitorder="little")  # kept alive for the search below
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        # A filter drops most of what the probed cells hold: probe wider. At 2M products, nprobe 16
        # of 5,657 cells and a category filter (~60,000 products), the filtered top 10 equalled
        # exact filtered search on 0.980 of 300 dev queries; probing 2x: 0.997 (2.6 ms vs 2.3 ms).
        if isinstance(index, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch * FILTERED_WIDENING)
        else:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=min(index.nprobe * FILTERED_WIDENING, index.nlist))
        scores, rows = index.search(queries, k, params=params)
    rows = rows.astype(np.int64, copy=False)
    missing = rows < 0
    scores = np.where(missing, -np.inf, scores).astype(np.float32)
    # faiss orders by score only; equal scores (and the padding) come out by row here, as exact
    # search has them. Only rows holding a tie or padding are re-sorted: most hold neither.
    unsettled = (scores[:, 1:] == scores[:, :-1]).any(axis=1) | missing.any(axis=1)
    for r in np.flatnonzero(unsettled):
        order = np.lexsort((np.where(missing[r], np.iinfo(np.int64).max, rows[r]), -scores[r]))
        rows[r], scores[r] = rows[r][order], scores[r][order]
    return rows, scores


def recall_at(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact top-k found in its approximate top-k (k = exact's width)."""
    if len(exact) == 0:
        raise ConfigError("index", "recall", "no queries to measure recall on")
    k = exact.shape[1]
    hits = [len(set(a[:k].tolist()) & set(e.tolist())) / k for a, e in zip(approximate, exact)]
    return float(np.mean(hits))
