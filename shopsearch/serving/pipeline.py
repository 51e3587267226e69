"""Ensembles run in-process: the same steps, artifacts and parameters the server loads.

`make eval` compares the served `search` ensemble with this, deploy's preflight answers a probe
with it, and the tests hold the server to it (served == in-process).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shopsearch.core.results import Hit, Recommendation, decode_hits, decode_recommendations, id_rows
from shopsearch.errors import ArtifactError, ShopSearchError
from shopsearch.serving.registry import MODEL_STEPS, STEP_TYPES, load_step
from shopsearch.serving.tensors import (
    COLLAPSE, EXCLUDE, HISTORY, PRODUCT_IDS, QUERY, SCORES, STRATEGY, TITLES, TOPK, UNKNOWN_IDS,
)
from shopsearch.core.filters import SearchFilters, filter_arrays
from shopsearch.triton.model_config import parameters_of
from shopsearch.triton.repository import read_config
from shopsearch.triton.repository import read_version_params, version_numbers


class InProcessEnsemble:
    """The composing models of one ensemble of a built repository, as steps in this process."""

    def __init__(self, steps: list):
        self.steps = steps

    @classmethod
    def from_repository(cls, repo: Path, ensemble: str = "search", generation: int | None = None) -> "InProcessEnsemble":
        """The steps the ensemble pins; `generation` picks another deployed generation's versions."""
        repo = Path(repo)
        steps = []
        for step in read_config(repo / ensemble).ensemble_scheduling.step:
            model_dir = repo / step.model_name
            if MODEL_STEPS.get(step.model_name, step.model_name) not in STEP_TYPES:
                raise ArtifactError(f"{ensemble}: step '{step.model_name}' has no in-process implementation")
            version = generation or (step.model_version if step.model_version > 0 else version_numbers(model_dir)[-1])
            # The same parameters the Python backend hands the step.
            params = {**parameters_of(read_config(model_dir)), **read_version_params(model_dir / str(version))}
            steps.append(load_step(MODEL_STEPS.get(step.model_name, step.model_name), step.model_name,
                                   model_dir / str(version), params))
        return cls(steps)

    def run(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every step on one request, each reading what the earlier ones produced."""
        for step in self.steps:
            outcome = step.run([state])[0]
            if isinstance(outcome, ShopSearchError):
                raise outcome
            state.update(outcome)
        return state

    def search(self, queries: Sequence[str | bytes], top_k: int | None = None, collapse: bool | None = None,
               filters: SearchFilters | None = None) -> list[list[Hit]]:
        """The `search` ensemble's answer to a batch of queries (None: the build's defaults)."""
        state: dict[str, np.ndarray] = {QUERY: np.array([[q] for q in queries], dtype=object)}
        state.update(filter_arrays(filters, len(queries)))
        if top_k is not None:
            state[TOPK] = np.full((len(queries), 1), top_k, dtype=np.int32)
        if collapse is not None:
            state[COLLAPSE] = np.full((len(queries), 1), collapse, dtype=bool)
        state = self.run(state)
        return decode_hits(state[PRODUCT_IDS], state[TITLES], state[SCORES])

    def recommend(self, rows: Sequence[Sequence[str]], top_k: int | None = None,
                  exclude: Sequence[Sequence[str]] | None = None) -> list[Recommendation]:
        """The `recommend` (or `similar_items`) ensemble's answer: in-process there is no ensemble
        alias, so both start at item_lookup's HISTORY."""
        state = {HISTORY: id_rows(rows)}
        if top_k is not None:
            state[TOPK] = np.full((len(rows), 1), top_k, dtype=np.int32)
        if exclude is not None:
            state[EXCLUDE] = id_rows(exclude)
        out = self.run(state)
        return decode_recommendations(out[PRODUCT_IDS], out[TITLES], out[SCORES], out[UNKNOWN_IDS], out[STRATEGY])
