"""Call the product API (`shopsearch gateway`) the way a shop front end does: JSON over HTTP."""

from __future__ import annotations

from collections.abc import Sequence

from shopsearch.core.filters import SearchFilters
from shopsearch.core.results import Hit
from shopsearch.errors import ShopSearchError


class GatewayError(ShopSearchError):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"HTTP {status}: {field}: {message}")
        self.status, self.field = status, field


class GatewayClient:
    def __init__(self, url: str, timeout_s: float = 30.0):
        import httpx

        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)

    def _post(self, path: str, body: dict) -> dict:
        response = self._client.post(path, json=body)
        if response.status_code != 200:
            error = response.json().get("error", {}) if response.headers.get("content-type", "").startswith("application/json") else {}
            raise GatewayError(response.status_code, error.get("field", "?"), error.get("message", response.text[:200]))
        return response.json()

    def search(self, queries: Sequence[str], k: int = 10, collapse: bool = True,
               filters: SearchFilters | None = None) -> list[list[Hit]]:
        body = {"queries": list(queries), "k": k, "collapse": collapse}
        if filters is not None:
            body.update({name: value for name, value in vars(filters).items() if value is not None})
        results = self._post("/v1/search", body)["results"]
        return [[Hit(h["product_id"], h["title"], h["score"]) for h in r["hits"]] for r in results]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
