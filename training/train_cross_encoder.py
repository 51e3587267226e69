"""Train a cross-encoder re-scorer for a trained bi-encoder checkpoint:
`python training/train_cross_encoder.py --checkpoint DIR --recipe RECIPE --out DIR`.

The recipe's [distill] section says how (the cross-encoder of stage 1b, shopsearch.compress.distillation:
`teacher_init_from` a pretrained encoder, groups of BM25-mined candidates, listwise loss); the
bi-encoder gives the tokenizer, the architecture and the train queries the re-ranker keeps unseen.
Nothing is distilled: `shopsearch rescoring` measures what re-scoring the served top-k with it buys."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shopsearch.compress.distillation import distill_config, train_cross_encoder
from shopsearch.errors import ConfigError, ShopSearchError
from shopsearch.train.recipes import load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path, help="the trained bi-encoder checkpoint")
    parser.add_argument("--recipe", required=True, type=Path, help="a recipe with a [distill] section")
    parser.add_argument("--out", required=True, type=Path, help="the cross-encoder's directory")
    parser.add_argument("--data", help="dataset name; overrides the recipe's")
    parser.add_argument("--data-dir", help="where a real dataset lives (e.g. ../shared/data/homedepot)")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
        cfg = distill_config(recipe)
        if cfg is None:
            raise ConfigError(str(args.recipe), "[distill]", "is required to train a cross-encoder")
        dataset = recipe.dataset(args.data, args.data_dir)
        print(f"dataset {dataset.name}: {json.dumps(dataset.stats())}", flush=True)
        train_cross_encoder(args.checkpoint, dataset, cfg, args.out, log=lambda m: print(m, flush=True))
    except ShopSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
