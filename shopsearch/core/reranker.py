"""The learned re-ranker over hybrid-retrieval features, and its checkpoint files.

Two kinds, chosen by the recipe's `[rerank] kind`: a small MLP trained listwise (ListNet) in
PyTorch, and LambdaMART (gradient-boosted trees, LightGBM's `lambdarank`), alone or as the second
stage of a cascade behind the MLP (`cascade_top`). Both take the raw features and are trained on
graded judgments (shopsearch.train.reranker); both are exported to ONNX for the served ranker
(shopsearch.export.reranker), which runs either on ONNX Runtime."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch

from shopsearch.core.hybrid import FEATURE_NAMES, HybridRanker
from shopsearch.errors import ArtifactError

RERANKER_DIR = "reranker"  # inside a search checkpoint directory
RERANKER_WEIGHTS = "reranker.pt"  # kind "mlp"
RERANKER_TREES = "reranker_trees.txt"  # kind "lambdamart": LightGBM's own text format
RERANKER_CARD = "reranker.json"
PROBE_FEATURES = "probe_features.npy"  # training candidates' features: the export's parity probe
RERANKER_KINDS = ("mlp", "lambdamart")


@dataclass(frozen=True)
class RerankerConfig:
    kind: str = "mlp"
    # kind "mlp"
    hidden: int = 32
    epochs: int = 60
    lists_per_batch: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    # kind "lambdamart": every tree costs the served ranker on each candidate of each query, so the
    # tree count is a latency setting as much as a quality one.
    trees: int = 400
    leaves: int = 15
    tree_learning_rate: float = 0.03
    min_data_in_leaf: int = 50
    # kind "lambdamart", > 0: a cascade. The stage trains the MLP too; served, the MLP orders every
    # candidate and the trees re-order its best `cascade_top` of each query (0: trees score all).
    cascade_top: int = 0
    seed: int = 0
    n_dense: int = 100
    n_lexical: int = 100
    # False: the popularity feature is 0 for every product, in training and served (an ablation of
    # how much of the ranking the catalog's popularity prior carries).
    use_popularity: bool = True

    def __post_init__(self):
        if self.kind not in RERANKER_KINDS:
            raise ValueError(f"kind = {self.kind!r}: expected one of {', '.join(RERANKER_KINDS)}")
        if self.cascade_top < 0 or (self.cascade_top and self.kind != "lambdamart"):
            raise ValueError(f"cascade_top = {self.cascade_top}: a count >= 0, and > 0 only with kind = \"lambdamart\"")


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


class RerankerTrees:
    """LambdaMART: a LightGBM Booster scoring raw features, one float32 score per candidate."""

    def __init__(self, booster):
        self.booster = booster

    @property
    def n_trees(self) -> int:
        return self.booster.num_trees()

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self.booster.predict(features, num_threads=1).astype(np.float32)


@dataclass(frozen=True)
class RerankerCascade:
    """The MLP orders every candidate; the trees re-order each list's `top` best by it."""

    first: RerankerMLP
    second: RerankerTrees
    top: int


Reranker = Union[RerankerMLP, RerankerTrees, RerankerCascade]


def float32_exact_thresholds(model_text: str) -> str:
    """LightGBM's model text with every split threshold t replaced by the largest float32 <= t.

    LightGBM compares a feature as a double with a double threshold; ONNX-ML's TreeEnsemble (and
    any float32 runtime) compares float32 with float32, the threshold rounded to nearest. For a
    float32 feature x, `x <= t` holds exactly when `x <= floor32(t)`, so with floored thresholds
    both runtimes take the same branch on every input the ranker can send, while rounding to
    nearest sends the features that fall between t and its rounding the other way (measured: 8%
    of the rows placed at split points moved a score by up to 0.79). The trees predict the same
    on float32 features before and after."""
    lines = model_text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("decision_type=") and any(int(d) & 1 for d in line.split("=", 1)[1].split()):
            raise ArtifactError("re-ranker trees: a categorical split; the re-ranker's features are all numeric")
        if line.startswith("threshold="):
            floored = []
            for t in map(float, line.split("=", 1)[1].split()):
                t32 = np.float32(t)
                if float(t32) > t:
                    t32 = np.nextafter(t32, np.float32(-np.inf))
                floored.append(repr(float(t32)))
            lines[i] = "threshold=" + " ".join(floored)
    # tree_sizes holds each tree's length in characters, which the new thresholds change; without
    # it LightGBM reads the trees one after another.
    return "\n".join(line for line in lines if not line.startswith("tree_sizes="))


def torch_scorer(model: RerankerMLP):
    def score(features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(features)).numpy().astype(np.float32)

    return score


def reranker_scorer(model: RerankerMLP | RerankerTrees) -> Callable[[np.ndarray], np.ndarray]:
    """Features [m, F] -> scores [m], in process, for either single model."""
    return model if isinstance(model, RerankerTrees) else torch_scorer(model)


def install_reranker(hybrid: HybridRanker, model: Reranker) -> HybridRanker:
    """`hybrid` ranking with `model` in process (a cascade: both stages), as the served ranker does."""
    if isinstance(model, RerankerCascade):
        hybrid.reranker, hybrid.rescorer, hybrid.rescore_top = torch_scorer(model.first), model.second, model.top
    else:
        hybrid.reranker, hybrid.rescorer, hybrid.rescore_top = reranker_scorer(model), None, 0
    return hybrid


def save_reranker(model: Reranker, cfg: RerankerConfig, directory: Path, card: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (RERANKER_WEIGHTS, RERANKER_TREES):  # a re-trained stage may have changed kind
        (directory / stale).unlink(missing_ok=True)
    parts = (model.first, model.second) if isinstance(model, RerankerCascade) else (model,)
    for part in parts:
        if isinstance(part, RerankerTrees):
            part.booster.save_model(str(directory / RERANKER_TREES))
        else:
            torch.save(part.state_dict(), directory / RERANKER_WEIGHTS)
    (directory / RERANKER_CARD).write_text(json.dumps({"config": asdict(cfg), "features": list(FEATURE_NAMES), **card}, indent=2))


def load_reranker(directory: Path) -> tuple[Reranker, dict]:
    card_path = directory / RERANKER_CARD
    if not card_path.exists():
        raise ArtifactError(f"re-ranker: {card_path} is missing")
    card = json.loads(card_path.read_text())
    if tuple(card["features"]) != FEATURE_NAMES:
        raise ArtifactError(f"re-ranker in {directory} was trained on features {card['features']}, this code computes {list(FEATURE_NAMES)}")
    kind = card["config"].get("kind", "mlp")  # cards written before LambdaMART: always the MLP
    cascade_top = card["config"].get("cascade_top", 0)
    needed = ((RERANKER_WEIGHTS,) if kind == "mlp" or cascade_top else ()) + ((RERANKER_TREES,) if kind == "lambdamart" else ())
    for name in needed:
        if not (directory / name).exists():
            raise ArtifactError(f"re-ranker in {directory}: its card says kind {kind!r}"
                                f"{f' (cascade_top {cascade_top})' if cascade_top else ''}, but {name} is missing")
    mlp, trees = None, None
    if RERANKER_WEIGHTS in needed:
        mlp = RerankerMLP(len(FEATURE_NAMES), card["config"]["hidden"])
        mlp.load_state_dict(torch.load(directory / RERANKER_WEIGHTS, weights_only=True))
        mlp.eval()
    if RERANKER_TREES in needed:
        import lightgbm  # only where trees are trained, evaluated or exported; the served ranker runs ONNX

        trees = RerankerTrees(lightgbm.Booster(model_file=str(directory / RERANKER_TREES)))
    if mlp is not None and trees is not None:
        return RerankerCascade(mlp, trees, cascade_top), card
    return (mlp if mlp is not None else trees), card
