"""The learned re-ranker: a small MLP over hybrid-retrieval features, trained listwise on graded
judgments, exported to ONNX for the served ranker (and checked against PyTorch on export)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from shopsearch.errors import ArtifactError, ExportParityError
from shopsearch.hybrid import FEATURE_NAMES, INPUT_NAME, OUTPUT_NAME, HybridRanker, OnnxReranker

RERANKER_WEIGHTS = "reranker.pt"
RERANKER_CARD = "reranker.json"
EXPORT_MAX_ABS_DIFF = 1e-4


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


@dataclass
class CandidateList:
    features: np.ndarray  # [m, F]
    gains: np.ndarray  # [m], unjudged = 0


def candidate_lists(ranker: HybridRanker, texts: list[str], vectors: np.ndarray, qrels: list[dict[str, int]],
                    product_ids: list[str]) -> list[CandidateList]:
    lists = []
    for text, vector, judged in zip(texts, vectors, qrels):
        rows, features = ranker.candidates(text, vector)
        gains = np.array([judged.get(product_ids[r], 0) for r in rows], dtype=np.float32)
        lists.append(CandidateList(features, gains))
    return lists


def listwise_loss(scores: torch.Tensor, gains: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ListNet cross-entropy against the distribution (2^gain - 1) / sum over each list: the
    candidates a shopper would rate higher should take more of the softmax mass. Lists are padded
    to one length; `mask` marks real candidates. Mean over lists."""
    target = (torch.pow(2.0, gains) - 1.0) * mask
    target = target / target.sum(dim=1, keepdim=True)
    log_p = torch.log_softmax(scores.masked_fill(mask == 0, -1e9), dim=1)
    return -(target * log_p).sum(dim=1).mean()


def _padded(lists: list[CandidateList]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = max(len(c.gains) for c in lists)
    n_features = lists[0].features.shape[1]
    features = np.zeros((len(lists), m, n_features), np.float32)
    gains = np.zeros((len(lists), m), np.float32)
    mask = np.zeros((len(lists), m), np.float32)
    for i, c in enumerate(lists):
        features[i, : len(c.gains)], gains[i, : len(c.gains)], mask[i, : len(c.gains)] = c.features, c.gains, 1.0
    return torch.from_numpy(features), torch.from_numpy(gains), torch.from_numpy(mask)


def train_reranker(lists: list[CandidateList], cfg: RerankerConfig = RerankerConfig(), log=print) -> RerankerMLP:
    torch.manual_seed(cfg.seed)
    usable = [c for c in lists if c.gains.max() > 0]
    if not usable:
        raise ArtifactError("re-ranker: no training query has a judged relevant product among its candidates")
    stacked = np.concatenate([c.features for c in usable])
    model = RerankerMLP(stacked.shape[1], cfg.hidden)
    model.mean.copy_(torch.from_numpy(stacked.mean(axis=0)))
    model.std.copy_(torch.from_numpy(stacked.std(axis=0) + 1e-6))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    features, gains, mask = _padded(usable)
    rng = np.random.default_rng(cfg.seed)
    started = time.time()
    for epoch in range(cfg.epochs):
        total, batches = 0.0, 0
        order = torch.from_numpy(rng.permutation(len(usable)))
        for start in range(0, len(usable), cfg.lists_per_batch):
            rows = order[start : start + cfg.lists_per_batch]
            loss = listwise_loss(model(features[rows]), gains[rows], mask[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        if (epoch + 1) % 10 == 0 or epoch == cfg.epochs - 1:
            log(f"re-ranker epoch {epoch + 1}/{cfg.epochs}: listwise loss {total / batches:.4f} ({time.time() - started:.1f}s)")
    return model.eval()


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


def export_reranker(model: RerankerMLP, path: Path, probe: np.ndarray) -> dict:
    """ONNX export with a dynamic candidate axis; fails when ONNX Runtime disagrees with PyTorch on `probe`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(probe[:4])
    torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "candidates"}, OUTPUT_NAME: {0: "candidates"}}, opset_version=17,
                      dynamo=False)
    diff = float(np.abs(OnnxReranker(path)(probe) - torch_scorer(model)(probe)).max())
    ok = diff <= EXPORT_MAX_ABS_DIFF
    if not ok:
        raise ExportParityError("reranker.onnx", [("max_abs_diff", diff, f"<= {EXPORT_MAX_ABS_DIFF}", ok)])
    return {"max_abs_diff": diff, "probe_rows": int(probe.shape[0])}
