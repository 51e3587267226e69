"""Search filters: category, price range and stock, checked against the catalog's facets.

A request's filters become one boolean mask over the catalog's rows; the ranker then searches only
the rows it allows (shopsearch.core.index.CatalogIndex.search_within), so the top k is the best k
that match, not the matches among an unfiltered top k. A product whose price or stock the
catalog does not know fails a price or stock filter (a shopper asking for "in stock under $50"
must not get a product nobody can vouch for).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shopsearch.data.schema import Product
from shopsearch.errors import ArtifactError, InvalidInputError

FACETS_ARRAYS = "facets.npz"
FACETS_MANIFEST = "facets.json"
# Request inputs (all optional, one value per request): BYTES, FP32, FP32, BOOL [1]
CATEGORY, PRICE_MIN, PRICE_MAX, IN_STOCK = "CATEGORY", "PRICE_MIN", "PRICE_MAX", "IN_STOCK"
FILTER_INPUTS = (CATEGORY, PRICE_MIN, PRICE_MAX, IN_STOCK)


@dataclass(frozen=True)
class SearchFilters:
    """What a shopper restricts a search to; None leaves that facet free."""

    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    in_stock: bool | None = None  # True: only products in stock; False or None: stock does not matter

    @property
    def active(self) -> bool:
        return self.category is not None or self.price_min is not None or self.price_max is not None or bool(self.in_stock)

    def check(self, model: str) -> "SearchFilters":
        """Refuse what no catalog could match: a price that is not a number, an inverted range."""
        for name, value in ((PRICE_MIN, self.price_min), (PRICE_MAX, self.price_max)):
            if value is not None and not math.isfinite(value):
                raise InvalidInputError(model, name, f"must be a finite number, got {value}")
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise InvalidInputError(model, PRICE_MIN, f"{self.price_min:g} is above {PRICE_MAX} {self.price_max:g}: an empty range")
        if self.category is not None and not self.category.strip():
            raise InvalidInputError(model, CATEGORY, "must name a category, got an empty string")
        return self


def filter_arrays(filters: SearchFilters | None, rows: int) -> dict[str, np.ndarray]:
    """The optional filter inputs a request sends, [rows, 1] each, only those set (the clients and
    the in-process pipeline send the same tensors)."""
    if filters is None:
        return {}
    values = {CATEGORY: (filters.category, object), PRICE_MIN: (filters.price_min, np.float32),
              PRICE_MAX: (filters.price_max, np.float32), IN_STOCK: (filters.in_stock, bool)}
    return {name: np.full((rows, 1), value.encode("utf-8") if isinstance(value, str) else value, dtype=dtype)
            for name, (value, dtype) in values.items() if value is not None}


class CatalogFacets:
    """Per catalog row: category code, price (NaN: unknown) and stock (1 in, 0 out, -1 unknown)."""

    def __init__(self, categories: list[str], category_codes: np.ndarray, prices: np.ndarray, stock: np.ndarray):
        if not len(category_codes) == len(prices) == len(stock):
            raise ArtifactError(f"facets: {len(category_codes)} categories, {len(prices)} prices, {len(stock)} stock flags")
        self.categories = categories
        self.code_of = {name: code for code, name in enumerate(categories)}
        self.category_codes = category_codes.astype(np.int32)
        self.prices = prices.astype(np.float32)
        self.stock = stock.astype(np.int8)

    @classmethod
    def from_products(cls, products: list[Product]) -> "CatalogFacets":
        categories = sorted({p.category for p in products})
        code_of = {name: code for code, name in enumerate(categories)}
        return cls(categories,
                   np.array([code_of[p.category] for p in products], dtype=np.int32),
                   np.array([np.nan if p.price is None else p.price for p in products], dtype=np.float32),
                   np.array([-1 if p.in_stock is None else int(p.in_stock) for p in products], dtype=np.int8))

    def __len__(self) -> int:
        return len(self.prices)

    def mask(self, filters: SearchFilters, model: str = "ranker") -> np.ndarray | None:
        """The rows `filters` allow, or None when they allow every row (no filter given)."""
        filters.check(model)
        if not filters.active:
            return None
        allowed = np.ones(len(self), dtype=bool)
        if filters.category is not None:
            code = self.code_of.get(filters.category)
            if code is None:
                known = ", ".join(repr(c) for c in self.categories[:8]) + (", ..." if len(self.categories) > 8 else "")
                raise InvalidInputError(model, CATEGORY, f"unknown category {filters.category!r}; this catalog has "
                                        f"{len(self.categories)}: {known}")
            allowed &= self.category_codes == code
        with np.errstate(invalid="ignore"):  # NaN (unknown price) compares False: filtered out
            if filters.price_min is not None:
                allowed &= self.prices >= filters.price_min
            if filters.price_max is not None:
                allowed &= self.prices <= filters.price_max
        if filters.in_stock:
            allowed &= self.stock == 1
        return allowed

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / FACETS_ARRAYS, category_codes=self.category_codes, prices=self.prices, stock=self.stock)
        (directory / FACETS_MANIFEST).write_text(json.dumps({"categories": self.categories, "products": len(self)}, indent=2))

    @classmethod
    def load(cls, directory: Path) -> "CatalogFacets":
        if not (directory / FACETS_MANIFEST).exists():
            raise ArtifactError(f"facets: {directory / FACETS_MANIFEST} is missing")
        arrays = np.load(directory / FACETS_ARRAYS)
        return cls(json.loads((directory / FACETS_MANIFEST).read_text())["categories"], arrays["category_codes"],
                   arrays["prices"], arrays["stock"])
