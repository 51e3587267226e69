"""The logic of each served model, as plain numpy in -> numpy out, testable without a server.

Each step's `run` takes one dict of input arrays per request (what Triton's dynamic batcher
grouped together) and returns, per request, either a dict of output arrays or the
ShopSearchError that request earned. The ranker joins the requests into one batch, and so does
the embedder unless its artifact must run row by row (INT8); a bad request never fails its neighbours.

Each step declares the parameters it is built with as a frozen dataclass (`params_type`); the config
builders write exactly that (shopsearch.build.search_configs) and `from_artifacts` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shopsearch.core.embedding import OnnxEmbedder
from shopsearch.core.filters import FACETS_MANIFEST, CatalogFacets, SearchFilters
from shopsearch.core.hybrid import LEXICAL_DIR, RERANKER_ONNX, RESCORER_ONNX, HybridRanker, LexicalScorer, OnnxReranker
from shopsearch.core.index import CatalogIndex
from shopsearch.core.results import CatalogLookup, hits_to_arrays
from shopsearch.core.tokenization import TOKENIZER_FILE, EncodedBatch, TextEncoder, pad_batches
from shopsearch.errors import ArtifactError, ConfigError, InvalidInputError, ShopSearchError
from shopsearch.serving.metrics import CANDIDATE_POOL, TOKEN_COUNTS
from shopsearch.serving.params import StepParams
from shopsearch.serving.tensors import (
    CANDIDATE_INDICES, CANDIDATE_SCORES, CATEGORY, COLLAPSE, FILTER_INPUTS, IN_STOCK, PRICE_MAX, PRICE_MIN, PRODUCT_IDS,
    QUERY, QUERY_TEXT, QUERY_TEXT_BYTES, SCORES, TITLES, TOPK,
)

Arrays = dict[str, np.ndarray]
Outcome = Arrays | ShopSearchError

EMBEDDER_FILE = "model.onnx"


def session_threads(configured: int) -> int:
    """ONNX Runtime threads per served instance: the configured number, or with 0 one thread.

    A served model shares the cores with the server, the other models and often the clients;
    Triton parallelises across requests (batches, instances). Intra-op threads on top cost more
    CPU than they save for models this small: on the 2-core CI machine one query row of the INT8
    embedder took 0.40 ms CPU on one thread and 0.64-0.72 ms on two, and the served embedder
    used 0.74-1.0 cores at ~360 q/s with two threads against 0.28 cores at ~470 q/s with one.
    More cores: raise the instance count (`make tune`), or set threads explicitly."""
    return configured if configured > 0 else 1


def serving_thread_limits():
    """Caps numpy's BLAS thread pool at one thread in this process; returns the (global) limit.

    A served model's process shares the cores as above, and OpenBLAS threads busy-wait after
    each call: the Home Depot ranker (dense scores of its few hundred candidates) used 2x its wall
    time in CPU with the default pool of two and 1x with one, at the same wall time."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def encode_query_text(texts: list[str]) -> np.ndarray:
    """[n, QUERY_TEXT_BYTES] uint8: each text's UTF-8, cut on a character boundary, zero padded."""
    out = np.zeros((len(texts), QUERY_TEXT_BYTES), dtype=np.uint8)
    for i, text in enumerate(texts):
        raw = text.replace("\x00", " ").encode("utf-8")[:QUERY_TEXT_BYTES].decode("utf-8", errors="ignore").encode("utf-8")
        out[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_query_text(rows: np.ndarray) -> list[str]:
    return [bytes(row).rstrip(b"\x00").decode("utf-8", errors="replace") for row in rows]


def requested_k(arrays: Arrays, default: int, max_k: int, model: str) -> int:
    """The optional TOPK input: one value per request, 1..max_k; `default` when absent."""
    if TOPK not in arrays:
        return default
    values = np.unique(arrays[TOPK].reshape(-1))
    if values.size != 1:
        raise InvalidInputError(model, TOPK, "must hold one value for every row of a request")
    k = int(values[0])
    if not 1 <= k <= max_k:
        raise InvalidInputError(model, TOPK, f"must be between 1 and {max_k}, got {k}")
    return k


@dataclass(frozen=True)
class TokenizerParams(StepParams):
    max_length: int  # tokens per query, [CLS] and [SEP] included; longer queries are truncated
    ids_output: str  # the embedder graph's input names
    mask_output: str
    pad_multiple: int = 0  # > 0: pad each batch to a multiple of this (native GPU backends batch equal shapes)
    text_output: str | None = None  # QUERY_TEXT: also emit the query text (the hybrid ranker's BM25 reads it)

    def __post_init__(self) -> None:
        if self.text_output not in (None, QUERY_TEXT):
            raise ConfigError("tokenizer", "text_output", f"must be {QUERY_TEXT} or absent, got {self.text_output!r}")


class TokenizerStep:
    name = "tokenizer"
    params_type = TokenizerParams

    def __init__(self, encoder: TextEncoder, ids_name: str, mask_name: str, emit_text: bool = False):
        self.encoder, self.ids_name, self.mask_name, self.emit_text = encoder, ids_name, mask_name, emit_text

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: TokenizerParams) -> "TokenizerStep":
        encoder = TextEncoder.from_file(version_dir / TOKENIZER_FILE, params.max_length, cls.name, pad_multiple=params.pad_multiple)
        return cls(encoder, params.ids_output, params.mask_output, emit_text=params.text_output is not None)

    def run(self, requests: list[Arrays]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for arrays in requests:
            try:
                queries = arrays[QUERY].reshape(-1)
                if queries.size == 0:
                    raise InvalidInputError(self.name, QUERY, "batch holds no queries")
                texts = [self.encoder.decode_query(q, i) for i, q in enumerate(queries)]
                batch = self.encoder.encode_texts(texts)
                outcome = {self.ids_name: batch.input_ids, self.mask_name: batch.attention_mask,
                           TOKEN_COUNTS: batch.attention_mask.sum(axis=1)}
                if self.emit_text:
                    outcome[QUERY_TEXT] = encode_query_text(texts)
                outcomes.append(outcome)
            except ShopSearchError as exc:
                outcomes.append(exc)
        return outcomes


@dataclass(frozen=True)
class EmbedderParams(StepParams):
    vocab_size: int  # token ids outside [0, vocab_size) are refused
    max_length: int  # the longest sequence the graph accepts (its position embeddings)
    intra_op_threads: int = 0  # ONNX Runtime threads per instance; 0: one (see session_threads)
    row_by_row: bool = False  # run each query alone (dynamic INT8: a vector must not depend on its batch)


class EmbedderStep:
    name = "embedder"
    params_type = EmbedderParams

    def __init__(self, embedder: OnnxEmbedder, vocab_size: int, max_length: int):
        self.embedder, self.vocab_size, self.max_length = embedder, vocab_size, max_length
        self.ids_name, self.mask_name = embedder.input_names
        self.output_name = embedder.output_name

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: EmbedderParams) -> "EmbedderStep":
        embedder = OnnxEmbedder(version_dir / EMBEDDER_FILE, session_threads(params.intra_op_threads), row_by_row=params.row_by_row)
        return cls(embedder, params.vocab_size, params.max_length)

    def run(self, requests: list[Arrays]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(requests)
        good: list[tuple[int, EncodedBatch]] = []
        for i, arrays in enumerate(requests):
            ids, mask = arrays[self.ids_name], arrays[self.mask_name]
            if ids.ndim != 2 or ids.shape != mask.shape:
                outcomes[i] = InvalidInputError(
                    self.name, self.mask_name, f"shape {list(mask.shape)} must equal {self.ids_name}'s {list(ids.shape)} and be 2-D"
                )
            elif ids.shape[1] > self.max_length:
                outcomes[i] = InvalidInputError(self.name, self.ids_name, f"{ids.shape[1]} tokens exceed the model's {self.max_length}")
            elif ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
                outcomes[i] = InvalidInputError(self.name, self.ids_name, f"token ids must lie in [0, {self.vocab_size})")
            else:
                good.append((i, EncodedBatch(ids.astype(np.int64), mask.astype(np.int64))))
        if good:
            # Requests arrive with different sequence lengths (ragged batching); pad them to one.
            joined, rows = pad_batches([b for _, b in good])
            vectors = self.embedder.embed(joined)
            start = 0
            for (i, _), n in zip(good, rows):
                outcomes[i] = {self.output_name: vectors[start : start + n]}
                start += n
        return outcomes  # type: ignore[return-value]


HYBRID = "hybrid"


@dataclass(frozen=True)
class RankerParams(StepParams):
    query_input: str  # the embedder graph's output name
    n_candidates: int  # rows returned per query
    embedder_id: str  # checksum of the embedder the index was built with; the index refuses any other
    mode: str | None = None  # None: dense (exact inner product); HYBRID: BM25 + dense, re-ranked
    n_dense: int | None = None  # hybrid: dense candidates per query
    n_lexical: int | None = None  # hybrid: BM25 candidates per query
    rescore_top: int | None = None  # hybrid cascade: the re-ranker's best per query that RESCORER_ONNX re-orders

    def __post_init__(self) -> None:
        if self.mode not in (None, HYBRID):
            raise ConfigError("ranker", "mode", f"must be {HYBRID} or absent (dense), got {self.mode!r}")
        if (self.mode == HYBRID) != (self.n_dense is not None and self.n_lexical is not None):
            raise ConfigError("ranker", "n_dense/n_lexical", "are set exactly when the mode is hybrid")
        if self.rescore_top is not None and (self.mode != HYBRID or self.rescore_top < 1):
            raise ConfigError("ranker", "rescore_top", f"is a count >= 1 of a hybrid ranker's cascade, got {self.rescore_top}")


class RankerStep:
    """Query vectors -> candidate catalog rows and scores. Dense mode: exact inner-product search.
    Hybrid mode (a build with a trained re-ranker): BM25 and dense candidates, re-ranked by the
    learned model, which also needs the query text."""

    name = "ranker"
    params_type = RankerParams

    def __init__(self, index: CatalogIndex, query_name: str, n_candidates: int, hybrid: HybridRanker | None = None,
                 facets: CatalogFacets | None = None):
        self.index, self.query_name, self.n_candidates, self.hybrid = index, query_name, n_candidates, hybrid
        self.facets = facets

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: RankerParams) -> "RankerStep":
        index = CatalogIndex.load(version_dir, expected_embedder_id=params.embedder_id).prepare()
        hybrid = None
        if params.mode == HYBRID:
            rescorer = OnnxReranker(version_dir / RESCORER_ONNX) if params.rescore_top else None
            hybrid = HybridRanker(index, LexicalScorer.load(version_dir / LEXICAL_DIR), OnnxReranker(version_dir / RERANKER_ONNX),
                                  params.n_dense, params.n_lexical, rescorer, params.rescore_top or 0)
        facets = CatalogFacets.load(version_dir) if (version_dir / FACETS_MANIFEST).exists() else None
        return cls(index, params.query_input, params.n_candidates, hybrid, facets)

    def _allowed(self, arrays: Arrays) -> np.ndarray | None:
        """The rows a request's filters allow (None: no filter sent)."""
        filters = SearchFilters(
            category=single_value(arrays, CATEGORY, self.name,
                                  lambda v: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)),
            price_min=single_value(arrays, PRICE_MIN, self.name, float),
            price_max=single_value(arrays, PRICE_MAX, self.name, float),
            in_stock=single_value(arrays, IN_STOCK, self.name, bool),
        )
        if not filters.active:
            filters.check(self.name)
            return None
        if self.facets is None:
            sent = next(name for name in FILTER_INPUTS if name in arrays)
            raise InvalidInputError(self.name, sent, "this build has no catalog facets to filter on: rebuild it")
        allowed = self.facets.mask(filters, self.name)
        if len(allowed) != len(self.index):
            raise ArtifactError(f"ranker: facets cover {len(allowed)} products, the index {len(self.index)}")
        return allowed

    def _search(self, vectors: np.ndarray, texts: list[str], allowed: np.ndarray | None) -> tuple[np.ndarray, ...]:
        if self.hybrid is not None:
            pool: list[int] = []
            indices, scores = self.hybrid.rank(texts, vectors, self.n_candidates, pool, allowed)
            return indices, scores, np.array(pool, dtype=np.int64)
        if allowed is None:
            indices, scores = self.index.search(vectors, self.n_candidates)
            return indices, scores, np.full(len(vectors), len(self.index), dtype=np.int64)  # the catalog searched
        indices, scores = self.index.search_within(vectors, self.n_candidates, allowed)
        return indices, scores, np.full(len(vectors), int(allowed.sum()), dtype=np.int64)

    def _texts(self, arrays: Arrays, rows: int) -> list[str]:
        if QUERY_TEXT not in arrays:
            raise InvalidInputError(self.name, QUERY_TEXT, "hybrid ranking needs the query text")
        raw = arrays[QUERY_TEXT]
        if raw.ndim != 2 or raw.shape != (rows, QUERY_TEXT_BYTES):
            raise InvalidInputError(self.name, QUERY_TEXT, f"expected [{rows}, {QUERY_TEXT_BYTES}] for {rows} query vectors, got {list(raw.shape)}")
        return decode_query_text(raw.astype(np.uint8, copy=False))

    def run(self, requests: list[Arrays]) -> list[Outcome]:
        queries = [r[self.query_name].astype(np.float32) for r in requests]
        outcomes: list[Outcome | None] = [None] * len(requests)
        texts: dict[int, list[str]] = {}
        allowed: dict[int, np.ndarray | None] = {}
        for i, q in enumerate(queries):
            try:
                if q.ndim != 2 or q.shape[1] != self.index.dim:
                    raise InvalidInputError(self.name, self.query_name, f"expected [batch, {self.index.dim}], got {list(q.shape)}")
                texts[i] = self._texts(requests[i], q.shape[0]) if self.hybrid is not None else []
                allowed[i] = self._allowed(requests[i])
            except ShopSearchError as exc:
                outcomes[i] = exc
        good = [i for i in range(len(requests)) if outcomes[i] is None]
        # Unfiltered requests are searched as one batch; each filtered one with its own rows.
        groups = [[i for i in good if allowed[i] is None]] + [[i] for i in good if allowed[i] is not None]
        for group in (g for g in groups if g):
            vectors = np.concatenate([queries[i] for i in group])
            indices, scores, pool_sizes = self._search(vectors, [t for i in group for t in texts[i]], allowed[group[0]])
            start = 0
            for i in group:
                n = queries[i].shape[0]
                outcomes[i] = {CANDIDATE_INDICES: indices[start : start + n], CANDIDATE_SCORES: scores[start : start + n],
                               CANDIDATE_POOL: pool_sizes[start : start + n]}
                start += n
        return outcomes  # type: ignore[return-value]


def single_value(arrays: Arrays, name: str, model: str, convert):
    """An optional [1] input holding one value for every row of a request, converted; None when absent."""
    if name not in arrays:
        return None
    values = arrays[name].reshape(-1)
    if values.size == 0:
        raise InvalidInputError(model, name, "holds no value")
    first = values[0]
    if any(v != first for v in values[1:].tolist()):
        raise InvalidInputError(model, name, "must hold one value for every row of a request")
    return convert(first)


def requested_flag(arrays: Arrays, name: str, default: bool, model: str) -> bool:
    """An optional BOOL [1] input: one value per request; `default` when absent."""
    if name not in arrays:
        return default
    values = np.unique(arrays[name].reshape(-1).astype(bool))
    if values.size != 1:
        raise InvalidInputError(model, name, "must hold one value for every row of a request")
    return bool(values[0])


@dataclass(frozen=True)
class PostprocessParams(StepParams):
    top_k: int  # products per answer when the request sends no TOPK
    max_k: int  # the most a request may ask for: the ranker's candidate count


@dataclass(frozen=True)
class SearchPostprocessParams(PostprocessParams):
    collapse: bool = True  # one result per listing group unless the request sends COLLAPSE false


class PostprocessStep:
    """Candidates -> top-k products. `top_k` is the default; a request may ask for fewer or more
    (up to the ranker's candidate count) with the optional TOPK input. Identical listings collapse
    into one result unless the request's optional COLLAPSE is false."""

    name = "postprocess"
    params_type = SearchPostprocessParams

    def __init__(self, catalog: CatalogLookup, top_k: int, max_k: int, collapse: bool = True):
        self.catalog, self.top_k, self.max_k, self.collapse = catalog, top_k, max_k, collapse

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: SearchPostprocessParams) -> "PostprocessStep":
        return cls(CatalogLookup.load(version_dir), params.top_k, params.max_k, params.collapse)

    def requested_k(self, arrays: Arrays) -> int:
        return requested_k(arrays, self.top_k, self.max_k, self.name)

    def run(self, requests: list[Arrays]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for arrays in requests:
            indices, scores = arrays[CANDIDATE_INDICES], arrays[CANDIDATE_SCORES]
            try:
                if indices.shape != scores.shape or indices.ndim != 2:
                    raise InvalidInputError(self.name, CANDIDATE_SCORES, f"shape {list(scores.shape)} does not match {CANDIDATE_INDICES} {list(indices.shape)}")
                k = self.requested_k(arrays)
                collapse = requested_flag(arrays, COLLAPSE, self.collapse, self.name)
            except ShopSearchError as exc:
                outcomes.append(exc)
                continue
            ids, titles, top_scores = hits_to_arrays(self.catalog.finalize(indices, scores, k, collapse), k)
            outcomes.append({PRODUCT_IDS: ids, TITLES: titles, SCORES: top_scores})
        return outcomes

