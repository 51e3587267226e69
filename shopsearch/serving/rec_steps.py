"""The logic of the recommendation models, numpy in -> numpy out like `steps.py`.

    recommend:      HISTORY ids -> item_lookup -> user_encoder -> rec_ranker -> rec_postprocess
    similar_items:  ITEM_IDS    -> item_lookup -> item_embedding -> rec_ranker -> rec_postprocess

item_lookup turns product ids into catalog rows (unknown ids are dropped and reported back, the
most recent `window` known items feed the encoder) and into the set of rows to leave out (what the
shopper has, plus EXCLUDE). rec_postprocess removes those, and answers from popularity when no
history item is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shopsearch.core.index import INDEX_VECTORS
from shopsearch.core.results import CatalogLookup
from shopsearch.errors import ArtifactError, InvalidInputError, ShopSearchError
from shopsearch.serving.params import StepParams
from shopsearch.serving.steps import (
    Arrays, Outcome, PostprocessParams, requested_k, session_threads,
)
from shopsearch.serving.tensors import (
    CANDIDATE_INDICES, CANDIDATE_SCORES, EXCLUDE, HISTORY, KNOWN_ITEMS, PRODUCT_IDS, SCORES, SEEN_ITEMS, STRATEGY, TITLES,
    UNKNOWN_IDS,
)

USER_ENCODER_FILE = "model.onnx"
POPULARITY_FILE = "popularity.json"
# Ids one request row may carry; far beyond any window, it only bounds the work a request can ask for.
MAX_IDS_PER_ROW = 10_000


def _ids(raw: np.ndarray, model: str, field: str) -> list[list[str]]:
    """[batch, n] BYTES -> per row the non-empty ids ("" is padding for rows of unequal length)."""
    if raw.ndim != 2:
        raise InvalidInputError(model, field, f"expected [batch, ids], got {list(raw.shape)}")
    if raw.shape[1] > MAX_IDS_PER_ROW:
        raise InvalidInputError(model, field, f"{raw.shape[1]} ids in a row exceed the limit of {MAX_IDS_PER_ROW}")
    rows = []
    for row in raw:
        ids = [(v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)).strip() for v in row]
        rows.append([i for i in ids if i])
    return rows


@dataclass(frozen=True)
class ItemLookupParams(StepParams):
    items_output: str  # the user encoder graph's input name
    window: int  # item rows per history the encoder reads (its fixed input width)
    max_seen: int  # rows a response leaves out: EXCLUDE first, then the newest history


class ItemLookupStep:
    name = "item_lookup"
    params_type = ItemLookupParams

    def __init__(self, product_ids: list[str], items_name: str, window: int, max_seen: int):
        self.row = {pid: i for i, pid in enumerate(product_ids)}
        self.padding = len(product_ids)  # the encoder's padding row
        self.items_name, self.window, self.max_seen = items_name, window, max_seen

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: ItemLookupParams) -> "ItemLookupStep":
        return cls(CatalogLookup.load(version_dir).product_ids, params.items_output, params.window, params.max_seen)

    def lookup(self, history: list[str], exclude: list[str]) -> tuple[list[int], list[int], list[str]]:
        """(known rows oldest first, rows to leave out, unknown ids)."""
        known = [self.row[i] for i in history if i in self.row]
        unknown = [i for i in dict.fromkeys(history + exclude) if i not in self.row]
        # EXCLUDE first (business rules must hold), then the most recent history.
        leave_out = list(dict.fromkeys([self.row[i] for i in exclude if i in self.row] + known[::-1]))[: self.max_seen]
        return known, leave_out, unknown

    def run(self, requests: list[Arrays]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for arrays in requests:
            try:
                histories = _ids(arrays[HISTORY], self.name, HISTORY)
                excludes = _ids(arrays[EXCLUDE], self.name, EXCLUDE) if EXCLUDE in arrays else [[] for _ in histories]
                if len(excludes) != len(histories):
                    raise InvalidInputError(self.name, EXCLUDE, f"{len(excludes)} rows for {len(histories)} histories")
            except ShopSearchError as exc:
                outcomes.append(exc)
                continue
            n = len(histories)
            items = np.full((n, self.window), self.padding, dtype=np.int64)
            seen = np.full((n, self.max_seen), -1, dtype=np.int64)
            known_counts = np.zeros((n, 1), dtype=np.int32)
            unknown_rows = []
            for r, (history, exclude) in enumerate(zip(histories, excludes)):
                known, leave_out, unknown = self.lookup(history, exclude)
                recent = known[-self.window :]  # a history longer than the window keeps its newest items
                if recent:
                    items[r, self.window - len(recent) :] = recent
                seen[r, : len(leave_out)] = leave_out
                known_counts[r, 0] = len(known)
                unknown_rows.append(unknown)
            width = max(1, max(len(u) for u in unknown_rows))
            unknown = np.full((n, width), b"", dtype=object)
            for r, ids in enumerate(unknown_rows):
                unknown[r, : len(ids)] = [i.encode("utf-8") for i in ids]
            outcomes.append({self.items_name: items, SEEN_ITEMS: seen, KNOWN_ITEMS: known_counts, UNKNOWN_IDS: unknown})
        return outcomes


def _check_rows(model: str, name: str, rows: np.ndarray, window: int, n_items: int) -> None:
    if rows.ndim != 2 or rows.shape[1] != window:
        raise InvalidInputError(model, name, f"expected [batch, {window}], got {list(rows.shape)}")
    if rows.size and (rows.min() < 0 or rows.max() > n_items):
        raise InvalidInputError(model, name, f"item rows must lie in [0, {n_items}] ({n_items} pads)")


@dataclass(frozen=True)
class UserEncoderParams(StepParams):
    n_items: int  # catalog items; row n_items is the padding row
    intra_op_threads: int = 0  # ONNX Runtime threads per instance; 0: one


class UserEncoderStep:
    """The exported sequential recommender: item rows -> user vector, all requests in one run."""

    name = "user_encoder"
    params_type = UserEncoderParams

    def __init__(self, path: Path, n_items: int, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.window = self.session.get_inputs()[0].shape[1]
        self.output_name = self.session.get_outputs()[0].name
        self.n_items = n_items

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: UserEncoderParams) -> "UserEncoderStep":
        return cls(version_dir / USER_ENCODER_FILE, params.n_items, session_threads(params.intra_op_threads))

    def encode(self, rows: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: rows.astype(np.int64, copy=False)})[0]

    def run(self, requests: list[Arrays]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(requests)
        good = []
        for i, arrays in enumerate(requests):
            try:
                _check_rows(self.name, self.input_name, arrays[self.input_name], self.window, self.n_items)
                good.append(i)
            except ShopSearchError as exc:
                outcomes[i] = exc
        if good:
            vectors = self.encode(np.concatenate([requests[i][self.input_name] for i in good]))
            start = 0
            for i in good:
                n = requests[i][self.input_name].shape[0]
                outcomes[i] = {self.output_name: vectors[start : start + n]}
                start += n
        return outcomes  # type: ignore[return-value]


@dataclass(frozen=True)
class ItemEmbeddingParams(StepParams):
    items_input: str  # the user encoder graph's input name (similar_items swaps this step for it)
    vector_output: str  # ... and its output name
    window: int


class ItemEmbeddingStep:
    """Item rows -> the mean of their item vectors (the same table the ranker searches)."""

    name = "item_embedding"
    params_type = ItemEmbeddingParams

    def __init__(self, vectors: np.ndarray, items_name: str, output_name: str, window: int):
        self.vectors = np.vstack([vectors, np.zeros((1, vectors.shape[1]), dtype=np.float32)])  # + the padding row
        self.n_items = vectors.shape[0]
        self.items_name, self.output_name, self.window = items_name, output_name, window

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: ItemEmbeddingParams) -> "ItemEmbeddingStep":
        path = version_dir / INDEX_VECTORS
        if not path.exists():
            raise ArtifactError(f"{cls.name}: {path} is missing")
        return cls(np.load(path), params.items_input, params.vector_output, params.window)

    def run(self, requests: list[Arrays]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for arrays in requests:
            rows = arrays[self.items_name]
            try:
                _check_rows(self.name, self.items_name, rows, self.window, self.n_items)
            except ShopSearchError as exc:
                outcomes.append(exc)
                continue
            known = (rows != self.n_items).sum(axis=1, keepdims=True)
            mean = self.vectors[rows].sum(axis=1) / np.maximum(known, 1)
            outcomes.append({self.output_name: mean.astype(np.float32)})
        return outcomes


class RecPostprocessStep:
    """Candidates -> top-k products the shopper does not have, backfilled by popularity; with no
    known history item, the popularity ranking alone."""

    name = "rec_postprocess"
    params_type = PostprocessParams

    def __init__(self, catalog: CatalogLookup, popularity: np.ndarray, top_k: int, max_k: int):
        self.catalog, self.top_k, self.max_k = catalog, top_k, max_k
        self.popularity = popularity.astype(np.float32)
        self.by_popularity = np.lexsort((np.arange(len(popularity)), -self.popularity))

    @classmethod
    def from_artifacts(cls, version_dir: Path, params: PostprocessParams) -> "RecPostprocessStep":
        catalog = CatalogLookup.load(version_dir)
        path = version_dir / POPULARITY_FILE
        if not path.exists():
            raise ArtifactError(f"{cls.name}: {path} is missing")
        popularity = np.asarray(json.loads(path.read_text())["counts"], dtype=np.float32)
        if len(popularity) != len(catalog):
            raise ArtifactError(f"{cls.name}: {len(popularity)} popularity counts for {len(catalog)} catalog items")
        return cls(catalog, popularity, params.top_k, params.max_k)

    def requested_k(self, arrays: Arrays) -> int:
        return requested_k(arrays, self.top_k, self.max_k, self.name)

    def rank_row(self, indices: np.ndarray, scores: np.ndarray, seen: np.ndarray, known: int, k: int) -> tuple[list[int], list[float], str]:
        leave_out = set(seen[seen >= 0].tolist())
        picked: list[int] = []
        picked_scores: list[float] = []
        strategy = "popularity"
        if known > 0:
            strategy = "model"
            for i, s in zip(indices.tolist(), scores.tolist()):
                if 0 <= i < len(self.catalog) and i not in leave_out and i not in picked:
                    picked.append(i)
                    picked_scores.append(float(s))
                    if len(picked) == k:
                        break
        for i in self.by_popularity:  # backfill (or the whole answer with no known history)
            if len(picked) == k:
                break
            i = int(i)
            if i not in leave_out and i not in picked:
                picked.append(i)
                picked_scores.append(float(self.popularity[i]) if strategy == "popularity" else 0.0)
        return picked, picked_scores, strategy

    def run(self, requests: list[Arrays]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for arrays in requests:
            indices, scores = arrays[CANDIDATE_INDICES], arrays[CANDIDATE_SCORES]
            seen, known = arrays[SEEN_ITEMS], arrays[KNOWN_ITEMS]
            try:
                if indices.shape != scores.shape or indices.ndim != 2:
                    raise InvalidInputError(self.name, CANDIDATE_SCORES, f"shape {list(scores.shape)} does not match {CANDIDATE_INDICES} {list(indices.shape)}")
                if seen.ndim != 2 or seen.shape[0] != indices.shape[0] or known.shape != (indices.shape[0], 1):
                    raise InvalidInputError(self.name, SEEN_ITEMS, f"rows do not match the {indices.shape[0]} candidate rows")
                k = self.requested_k(arrays)
            except ShopSearchError as exc:
                outcomes.append(exc)
                continue
            n = indices.shape[0]
            ids = np.full((n, k), b"", dtype=object)
            titles = np.full((n, k), b"", dtype=object)
            out_scores = np.zeros((n, k), dtype=np.float32)
            strategies = np.empty((n, 1), dtype=object)
            for r in range(n):
                rows, row_scores, strategy = self.rank_row(indices[r], scores[r], seen[r], int(known[r, 0]), k)
                ids[r, : len(rows)] = [self.catalog.product_ids[i].encode("utf-8") for i in rows]
                titles[r, : len(rows)] = [self.catalog.titles[i].encode("utf-8") for i in rows]
                out_scores[r, : len(rows)] = row_scores
                strategies[r, 0] = strategy.encode()
            outcomes.append({PRODUCT_IDS: ids, TITLES: titles, SCORES: out_scores, STRATEGY: strategies})
        return outcomes


REC_STEP_TYPES = {step.name: step for step in (ItemLookupStep, UserEncoderStep, ItemEmbeddingStep, RecPostprocessStep)}
