"""Exact inner-product search over the catalog's embeddings, with deterministic tie-breaking.

Kept behind a small interface (`search(queries, k)`) so an ANN index can replace it. The search
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

from shopsearch.errors import ArtifactError, ConfigError

# Above this many bytes the catalog is fed to each run instead of stored in the graph: an ONNX
# model is one protobuf message, and protobuf refuses messages over 2 GiB.
MAX_EMBEDDED_CATALOG_BYTES = 1 << 30

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


class CatalogIndex:
    def __init__(self, vectors: np.ndarray, embedder_id: str):
        if vectors.ndim != 2 or vectors.dtype != np.float32:
            raise ArtifactError(f"catalog index: vectors must be float32 [n, dim], got {vectors.dtype} {vectors.shape}")
        self.vectors = vectors
        self.embedder_id = embedder_id
        self._exact: ExactSearch | None = None
        self._exact_lock = threading.Lock()

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
        with self._exact_lock:  # built once, on first use: loading an index stays cheap
            if self._exact is None:
                self._exact = ExactSearch(self.vectors)
        return self._exact.search(queries, k)

    def checksum(self) -> str:
        return hashlib.sha256(self.vectors.tobytes()).hexdigest()[:16]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / INDEX_VECTORS, self.vectors)
        manifest = {"embedder_id": self.embedder_id, "count": len(self), "dim": self.dim, "checksum": self.checksum()}
        (directory / INDEX_MANIFEST).write_text(json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, directory: Path, expected_embedder_id: str | None = None) -> "CatalogIndex":
        manifest_path = directory / INDEX_MANIFEST
        if not manifest_path.exists():
            raise ArtifactError(f"catalog index: {manifest_path} is missing")
        manifest = json.loads(manifest_path.read_text())
        index = cls(np.load(directory / INDEX_VECTORS), manifest["embedder_id"])
        if index.checksum() != manifest["checksum"]:
            raise ArtifactError(f"catalog index: {directory / INDEX_VECTORS} does not match its manifest checksum")
        if expected_embedder_id is not None and expected_embedder_id != index.embedder_id:
            raise ArtifactError(
                f"catalog index in {directory} was built by embedder {index.embedder_id}, "
                f"but the served embedder is {expected_embedder_id}; rebuild the index"
            )
        return index
