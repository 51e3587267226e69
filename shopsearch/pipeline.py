"""Ensembles run in-process: the same steps and artifacts the server loads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shopsearch.errors import ArtifactError, ShopSearchError
from shopsearch.results import PAD_PRODUCT_ID, Hit
from shopsearch.serving.model_config import parameters_of, read_config
from shopsearch.serving.repository import read_version_params
from shopsearch.serving.steps import PRODUCT_IDS, QUERY, SCORES, STEP_TYPES, TITLES, TOPK


def step_types() -> dict:
    """Model name -> the step class its model.py adapter runs."""
    from shopsearch.serving.rec_steps import REC_STEP_TYPES
    from shopsearch.serving.steps import RankerStep

    return {**STEP_TYPES, **REC_STEP_TYPES, "rec_ranker": RankerStep}


class SearchPipeline:
    def __init__(self, steps: list):
        self.steps = steps

    @classmethod
    def from_repository(cls, repo: Path, ensemble: str = "search", generation: int | None = None) -> "SearchPipeline":
        """The steps the ensemble pins; `generation` picks another deployed generation's versions."""
        ensemble_config = read_config(repo / ensemble)
        types = step_types()
        steps = []
        for step in ensemble_config.ensemble_scheduling.step:
            if step.model_name not in types:
                raise ArtifactError(f"{ensemble}: step '{step.model_name}' has no in-process implementation")
            model_dir = repo / step.model_name
            versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
            version = generation or (step.model_version if step.model_version > 0 else versions[-1])
            config = read_config(model_dir)
            # The same parameters the Python backend hands the step.
            params = {**parameters_of(config), **read_version_params(model_dir / str(version))}
            steps.append(types[step.model_name].from_artifacts(model_dir / str(version), params))
            steps[-1].name = step.model_name
        return cls(steps)

    def run(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every step on one request, each reading what the earlier ones produced."""
        for step in self.steps:
            outcome = step.run([state])[0]
            if isinstance(outcome, ShopSearchError):
                raise outcome
            state.update(outcome)
        return state

    def search(self, queries: Sequence[str | bytes], top_k: int | None = None) -> list[list[Hit]]:
        state: dict[str, np.ndarray] = {QUERY: np.array([[q] for q in queries], dtype=object)}
        if top_k is not None:
            state[TOPK] = np.full((len(queries), 1), top_k, dtype=np.int32)
        state = self.run(state)
        return decode_hits(state[PRODUCT_IDS], state[TITLES], state[SCORES])


def decode_hits(ids: np.ndarray, titles: np.ndarray, scores: np.ndarray) -> list[list[Hit]]:
    """Rectangular response arrays -> per-query hit lists, padding removed."""
    out = []
    for row_ids, row_titles, row_scores in zip(ids, titles, scores):
        hits = []
        for pid, title, score in zip(row_ids, row_titles, row_scores):
            pid = pid.decode("utf-8") if isinstance(pid, bytes) else str(pid)
            if pid == PAD_PRODUCT_ID:
                continue
            title = title.decode("utf-8") if isinstance(title, bytes) else str(title)
            hits.append(Hit(pid, title, float(score)))
        out.append(hits)
    return out
