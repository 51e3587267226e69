"""Candidates -> the products a shopper sees: dedupe, deterministic order, top-K, padding; and the
response arrays back to hits and recommendations (what clients and the in-process pipeline return)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shopsearch.data.schema import Product
from shopsearch.errors import ArtifactError

CATALOG_FILE = "catalog.json"
# Rows shorter than top_k (a tiny catalog) are padded with this id and a score of 0.
PAD_PRODUCT_ID = ""


@dataclass(frozen=True)
class Hit:
    product_id: str
    title: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    product_ids: list[str]
    titles: list[str]
    scores: list[float]
    unknown_ids: list[str]  # ids the server did not know and ignored
    strategy: str  # "model", or "popularity" when no id was known


def listing_key(title: str) -> str:
    """What makes two listings the same product to a shopper: the title, case and spacing aside."""
    return " ".join(title.lower().split())


class CatalogLookup:
    """Row number in the index -> product id and title, and the listing group of each row (rows
    whose titles are identical once normalised: one product listed under several ids)."""

    def __init__(self, product_ids: list[str], titles: list[str]):
        if len(product_ids) != len(titles):
            raise ArtifactError("catalog: product_ids and titles differ in length")
        self.product_ids = product_ids
        self.titles = titles
        first_row: dict[str, int] = {}
        # Each row's group: the first row listing its title (derived, so no artifact changes).
        self.groups = np.array([first_row.setdefault(listing_key(t), row) for row, t in enumerate(titles)], dtype=np.int64)

    @classmethod
    def from_products(cls, products: list[Product]) -> "CatalogLookup":
        return cls([p.product_id for p in products], [p.title for p in products])

    def __len__(self) -> int:
        return len(self.product_ids)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"product_ids": self.product_ids, "titles": self.titles}
        (directory / CATALOG_FILE).write_text(json.dumps(payload, ensure_ascii=False))

    @classmethod
    def load(cls, directory: Path) -> "CatalogLookup":
        path = directory / CATALOG_FILE
        if not path.exists():
            raise ArtifactError(f"catalog: {path} is missing")
        payload = json.loads(path.read_text(encoding="utf-8"))
        return cls(payload["product_ids"], payload["titles"])

    def finalize(self, indices: np.ndarray, scores: np.ndarray, top_k: int, collapse: bool = False) -> list[list[Hit]]:
        """Per row: drop invalid and repeated candidates (keeping the best score), order by score
        then product id so equal scores always come out the same way, and keep top_k. `collapse`:
        one hit per listing group (the best-ranked of identical titles), so an answer never shows
        one product three times."""
        out = []
        for row_idx, row_scores in zip(indices, scores):
            best: dict[int, float] = {}
            for idx, score in zip(row_idx.tolist(), row_scores.tolist()):
                if 0 <= idx < len(self.product_ids) and score > best.get(idx, -np.inf):
                    best[idx] = score
            ranked = sorted(best.items(), key=lambda item: (-item[1], self.product_ids[item[0]]))
            if collapse:
                kept, seen = [], set()
                for row, score in ranked:
                    group = int(self.groups[row])
                    if group not in seen:
                        seen.add(group)
                        kept.append((row, score))
                ranked = kept
            out.append([Hit(self.product_ids[i], self.titles[i], s) for i, s in ranked[:top_k]])
        return out


def hits_to_arrays(hits: list[list[Hit]], top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rectangular [batch, top_k] arrays for a Triton response: ids, titles (UTF-8 bytes), scores."""
    ids = np.full((len(hits), top_k), PAD_PRODUCT_ID.encode(), dtype=object)
    titles = np.full((len(hits), top_k), b"", dtype=object)
    scores = np.zeros((len(hits), top_k), dtype=np.float32)
    for r, row in enumerate(hits):
        for c, hit in enumerate(row[:top_k]):
            ids[r, c] = hit.product_id.encode("utf-8")
            titles[r, c] = hit.title.encode("utf-8")
            scores[r, c] = hit.score
    return ids, titles, scores


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def decode_hits(ids: np.ndarray, titles: np.ndarray, scores: np.ndarray) -> list[list[Hit]]:
    """Rectangular response arrays -> per-query hit lists, padding removed."""
    out = []
    for row_ids, row_titles, row_scores in zip(ids, titles, scores):
        out.append([Hit(_text(pid), _text(title), float(score))
                    for pid, title, score in zip(row_ids, row_titles, row_scores) if _text(pid) != PAD_PRODUCT_ID])
    return out


def decode_recommendations(ids: np.ndarray, titles: np.ndarray, scores: np.ndarray, unknown_ids: np.ndarray,
                           strategies: np.ndarray) -> list[Recommendation]:
    """Rectangular recommendation response arrays -> one Recommendation per request row."""
    out = []
    for r in range(ids.shape[0]):
        keep = [i for i, p in enumerate(ids[r]) if _text(p) != PAD_PRODUCT_ID]
        out.append(Recommendation([_text(ids[r][i]) for i in keep], [_text(titles[r][i]) for i in keep],
                                  [float(scores[r][i]) for i in keep], [u for u in map(_text, unknown_ids[r]) if u],
                                  _text(strategies[r][0])))
    return out


def id_rows(rows) -> np.ndarray:
    """Product-id lists -> [rows, longest] BYTES, "" padding the shorter rows (at least one column)."""
    width = max(1, max((len(r) for r in rows), default=0))
    out = np.full((len(rows), width), b"", dtype=object)
    for i, row in enumerate(rows):
        out[i, : len(row)] = [v.encode("utf-8") if isinstance(v, str) else v for v in row]
    return out
