"""Query the served `recommend` and `similar_items` ensembles with tritonclient."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shopsearch.serving.rec_steps import EXCLUDE, HISTORY, STRATEGY, UNKNOWN_IDS
from shopsearch.serving.steps import PRODUCT_IDS, SCORES, TITLES, TOPK


@dataclass(frozen=True)
class Recommendation:
    product_ids: list[str]
    titles: list[str]
    scores: list[float]
    unknown_ids: list[str]  # ids the server did not know and ignored
    strategy: str  # "model", or "popularity" when no id was known


def id_rows(rows: Sequence[Sequence[str]]) -> np.ndarray:
    """[users, longest] BYTES, "" padding the shorter rows (at least one column)."""
    width = max(1, max((len(r) for r in rows), default=0))
    out = np.full((len(rows), width), b"", dtype=object)
    for i, row in enumerate(rows):
        out[i, : len(row)] = [v.encode("utf-8") if isinstance(v, str) else v for v in row]
    return out


def _text(values) -> list[str]:
    return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values]


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

    def _tensor(self, name: str, array: np.ndarray, dtype: str):
        tensor = self._module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        return tensor

    def infer(self, model: str, ids_input: str, rows: Sequence[Sequence[str]], top_k: int | None = None,
              exclude: Sequence[Sequence[str]] | None = None) -> list[Recommendation]:
        ids = id_rows(rows)
        inputs = [self._tensor(ids_input, ids, "BYTES")]
        if top_k is not None:
            inputs.append(self._tensor(TOPK, np.full((len(rows), 1), top_k, dtype=np.int32), "INT32"))
        if exclude is not None:
            inputs.append(self._tensor(EXCLUDE, id_rows(exclude), "BYTES"))
        names = (PRODUCT_IDS, TITLES, SCORES, UNKNOWN_IDS, STRATEGY)
        outputs = [self._module.InferRequestedOutput(n) for n in names]
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        result = self._client.infer(model, inputs, outputs=outputs, **kwargs)
        return decode_recommendations({n: result.as_numpy(n) for n in names})

    def recommend(self, histories: Sequence[Sequence[str]], top_k: int | None = None,
                  exclude: Sequence[Sequence[str]] | None = None) -> list[Recommendation]:
        return self.infer("recommend", HISTORY, histories, top_k, exclude)

    def similar_items(self, items: Sequence[Sequence[str]], top_k: int | None = None,
                      exclude: Sequence[Sequence[str]] | None = None) -> list[Recommendation]:
        return self.infer("similar_items", "ITEM_IDS", items, top_k, exclude)

    def close(self) -> None:
        self._client.close()


def decode_recommendations(arrays: dict[str, np.ndarray]) -> list[Recommendation]:
    out = []
    for r in range(arrays[PRODUCT_IDS].shape[0]):
        pids = _text(arrays[PRODUCT_IDS][r])
        keep = [i for i, p in enumerate(pids) if p]
        titles = _text(arrays[TITLES][r])
        out.append(Recommendation([pids[i] for i in keep], [titles[i] for i in keep],
                                  [float(arrays[SCORES][r][i]) for i in keep],
                                  [u for u in _text(arrays[UNKNOWN_IDS][r]) if u], _text(arrays[STRATEGY][r])[0]))
    return out


def recommend_in_process(pipeline, rows: Sequence[Sequence[str]], top_k: int | None = None,
                         exclude: Sequence[Sequence[str]] | None = None) -> list[Recommendation]:
    """The same request through `SearchPipeline.from_repository(repo, "recommend" | "similar_items")`
    (in-process there is no ensemble alias: both start at item_lookup's HISTORY)."""
    state = {HISTORY: id_rows(rows)}
    if top_k is not None:
        state[TOPK] = np.full((len(rows), 1), top_k, dtype=np.int32)
    if exclude is not None:
        state[EXCLUDE] = id_rows(exclude)
    return decode_recommendations(pipeline.run(state))
