"""The logic of each served model, as plain numpy in -> numpy out, testable without a server.

Each step's `run` takes one dict of input arrays per request (what Triton's dynamic batcher
grouped together) and returns, per request, either a dict of output arrays or the
ShopSearchError that request earned. The ranker joins the requests into one batch, and so does
the embedder unless its artifact must run row by row (INT8); a bad request never fails its neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from shopsearch.embedding import OnnxEmbedder
from shopsearch.errors import ArtifactError, InvalidInputError, ShopSearchError
from shopsearch.hybrid import LEXICAL_DIR, RERANKER_ONNX, HybridRanker, LexicalScorer, OnnxReranker
from shopsearch.index import CatalogIndex
from shopsearch.results import CatalogLookup, hits_to_arrays
from shopsearch.serving.step_metrics import CANDIDATE_POOL, TOKEN_COUNTS
from shopsearch.tokenization import TOKENIZER_FILE, EncodedBatch, TextEncoder, pad_batches

Arrays = dict[str, np.ndarray]
Outcome = Arrays | ShopSearchError

QUERY = "QUERY"
# The query text as the tokenizer read it, UTF-8 in a fixed-size UINT8 row (zero padded) for the
# hybrid ranker's BM25. Not BYTES: Triton checks a fixed-size tensor's byte count per request, so
# no caller can send the ranker malformed string framing that would fail the requests batched
# with it (the Python backend fails a whole execution on one malformed BYTES input).
QUERY_TEXT = "QUERY_TEXT"
QUERY_TEXT_BYTES = 512
TOPK = "TOPK"
CANDIDATE_INDICES = "CANDIDATE_INDICES"
CANDIDATE_SCORES = "CANDIDATE_SCORES"
PRODUCT_IDS = "PRODUCT_IDS"
TITLES = "TITLES"
SCORES = "SCORES"

EMBEDDER_FILE = "model.onnx"


def intra_op_threads(params: Mapping[str, str]) -> int:
    """ONNX Runtime threads per served instance: the configured number, or with 0 one thread.

    A served model shares the cores with the server, the other models and often the clients;
    Triton parallelises across requests (batches, instances). Intra-op threads on top cost more
    CPU than they save for models this small: on the 2-core CI machine one query row of the INT8
    embedder took 0.40 ms CPU on one thread and 0.64-0.72 ms on two, and the served embedder
    used 0.74-1.0 cores at ~360 q/s with two threads against 0.28 cores at ~470 q/s with one.
    More cores: raise the instance count (`make tune`), or set threads explicitly."""
    threads = int(params.get("intra_op_threads", "0"))
    return threads if threads > 0 else 1


def serving_thread_limits():
    """Caps numpy's BLAS thread pool at one thread in this process; returns the (global) limit.

    A served model's process shares the cores as above, and OpenBLAS threads busy-wait after
    each call: the Home Depot ranker (dense scores of its few hundred candidates) used 2x its wall
    time in CPU with the default pool of two and 1x with one, at the same wall time."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _param(params: Mapping[str, str], model: str, key: str) -> str:
    if key not in params:
        raise ArtifactError(f"{model}: config.pbtxt parameter '{key}' is missing")
    return params[key]


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


class TokenizerStep:
    name = "tokenizer"

    def __init__(self, encoder: TextEncoder, ids_name: str, mask_name: str, emit_text: bool = False):
        self.encoder, self.ids_name, self.mask_name, self.emit_text = encoder, ids_name, mask_name, emit_text

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: Mapping[str, str]) -> "TokenizerStep":
        encoder = TextEncoder.from_file(version_dir / TOKENIZER_FILE, int(_param(params, cls.name, "max_length")), cls.name,
                                        pad_multiple=int(params.get("pad_multiple", "0")))
        return cls(encoder, _param(params, cls.name, "ids_output"), _param(params, cls.name, "mask_output"),
                   emit_text=params.get("text_output") == QUERY_TEXT)

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


class EmbedderStep:
    name = "embedder"

    def __init__(self, embedder: OnnxEmbedder, vocab_size: int, max_length: int):
        self.embedder, self.vocab_size, self.max_length = embedder, vocab_size, max_length
        self.ids_name, self.mask_name = embedder.input_names
        self.output_name = embedder.output_name

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: Mapping[str, str]) -> "EmbedderStep":
        embedder = OnnxEmbedder(version_dir / EMBEDDER_FILE, intra_op_threads(params),
                                row_by_row=params.get("row_by_row", "0") == "1")
        return cls(embedder, int(_param(params, cls.name, "vocab_size")), int(_param(params, cls.name, "max_length")))

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


class RankerStep:
    """Query vectors -> candidate catalog rows and scores. Dense mode: exact inner-product search.
    Hybrid mode (a build with a trained re-ranker): BM25 and dense candidates, re-ranked by the
    learned model, which also needs the query text."""

    name = "ranker"

    def __init__(self, index: CatalogIndex, query_name: str, n_candidates: int, hybrid: HybridRanker | None = None):
        self.index, self.query_name, self.n_candidates, self.hybrid = index, query_name, n_candidates, hybrid

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: Mapping[str, str]) -> "RankerStep":
        index = CatalogIndex.load(version_dir, expected_embedder_id=_param(params, cls.name, "embedder_id"))
        hybrid = None
        if params.get("mode", "dense") == "hybrid":
            hybrid = HybridRanker(index, LexicalScorer.load(version_dir / LEXICAL_DIR), OnnxReranker(version_dir / RERANKER_ONNX),
                                  int(_param(params, cls.name, "n_dense")), int(_param(params, cls.name, "n_lexical")))
        return cls(index, _param(params, cls.name, "query_input"), int(_param(params, cls.name, "n_candidates")), hybrid)

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
        for i, q in enumerate(queries):
            try:
                if q.ndim != 2 or q.shape[1] != self.index.dim:
                    raise InvalidInputError(self.name, self.query_name, f"expected [batch, {self.index.dim}], got {list(q.shape)}")
                if self.hybrid is not None:
                    texts[i] = self._texts(requests[i], q.shape[0])
            except ShopSearchError as exc:
                outcomes[i] = exc
        good = [i for i in range(len(requests)) if outcomes[i] is None]
        if not good:
            return outcomes  # type: ignore[return-value]
        vectors = np.concatenate([queries[i] for i in good])
        if self.hybrid is not None:
            pool: list[int] = []
            indices, scores = self.hybrid.rank([t for i in good for t in texts[i]], vectors, self.n_candidates, pool)
            pool_sizes = np.array(pool, dtype=np.int64)
        else:
            indices, scores = self.index.search(vectors, self.n_candidates)
            pool_sizes = np.full(len(vectors), len(self.index), dtype=np.int64)  # exact search weighs every product
        start = 0
        for i in good:
            n = queries[i].shape[0]
            outcomes[i] = {CANDIDATE_INDICES: indices[start : start + n], CANDIDATE_SCORES: scores[start : start + n],
                           CANDIDATE_POOL: pool_sizes[start : start + n]}
            start += n
        return outcomes  # type: ignore[return-value]


class PostprocessStep:
    """Candidates -> top-k products. `top_k` is the default; a request may ask for fewer or more
    (up to the ranker's candidate count) with the optional TOPK input."""

    name = "postprocess"

    def __init__(self, catalog: CatalogLookup, top_k: int, max_k: int):
        self.catalog, self.top_k, self.max_k = catalog, top_k, max_k

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: Mapping[str, str]) -> "PostprocessStep":
        return cls(CatalogLookup.load(version_dir), int(_param(params, cls.name, "top_k")), int(_param(params, cls.name, "max_k")))

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
            except ShopSearchError as exc:
                outcomes.append(exc)
                continue
            ids, titles, top_scores = hits_to_arrays(self.catalog.finalize(indices, scores, k), k)
            outcomes.append({PRODUCT_IDS: ids, TITLES: titles, SCORES: top_scores})
        return outcomes


STEP_TYPES = {step.name: step for step in (TokenizerStep, EmbedderStep, RankerStep, PostprocessStep)}
