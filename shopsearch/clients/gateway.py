"""Call the product API (`shopsearch gateway`) the way a shop front end does: JSON over HTTP.

One persistent HTTP/1.1 connection from the standard library's http.client: a client runs beside
the load it generates (`make bench-gateway`, the CLI), and httpx spent 1.5-2.4 ms of CPU per
search there against 0.45-0.5 ms for http.client (urllib3: 0.7-0.9), measured in one run on the
2-core CI machine, enough to tilt a gateway-vs-direct-gRPC comparison made on the same cores.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from urllib.parse import urlsplit

from shopsearch.core.filters import SearchFilters
from shopsearch.core.results import Hit
from shopsearch.errors import ShopSearchError

# What a kept-alive connection the server has since closed raises on reuse (uvicorn closes idle
# ones after a few seconds): the request never reached the application, so it is sent again.
STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class GatewayError(ShopSearchError):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"HTTP {status}: {field}: {message}")
        self.status, self.field = status, field


class GatewayClient:
    """Not thread-safe: one client per thread, as with one connection per thread."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        parts = urlsplit(url if "//" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"gateway url must be http(s)://host[:port], got {url!r}")
        connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._connection = connection(parts.hostname, parts.port, timeout=timeout_s)
        self._prefix = parts.path.rstrip("/")
        self._used = False  # a fresh connection that fails is a real failure, not a stale one

    def _exchange(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        self._connection.request("POST", self._prefix + path, body, {"content-type": "application/json"})
        response = self._connection.getresponse()
        data = response.read()
        self._used = True
        return response.status, response.getheader("content-type", ""), data

    def _post(self, path: str, body: dict) -> dict:
        payload = json.dumps(body).encode()
        try:
            status, content_type, data = self._exchange(path, payload)
        except STALE_CONNECTION:
            self._connection.close()
            if not self._used:
                raise
            self._used = False
            status, content_type, data = self._exchange(path, payload)
        except Exception:
            self._connection.close()  # a half-read response must not be read as the next one's
            raise
        if status != 200:
            error = json.loads(data).get("error", {}) if content_type.startswith("application/json") else {}
            raise GatewayError(status, error.get("field", "?"), error.get("message", data[:200].decode("utf-8", "replace")))
        return json.loads(data)

    def search(self, queries: Sequence[str], k: int = 10, collapse: bool = True,
               filters: SearchFilters | None = None) -> list[list[Hit]]:
        body = {"queries": list(queries), "k": k, "collapse": collapse}
        if filters is not None:
            body.update({name: value for name, value in vars(filters).items() if value is not None})
        results = self._post("/v1/search", body)["results"]
        return [[Hit(h["product_id"], h["title"], h["score"]) for h in r["hits"]] for r in results]

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
