"""The gateway's way to Triton: gRPC on localhost, only the inputs and outputs each ensemble needs,
and Triton's answer sorted into what the client gets (its fault, our overload, a timeout, or an
upstream fault whose details stay in our log)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from shopsearch.core.filters import SearchFilters
from shopsearch.core.results import Hit, Recommendation


class UpstreamError(Exception):
    """Triton refused or failed a request; `status` is the HTTP status the client gets."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


class Backend(Protocol):
    """What the gateway needs from the serving side; coroutines, awaited on the gateway's event loop."""

    async def search(self, queries: list[str], k: int, collapse: bool = True,
                     filters: SearchFilters | None = None) -> list[list[Hit]]: ...

    async def recommend(self, history: list[str], k: int, exclude: list[str]) -> Recommendation: ...

    async def similar(self, item_id: str, k: int, exclude: list[str]) -> Recommendation: ...

    async def ready(self) -> bool: ...


def _status_and_text(exc: Exception) -> tuple[str, str]:
    """A grpc error's (code(), details()) or a tritonclient exception's (status(), message())."""
    for status_of, text_of in (("code", "details"), ("status", "message")):
        if callable(getattr(exc, status_of, None)):
            return str(getattr(exc, status_of)() or ""), str(getattr(exc, text_of)() or exc)
    return "", str(exc)


def upstream_error(exc: Exception) -> UpstreamError:
    """Triton's status -> the client's: INVALID_ARGUMENT is the request's fault (400, Triton's
    message names the model and the field); UNAVAILABLE is overload or a restart (503, retry);
    DEADLINE_EXCEEDED a timeout (504); anything else an upstream fault (502, no internals shown)."""
    if isinstance(exc, asyncio.TimeoutError):  # the gateway's own timeout (its calls carry no gRPC deadline)
        return UpstreamError(504, "server", "the search did not answer in time")
    status, text = _status_and_text(exc)
    if "INVALID_ARGUMENT" in status:
        return UpstreamError(400, "request", text[:300])
    if "UNAVAILABLE" in status or "Exceeds maximum queue size" in text:
        return UpstreamError(503, "server", "overloaded or restarting; retry shortly")
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in text:
        return UpstreamError(504, "server", "the search did not answer in time")
    return UpstreamError(502, "server", "the search backend failed this request")


class TritonBackend:
    """Triton over asyncio gRPC (`shopsearch.gateway.triton_grpc`): one channel, many calls in flight
    on the gateway's event loop, no thread per request. The channel is made on that loop, at first use."""

    def __init__(self, grpc_url: str, timeout_s: float):
        self.grpc_url, self.timeout_s = grpc_url, timeout_s
        self._triton = None

    def _grpc(self):
        from shopsearch.gateway import triton_grpc

        if self._triton is None:
            self._triton = triton_grpc.TritonGrpc(self.grpc_url)
        return triton_grpc, self._triton

    async def search(self, queries: list[str], k: int, collapse: bool = True,
                     filters: SearchFilters | None = None) -> list[list[Hit]]:
        from shopsearch.clients.search import query_batch, search_hits, search_request

        flavour, triton = self._grpc()
        inputs, outputs = search_request(flavour, query_batch(queries), k, collapse, filters)
        try:
            return search_hits(await triton.infer("search", inputs, outputs, self.timeout_s))
        except Exception as exc:  # noqa: BLE001 - every Triton failure is sorted for the client
            raise upstream_error(exc) from None

    async def _recommendations(self, model: str, ids_input: str, ids: list[str], k: int, exclude: list[str]) -> Recommendation:
        from shopsearch.clients.recs import rec_answers, rec_request

        flavour, triton = self._grpc()
        inputs, outputs = rec_request(flavour, ids_input, [ids], k, [exclude])
        try:
            return rec_answers(await triton.infer(model, inputs, outputs, self.timeout_s))[0]
        except Exception as exc:  # noqa: BLE001
            raise upstream_error(exc) from None

    async def recommend(self, history: list[str], k: int, exclude: list[str]) -> Recommendation:
        from shopsearch.serving.tensors import HISTORY

        return await self._recommendations("recommend", HISTORY, history, k, exclude)

    async def similar(self, item_id: str, k: int, exclude: list[str]) -> Recommendation:
        from shopsearch.serving.tensors import ITEM_IDS

        return await self._recommendations("similar_items", ITEM_IDS, [item_id], k, exclude)

    async def ready(self) -> bool:
        try:
            _, triton = self._grpc()
            return await triton.ready("search", self.timeout_s)
        except Exception:  # noqa: BLE001 - not ready is the answer
            return False

    async def close(self) -> None:
        if self._triton is not None:
            await self._triton.close()
