"""Exact inner-product search over the catalog's embeddings, with deterministic tie-breaking.

Kept behind a small interface (`search(queries, k)`) so an ANN index can replace it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from shopsearch.errors import ArtifactError, ConfigError

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


class CatalogIndex:
    def __init__(self, vectors: np.ndarray, embedder_id: str):
        if vectors.ndim != 2 or vectors.dtype != np.float32:
            raise ArtifactError(f"catalog index: vectors must be float32 [n, dim], got {vectors.dtype} {vectors.shape}")
        self.vectors = vectors
        self.embedder_id = embedder_id

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ConfigError("ranker", "query_embedding", f"expected [batch, {self.dim}], got {list(queries.shape)}")
        return top_k_rows(queries.astype(np.float32, copy=False) @ self.vectors.T, k)

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
