"""Recommender recipes (training/recipes/rec_<data>.toml) and the train -> checkpoint job."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

from shopsearch.errors import ConfigError
from shopsearch.recs.data import Interactions
from shopsearch.recs.model import save_rec_checkpoint
from shopsearch.recs.training import RecTrainConfig, train_recommender

PROBES = 512


def load_rec_data_options(path: Path) -> dict:
    """The recipe's [data] table: generator options for the synthetic shop's sessions."""
    if not path.exists():
        raise ConfigError(str(path), "recipe", "file not found")
    return dict(tomllib.loads(path.read_text()).get("data", {}))


def load_rec_config(path: Path, **overrides) -> RecTrainConfig:
    if not path.exists():
        raise ConfigError(str(path), "recipe", "file not found")
    raw = tomllib.loads(path.read_text()).get("train", {})
    try:
        return RecTrainConfig(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})
    except TypeError as exc:
        raise ConfigError(str(path), "[train]", str(exc)) from None


def train_to_checkpoint(data: Interactions, cfg: RecTrainConfig, out: Path, search_checkpoint: Path | None,
                        log=print) -> dict:
    """Title vectors (when the items have titles and a search checkpoint is given), training, and a
    checkpoint that carries its config, catalog and parity probes."""
    vectors, text_source = None, None
    if cfg.use_titles and data.has_titles and search_checkpoint is not None:
        from shopsearch.recs.text import title_vectors

        vectors, text_source = title_vectors(search_checkpoint, data.titles)
        log(f"title vectors: {vectors.shape[0]} items x {vectors.shape[1]} from {search_checkpoint}")
    model, card = train_recommender(data, cfg, vectors, log=log)
    if not card:
        return {}  # a data-parallel rank other than 0
    card["title_vectors"] = text_source
    probes = random.Random(cfg.seed).sample(data.histories, min(PROBES, len(data.histories)))
    save_rec_checkpoint(model, out, card, data.item_ids, data.titles, data.item_counts(), probes)
    log(f"recommender checkpoint: {out}")
    return card
