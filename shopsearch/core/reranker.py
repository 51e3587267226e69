"""The learned re-ranker: a small MLP over hybrid-retrieval features and its checkpoint files.

Trained listwise on graded judgments (shopsearch.train.reranker), exported to ONNX for the served
ranker (shopsearch.export.reranker)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from shopsearch.core.hybrid import FEATURE_NAMES
from shopsearch.errors import ArtifactError

RERANKER_DIR = "reranker"  # inside a search checkpoint directory
RERANKER_WEIGHTS = "reranker.pt"
RERANKER_CARD = "reranker.json"
PROBE_FEATURES = "probe_features.npy"  # training candidates' features: the export's parity probe


@dataclass(frozen=True)
class RerankerConfig:
    hidden: int = 32
    epochs: int = 60
    lists_per_batch: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    n_dense: int = 100
    n_lexical: int = 100
    # False: the popularity feature is 0 for every product, in training and served (an ablation of
    # how much of the ranking the catalog's popularity prior carries).
    use_popularity: bool = True


class RerankerMLP(torch.nn.Module):
    """Standardizes its features itself (statistics of the training candidates are buffers), so
    the exported graph takes raw features."""

    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.std).squeeze(-1)


def torch_scorer(model: RerankerMLP):
    def score(features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(features)).numpy().astype(np.float32)

    return score


def save_reranker(model: RerankerMLP, cfg: RerankerConfig, directory: Path, card: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / RERANKER_WEIGHTS)
    (directory / RERANKER_CARD).write_text(json.dumps({"config": asdict(cfg), "features": list(FEATURE_NAMES), **card}, indent=2))


def load_reranker(directory: Path) -> tuple[RerankerMLP, dict]:
    card_path = directory / RERANKER_CARD
    if not card_path.exists():
        raise ArtifactError(f"re-ranker: {card_path} is missing")
    card = json.loads(card_path.read_text())
    if tuple(card["features"]) != FEATURE_NAMES:
        raise ArtifactError(f"re-ranker in {directory} was trained on features {card['features']}, this code computes {list(FEATURE_NAMES)}")
    model = RerankerMLP(len(FEATURE_NAMES), card["config"]["hidden"])
    model.load_state_dict(torch.load(directory / RERANKER_WEIGHTS, weights_only=True))
    return model.eval(), card
