"""The product API's typed requests and responses: one schema validates what a shop front end sends
and generates the OpenAPI document. Anything it does not declare is refused (extra fields are an
error), so no client-chosen Triton parameter ever reaches the server behind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shopsearch.build.recs import MAX_K, MAX_SEEN
from shopsearch.core.filters import SearchFilters


@dataclass(frozen=True)
class GatewayLimits:
    """What one request may ask for; beyond any of these the answer is a 4xx naming the limit. The
    request schema below is built from these defaults (query, batch, history, k are part of the
    published API document); an instance's own values set the guard, the rate and the timeout."""

    max_body_bytes: int = 64 * 1024
    max_json_depth: int = 8  # the schema needs 3; a deeply nested body is refused before it is parsed
    max_query_chars: int = 512
    max_batch: int = 16  # queries per search request
    max_history: int = MAX_SEEN
    max_k: int = MAX_K
    timeout_s: float = 10.0  # per request to Triton
    rate_per_s: float = 1000.0  # per client address: sustained requests per second ...
    burst: int = 2000  # ... and how many may come at once


QueryText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=GatewayLimits.max_query_chars)]
ItemId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
TopK = Annotated[int, Field(ge=1, le=GatewayLimits.max_k, description="how many products to return")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchRequest(_Strict):
    """One query (`query`) or a few (`queries`), not both."""

    query: QueryText | None = None
    queries: Annotated[list[QueryText], Field(min_length=1, max_length=GatewayLimits.max_batch)] | None = None
    k: TopK = 10
    collapse: bool = Field(True, description="one result per listing: identical titles under several product ids show once")
    category: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="only products of this catalog category (an unknown one is a 400 naming it)")
    price_min: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(None, description="only products at least this price")
    price_max: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(None, description="only products at most this price")
    in_stock: bool | None = Field(None, description="true: only products in stock")

    @model_validator(mode="after")
    def one_of_query_or_queries(self) -> "SearchRequest":
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of `query` or `queries`")
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError("price_min is above price_max: an empty range")
        return self

    def filters(self) -> SearchFilters:
        return SearchFilters(self.category, self.price_min, self.price_max, self.in_stock)

    def texts(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries or [])


class RecommendRequest(_Strict):
    history: Annotated[list[ItemId], Field(max_length=GatewayLimits.max_history)] = []
    k: TopK = 10
    exclude: Annotated[list[ItemId], Field(max_length=GatewayLimits.max_history)] = []


class SimilarRequest(_Strict):
    item_id: ItemId
    k: TopK = 10
    exclude: Annotated[list[ItemId], Field(max_length=GatewayLimits.max_history)] = []


class Product(BaseModel):
    product_id: str
    title: str
    score: float


class SearchResult(BaseModel):
    query: str
    hits: list[Product]


class SearchResponse(BaseModel):
    results: list[SearchResult]


class RecommendResponse(BaseModel):
    items: list[Product]
    strategy: str = Field(description='"model", or "popularity" when no id of the history was known')
    unknown_ids: list[str]


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
