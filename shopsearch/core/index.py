"""Inner-product search over the catalog's embeddings, with deterministic tie-breaking.

`CatalogIndex.search(queries, k)` is exact unless the index carries an approximate faiss index
(`shopsearch.core.ann`, chosen by the recipe's [index] or `INDEX=`). The exact search
runs as a two-node ONNX graph (MatMul + TopK) in ONNX Runtime: its GEMM keeps the catalog
pre-packed and stays fast for the small batches a server forms (4-16 queries), where numpy's
BLAS matmul plus a per-row argpartition cost 2-3x more per query (measured on the 2-core CI
machine). TopK breaks ties by the lower index, as `top_k_rows` does.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from shopsearch.core.provenance import file_sha256
from shopsearch.core.ann import ANN_FILE, IndexSpec, ann_search, build_ann, load_ann, save_ann
from shopsearch.errors import ArtifactError, ConfigError

# Above this many bytes the catalog is fed to each run instead of stored in the graph: an ONNX
# model is one protobuf message, and protobuf refuses messages over 2 GiB.
MAX_EMBEDDED_CATALOG_BYTES = 1 << 30

# A filter allowing at most this many rows is searched exactly, whatever the index: scoring them
# all (a gather and a [rows, dim] product) costs about what an approximate search does, and
# loses nothing (50,000 x 256 float32 rows: about 4 ms on one core of the CI machine).
EXACT_WITHIN_MAX = 50_000

INDEX_VECTORS = "index.npy"
INDEX_MANIFEST = "index.json"


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k highest scores, ties broken by lower column index; both arrays [rows, k]."""
    rows, n = scores.shape
    k = min(k, n)
    indices = np.empty((rows, k), dtype=np.int64)
    for r in range(rows):
        row = scores[r]
        if k < n:
            cutoff = row[np.argpartition(-row, k - 1)[k - 1]]
            # Everything above the k-th score, plus every tie with it, so the tie-break is exact.
            pool = np.flatnonzero(row >= cutoff)
        else:
            pool = np.arange(n)
        order = np.lexsort((pool, -row[pool]))[:k]
        indices[r] = pool[order]
    return indices, np.take_along_axis(scores, indices, axis=1)


def _search_graph(catalog_t: np.ndarray, embed_catalog: bool) -> bytes:
    """ONNX model: queries [batch, dim] x catalog_t [dim, n] -> top k scores and rows, sorted."""
    from onnx import TensorProto, helper, numpy_helper

    dim = catalog_t.shape[0]
    inputs = [helper.make_tensor_value_info("queries", TensorProto.FLOAT, ["batch", dim]),
              helper.make_tensor_value_info("k", TensorProto.INT64, [1])]
    initializers = []
    if embed_catalog:
        initializers.append(numpy_helper.from_array(catalog_t, "catalog_t"))
    else:
        inputs.append(helper.make_tensor_value_info("catalog_t", TensorProto.FLOAT, list(catalog_t.shape)))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["queries", "catalog_t"], ["scores"]),
         helper.make_node("TopK", ["scores", "k"], ["top_scores", "top_rows"], axis=-1, largest=1, sorted=1)],
        "exact_search", inputs,
        [helper.make_tensor_value_info("top_scores", TensorProto.FLOAT, ["batch", "k"]),
         helper.make_tensor_value_info("top_rows", TensorProto.INT64, ["batch", "k"])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime this project pins
    return model.SerializeToString()


class ExactSearch:
    """Top-k inner-product search of a fixed catalog in one ONNX Runtime session (one thread:
    a server runs it beside other models on the same cores and parallelises across requests)."""

    def __init__(self, vectors: np.ndarray, intra_op_threads: int = 1):
        import onnxruntime as ort

        self.catalog_t = np.ascontiguousarray(vectors.T)
        self.n = vectors.shape[0]
        self.embedded = self.catalog_t.nbytes <= MAX_EMBEDDED_CATALOG_BYTES
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(_search_graph(self.catalog_t, self.embedded), options,
                                            providers=["CPUExecutionProvider"])
        if self.embedded:
            self.catalog_t = None  # the session holds its own (pre-packed) copy

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n)
        feed = {"queries": np.ascontiguousarray(queries, dtype=np.float32), "k": np.array([k], dtype=np.int64)}
        if not self.embedded:
            feed["catalog_t"] = self.catalog_t
        scores, rows = self.session.run(None, feed)
        return rows, scores


def array_file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    """sha256 of a .npy file's data, read in chunks: equal to sha256(np.load(path).tobytes()) for a
    C-ordered array, without mapping it into memory (a memory-mapped catalog stays untouched)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        # Leaves the file at the first data byte.
        (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class CatalogIndex:
    """The catalog's vectors [n, dim] float32 and, when `spec` is approximate, the faiss index over
    them that answers `search`. The vectors then stay memory-mapped: only the rows an IVF search
    rescores, a filter scores exactly, or the hybrid ranker's candidates need are read. An IVF index
    without rescoring (`rescore = 0`) never reads them: those rows come decoded from its 8-bit codes."""

    def __init__(self, vectors: np.ndarray, embedder_id: str, spec: IndexSpec = IndexSpec(), ann=None):
        if vectors.ndim != 2 or vectors.dtype != np.float32:
            raise ArtifactError(f"catalog index: vectors must be float32 [n, dim], got {vectors.dtype} {vectors.shape}")
        if spec.approximate and ann is None:
            raise ArtifactError(f"catalog index: a {spec.kind} index needs its faiss index")
        self.vectors = vectors
        self.embedder_id = embedder_id
        self.spec, self.ann = spec, ann
        if not spec.reads_vectors:
            ann.make_direct_map()  # row -> its code, for `row_vectors` (8 bytes per product)
        self._checksum: str | None = None
        self._exact: ExactSearch | None = None
        self._exact_lock = threading.Lock()

    @classmethod
    def build(cls, vectors: np.ndarray, embedder_id: str, spec: IndexSpec = IndexSpec(), threads: int | None = None,
              progress=None) -> "CatalogIndex":
        ann = build_ann(vectors, spec, threads, progress) if spec.approximate else None
        return cls(vectors, embedder_id, spec, ann)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ConfigError("ranker", "query_embedding", f"expected [batch, {self.dim}], got {list(queries.shape)}")
        if len(queries) == 0:
            return np.zeros((0, min(k, len(self))), dtype=np.int64), np.zeros((0, min(k, len(self))), dtype=np.float32)
        if self.ann is not None:
            k = min(k, len(self))
            rows, scores = self._rescored(queries, *ann_search(self.ann, queries, self._fetch(k)))
            return rows[:, :k], scores[:, :k]
        return self.exact_search(queries, k)

    def row_vectors(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), dim]: the catalog's vectors of `rows`, or, for an IVF index that does
        not rescore, those decoded from its 8-bit codes (the float32 file stays untouched)."""
        if self.spec.reads_vectors:
            return np.asarray(self.vectors[rows])
        return self.ann.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64)).astype(np.float32, copy=False)

    def _fetch(self, k: int) -> int:
        """Candidates to ask the approximate index for: IVF fetches `rescore` per result (8-bit
        scores misorder near ties; the exact rescoring keeps the best k of them)."""
        return min(k * self.spec.rescore, len(self)) if self.spec.kind == "ivf" and self.spec.rescore else k

    def _rescored(self, queries: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An IVF index scores 8-bit codes: its candidates get their exact float32 scores from the
        (memory-mapped) vectors and are ordered by those, then by row, as exact search orders them.
        The set found is the index's; its order and scores are exact (0.35 of top-10 lists came
        out in exact order from the 8-bit scores alone on a clustered test catalog)."""
        if self.spec.kind != "ivf" or not self.spec.rescore or rows.size == 0:
            return rows, scores  # HNSW keeps float32 vectors: its scores are exact already
        found = rows >= 0
        vectors = np.asarray(self.vectors[np.where(found, rows, 0).reshape(-1)]).reshape(*rows.shape, self.dim)
        exact = np.einsum("bkd,bd->bk", vectors, np.asarray(queries, dtype=np.float32)).astype(np.float32)
        exact[~found] = -np.inf
        order = np.lexsort((np.where(found, rows, np.iinfo(np.int64).max), -exact), axis=-1)
        return np.take_along_axis(rows, order, axis=-1), np.take_along_axis(exact, order, axis=-1)

    def search_within(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows among those `allowed` ([n] bool) for each query, padded with -1 / -inf.

        Few allowed rows (a category, a narrow price band), or no approximate index: every allowed
        row is scored, exactly. Many: the approximate index searches with the rows as a selector
        (faiss filters inside the search), so its recall holds as it does unfiltered."""
        rows = np.flatnonzero(allowed)
        k_out = min(k, len(self))
        if rows.size == 0 or len(queries) == 0:
            return (np.full((len(queries), k_out), -1, dtype=np.int64), np.full((len(queries), k_out), -np.inf, dtype=np.float32))
        if self.ann is None or rows.size <= EXACT_WITHIN_MAX:
            scores = (self.row_vectors(rows) @ np.asarray(queries, dtype=np.float32).T).T  # [batch, allowed]
            top, top_scores = top_k_rows(scores, min(k_out, rows.size))
            found = rows[top]
        else:
            found, top_scores = self._rescored(queries, *ann_search(self.ann, queries, self._fetch(k_out), allowed))
            found, top_scores = found[:, :k_out], top_scores[:, :k_out]
        pad = k_out - found.shape[1]
        if pad:
            found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return found.astype(np.int64), top_scores.astype(np.float32)

    def prepare(self) -> "CatalogIndex":
        """Build what the first search would (exact search's session, seconds at 200,000 products),
        so a server loading the index is ready when it says so and no request waits for it."""
        if self.ann is None:
            self.exact_search(np.zeros((1, self.dim), dtype=np.float32), 1)
        return self

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every product scored, whatever the index kind: the reference the recall gate measures against."""
        with self._exact_lock:  # built once, on first use: loading an index stays cheap
            if self._exact is None:
                self._exact = ExactSearch(self.vectors)
        return self._exact.search(queries, k)

    def checksum(self) -> str:
        if self._checksum is None:
            self._checksum = hashlib.sha256(np.ascontiguousarray(self.vectors).tobytes()).hexdigest()[:16]
        return self._checksum

    def save(self, directory: Path) -> dict:
        """index.npy + index.json (+ ann.faiss); returns the manifest written."""
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / INDEX_VECTORS, self.vectors)
        manifest = {"embedder_id": self.embedder_id, "count": len(self), "dim": self.dim, "checksum": self.checksum(),
                    "index": self.spec.to_json()}
        if self.ann is not None:
            save_ann(self.ann, directory / ANN_FILE)
            manifest["ann_sha256"] = file_sha256(directory / ANN_FILE)
            manifest["ann_bytes"] = (directory / ANN_FILE).stat().st_size
        else:
            (directory / ANN_FILE).unlink(missing_ok=True)  # left by an earlier build of another kind
        (directory / INDEX_MANIFEST).write_text(json.dumps(manifest, indent=2))
        return manifest

    @classmethod
    def load(cls, directory: Path, expected_embedder_id: str | None = None) -> "CatalogIndex":
        manifest_path = directory / INDEX_MANIFEST
        if not manifest_path.exists():
            raise ArtifactError(f"catalog index: {manifest_path} is missing")
        manifest = json.loads(manifest_path.read_text())
        spec = IndexSpec.from_mapping(manifest.get("index", {}), str(manifest_path))
        ann = None
        if spec.approximate:
            ann_path = directory / ANN_FILE
            if not ann_path.exists() or file_sha256(ann_path) != manifest.get("ann_sha256"):
                raise ArtifactError(f"catalog index: {ann_path} is missing or does not match its manifest checksum")
            ann = load_ann(ann_path, spec)
        # Checked by reading the file, so a memory-mapped catalog is not pulled into memory.
        if array_file_sha256(directory / INDEX_VECTORS)[:16] != manifest["checksum"]:
            raise ArtifactError(f"catalog index: {directory / INDEX_VECTORS} does not match its manifest checksum")
        vectors = np.load(directory / INDEX_VECTORS, mmap_mode="r" if spec.approximate else None)
        index = cls(vectors, manifest["embedder_id"], spec, ann)
        index._checksum = manifest["checksum"]
        if expected_embedder_id is not None and expected_embedder_id != index.embedder_id:
            raise ArtifactError(
                f"catalog index in {directory} was built by embedder {index.embedder_id}, "
                f"but the served embedder is {expected_embedder_id}; rebuild the index"
            )
        return index
