"""A SASRec-style sequential recommender: a causal transformer over a user's item history.

An item's vector is a learned id embedding plus a learned projection of its title's embedding
from the search embedder (frozen). Items the training histories never show keep a zero id
embedding, so their vector is the text part alone: cold-start items are still retrievable.
Id dropout during training teaches the model to rely on the text part too. Input and output
item vectors are tied, so the served ranker searches the same item table the encoder reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shopsearch.errors import ArtifactError

REC_WEIGHTS = "recommender.pt"
REC_CARD = "recommender.json"
TEXT_VECTORS = "title_vectors.npy"
MASK_VALUE = -1e4  # additive attention mask; finite, so a fully padded row stays a number


@dataclass(frozen=True)
class RecConfig:
    n_items: int
    text_dim: int = 0  # width of the title vectors; 0: id embeddings only
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    max_length: int = 50  # the window: the most recent items the encoder reads
    dropout: float = 0.2
    id_dropout: float = 0.1  # chance an item's id embedding is dropped in training (text only)

    @property
    def padding_item(self) -> int:
        return self.n_items  # the row after the catalog: zeros, never scored


class CausalBlock(nn.Module):
    """Pre-norm self-attention + feed-forward, written with plain ops so ONNX and TensorRT
    export it without a fused kernel that masks differently."""

    def __init__(self, cfg: RecConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.norm1, self.norm2 = nn.LayerNorm(cfg.hidden_size), nn.LayerNorm(cfg.hidden_size)
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.ff = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.hidden_size), nn.GELU(),
                                nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_size, cfg.hidden_size))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + mask, dim=-1)
        x = x + self.drop(self.out((attn @ v).transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class SequentialRecommender(nn.Module):
    def __init__(self, cfg: RecConfig, title_vectors: np.ndarray | None = None, trained_items: np.ndarray | None = None):
        super().__init__()
        self.config = cfg
        n, d = cfg.n_items, cfg.hidden_size
        self.id_embedding = nn.Embedding(n + 1, d)
        nn.init.normal_(self.id_embedding.weight, std=0.02)
        text = np.zeros((n + 1, max(cfg.text_dim, 1)), dtype=np.float32)
        if cfg.text_dim:
            if title_vectors is None or title_vectors.shape != (n, cfg.text_dim):
                raise ArtifactError(f"recommender: expected title vectors [{n}, {cfg.text_dim}]")
            text[:n] = title_vectors
        self.register_buffer("title_vectors", torch.from_numpy(text))
        self.text_projection = nn.Linear(text.shape[1], d, bias=False) if cfg.text_dim else None
        # 1 for items with an id embedding worth using (seen in training); the padding row is 0.
        seen = np.zeros(n + 1, dtype=np.float32)
        seen[:n] = 1.0 if trained_items is None else trained_items.astype(np.float32)
        self.register_buffer("id_seen", torch.from_numpy(seen))
        self.positions = nn.Embedding(cfg.max_length, d)
        self.blocks = nn.ModuleList(CausalBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def item_vectors(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of the given item rows (all catalog rows when None); the padding row is zero."""
        rows = torch.arange(self.config.n_items, device=self.id_seen.device) if rows is None else rows
        keep = self.id_seen[rows]
        if self.training and self.config.id_dropout:
            keep = keep * (torch.rand_like(keep) >= self.config.id_dropout)
        vectors = self.id_embedding(rows) * keep.unsqueeze(-1)
        if self.text_projection is not None:
            vectors = vectors + self.text_projection(self.title_vectors[rows])
        return vectors * (rows != self.config.padding_item).unsqueeze(-1)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """items [batch, length] (right-aligned, left-padded with `padding_item`) -> hidden state per
        position [batch, length, hidden]; position t has read items[:, :t+1] only."""
        length = items.shape[1]
        valid = items != self.config.padding_item
        positions = torch.arange(self.config.max_length - length, self.config.max_length, device=items.device)
        x = self.item_vectors(items) * math.sqrt(self.config.hidden_size) + self.positions(positions)
        x = self.drop(x) * valid.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        allowed = causal.unsqueeze(0) & valid.unsqueeze(1)  # [batch, query, key]
        mask = (~allowed).to(x.dtype).unsqueeze(1) * MASK_VALUE
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def forward(self, items: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """The user vector: the hidden state after the most recent item (every position's with
        `all_positions`, for training)."""
        hidden = self.encode(items)
        return hidden if all_positions else hidden[:, -1]

    @torch.no_grad()
    def catalog_vectors(self) -> np.ndarray:
        was = self.training
        self.eval()
        vectors = self.item_vectors().float().cpu().numpy()
        self.train(was)
        return vectors


def save_recommender(model: SequentialRecommender, directory: Path, card: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / REC_WEIGHTS)
    (directory / REC_CARD).write_text(json.dumps({"config": asdict(model.config), **card}, indent=2))


def load_recommender(directory: Path) -> tuple[SequentialRecommender, dict]:
    """The checkpoint carries its config (the card) and its buffers (title vectors, seen items)."""
    card_path, weights = directory / REC_CARD, directory / REC_WEIGHTS
    if not card_path.exists() or not weights.exists():
        raise ArtifactError(f"recommender checkpoint {directory}: {REC_CARD} and {REC_WEIGHTS} are required (run make train-rec)")
    card = json.loads(card_path.read_text())
    cfg = RecConfig(**card["config"])
    placeholder = np.zeros((cfg.n_items, cfg.text_dim), dtype=np.float32) if cfg.text_dim else None
    model = SequentialRecommender(cfg, placeholder)  # buffers (title vectors, seen items) come from the state dict
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), card


CATALOG_ITEMS = "items.json"  # the catalog the model was trained over: ids, titles, interaction counts
PROBE_HISTORIES = "probe_histories.json"  # real histories the build's parity gate replays


def save_rec_checkpoint(model: SequentialRecommender, directory: Path, card: dict, item_ids: list[str],
                        titles: list[str], counts: np.ndarray, probes: list[list[int]]) -> Path:
    """Everything a build needs, so `make build-repo` reads no dataset for the recommender."""
    save_recommender(model, directory, card)
    (directory / CATALOG_ITEMS).write_text(json.dumps({"item_ids": item_ids, "titles": titles,
                                                       "counts": [int(c) for c in counts]}, ensure_ascii=False))
    (directory / PROBE_HISTORIES).write_text(json.dumps(probes))
    return directory


def load_rec_catalog(directory: Path) -> tuple[list[str], list[str], np.ndarray, list[list[int]]]:
    path = directory / CATALOG_ITEMS
    if not path.exists():
        raise ArtifactError(f"recommender checkpoint {directory}: {CATALOG_ITEMS} is missing")
    items = json.loads(path.read_text(encoding="utf-8"))
    probes = json.loads((directory / PROBE_HISTORIES).read_text()) if (directory / PROBE_HISTORIES).exists() else []
    return items["item_ids"], items["titles"], np.asarray(items["counts"], dtype=np.int64), probes


def pack(sequences: list[list[int]], padding: int, length: int | None = None) -> np.ndarray:
    """Right-aligned rows, left-padded with `padding` (the most recent item is always last)."""
    length = length or max(len(s) for s in sequences)
    out = np.full((len(sequences), length), padding, dtype=np.int64)
    for row, seq in enumerate(sequences):
        seq = seq[-length:]
        if seq:
            out[row, length - len(seq) :] = seq
    return out
