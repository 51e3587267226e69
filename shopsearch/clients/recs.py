"""Query the served `recommend` and `similar_items` ensembles with tritonclient."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shopsearch.core.results import Recommendation, decode_recommendations, id_rows
from shopsearch.serving.tensors import (
    EXCLUDE, HISTORY, ITEM_IDS, PRODUCT_IDS, SCORES, STRATEGY, TITLES, TOPK, UNKNOWN_IDS,
)


REC_OUTPUTS = (PRODUCT_IDS, TITLES, SCORES, UNKNOWN_IDS, STRATEGY)


def _tensor(module, name: str, array: np.ndarray, dtype: str):
    tensor = module.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def rec_request(module, ids_input: str, rows: Sequence[Sequence[str]], top_k: int | None = None,
                exclude: Sequence[Sequence[str]] | None = None):
    """`recommend` / `similar_items` inputs and outputs, for any tritonclient flavour."""
    inputs = [_tensor(module, ids_input, id_rows(rows), "BYTES")]
    if top_k is not None:
        inputs.append(_tensor(module, TOPK, np.full((len(rows), 1), top_k, dtype=np.int32), "INT32"))
    if exclude is not None:
        inputs.append(_tensor(module, EXCLUDE, id_rows(exclude), "BYTES"))
    return inputs, [module.InferRequestedOutput(n) for n in REC_OUTPUTS]


def rec_answers(result) -> list[Recommendation]:
    return decode_recommendations(*(result.as_numpy(n) for n in REC_OUTPUTS))


class RecClient:
    def __init__(self, url: str, protocol: str = "grpc", timeout_s: float = 60.0):
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be http or grpc, got {protocol}")
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url)
        self._module, self.protocol, self.timeout_s = module, protocol, timeout_s

    def infer(self, model: str, ids_input: str, rows: Sequence[Sequence[str]], top_k: int | None = None,
              exclude: Sequence[Sequence[str]] | None = None) -> list[Recommendation]:
        inputs, outputs = rec_request(self._module, ids_input, rows, top_k, exclude)
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        return rec_answers(self._client.infer(model, inputs, outputs=outputs, **kwargs))

    def recommend(self, histories: Sequence[Sequence[str]], top_k: int | None = None,
                  exclude: Sequence[Sequence[str]] | None = None) -> list[Recommendation]:
        return self.infer("recommend", HISTORY, histories, top_k, exclude)

    def similar_items(self, items: Sequence[Sequence[str]], top_k: int | None = None,
                      exclude: Sequence[Sequence[str]] | None = None) -> list[Recommendation]:
        return self.infer("similar_items", ITEM_IDS, items, top_k, exclude)

    def close(self) -> None:
        self._client.close()
