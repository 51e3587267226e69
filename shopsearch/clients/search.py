"""Query the served `search` ensemble over HTTP or gRPC with tritonclient."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from shopsearch.core.results import Hit, decode_hits
from shopsearch.core.filters import SearchFilters, filter_arrays
from shopsearch.serving.tensors import COLLAPSE, PRODUCT_IDS, QUERY, SCORES, TITLES, TOPK


# Failures worth retrying: the server is restarting, a model is being repaired, or overloaded.
TRANSIENT = ("Stub process", "Exceeds maximum queue size", "Request timeout expired", "UNAVAILABLE",
             "Connection refused", "connection refused", "Failed to connect", "Connection reset", "Broken pipe",
             "Remote end closed", "not ready", "unavailable", "[503]")


def is_transient(error: Exception) -> bool:
    text = f"{type(error).__name__}: {error}"
    return isinstance(error, (ConnectionError, OSError)) or any(marker in text for marker in TRANSIENT)


def query_batch(queries: Sequence[str | bytes]) -> np.ndarray:
    """[batch, 1] object array of UTF-8 bytes: the ensemble's QUERY tensor."""
    return np.array([[q.encode("utf-8") if isinstance(q, str) else q] for q in queries], dtype=object)


TRITON_TYPES = {np.dtype(object): "BYTES", np.dtype(np.float32): "FP32", np.dtype(bool): "BOOL"}


def search_request(module, queries: np.ndarray, top_k: int | None, collapse: bool | None = None,
                   filters: SearchFilters | None = None):
    """The `search` ensemble's inputs and outputs, for any tritonclient flavour (http, grpc, grpc.aio).
    None leaves an optional input out (the server's default)."""
    tensor = module.InferInput(QUERY, list(queries.shape), "BYTES")
    tensor.set_data_from_numpy(queries)
    inputs = [tensor]
    if top_k is not None:
        k = module.InferInput(TOPK, [queries.shape[0], 1], "INT32")
        k.set_data_from_numpy(np.full((queries.shape[0], 1), top_k, dtype=np.int32))
        inputs.append(k)
    if collapse is not None:
        flag = module.InferInput(COLLAPSE, [queries.shape[0], 1], "BOOL")
        flag.set_data_from_numpy(np.full((queries.shape[0], 1), collapse, dtype=bool))
        inputs.append(flag)
    for name, array in filter_arrays(filters, queries.shape[0]).items():
        tensor = module.InferInput(name, list(array.shape), TRITON_TYPES[array.dtype])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs, [module.InferRequestedOutput(n) for n in (PRODUCT_IDS, TITLES, SCORES)]


def search_hits(result) -> list[list[Hit]]:
    return decode_hits(result.as_numpy(PRODUCT_IDS), result.as_numpy(TITLES), result.as_numpy(SCORES))


class SearchClient:
    """`retry_s` > 0: transient failures (see TRANSIENT) are retried with exponential backoff for up
    to that many seconds; a client error (bad input) is never retried."""

    def __init__(self, url: str, protocol: str = "http", model: str = "search", timeout_s: float = 60.0, retry_s: float = 0.0):
        self.retry_s = retry_s
        self.retries = 0  # transient failures absorbed so far
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be http or grpc, got {protocol}")
        self.protocol, self.model, self.timeout_s = protocol, model, timeout_s
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url)
        self._module = module

    def infer_raw(self, queries: np.ndarray, top_k: int | None = None, collapse: bool | None = None,
                  filters: SearchFilters | None = None):
        """Send a prepared [batch, 1] object array; returns tritonclient's result."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            try:
                return self._infer_once(queries, top_k, collapse, filters)
            except Exception as exc:  # noqa: BLE001 - sorted into transient or not below
                if time.monotonic() + delay > deadline or not is_transient(exc):
                    raise
                self.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _infer_once(self, queries: np.ndarray, top_k: int | None, collapse: bool | None = None,
                    filters: SearchFilters | None = None):
        inputs, outputs = search_request(self._module, queries, top_k, collapse, filters)
        if self.protocol == "grpc":
            return self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
        return self._client.infer(self.model, inputs, outputs=outputs)

    def search(self, queries: Sequence[str | bytes], top_k: int | None = None, collapse: bool | None = None,
               filters: SearchFilters | None = None) -> list[list[Hit]]:
        """`collapse` False: every listing of an identical title (None: the server's default, one);
        `filters`: only products of a category, a price range, in stock."""
        return search_hits(self.infer_raw(query_batch(queries), top_k, collapse, filters))

    def is_ready(self) -> bool:
        return self._client.is_server_ready() and self._client.is_model_ready(self.model)

    def close(self) -> None:
        self._client.close()
