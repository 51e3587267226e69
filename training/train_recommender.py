"""Train the sequential recommender: `python training/train_recommender.py --data NAME --out DIR`.

Data-parallel under `torchrun --nproc_per_node N training/train_recommender.py ...` like search
training. Item titles are embedded by the encoder given with --search-checkpoint: a search
checkpoint, or a pretrained encoder directory (`make pretrained`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shopsearch.errors import ShopSearchError
from shopsearch.data.interactions import load_interactions
from shopsearch.train.recipes import load_rec_config, load_rec_data_options
from shopsearch.train.recommender import train_to_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--data-dir", help="where a real dataset lives (e.g. ../shared/data/amazon_games)")
    parser.add_argument("--recipe", type=Path, help="default: training/recipes/rec_<data>.toml")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--search-checkpoint", type=Path, help="search checkpoint or pretrained encoder directory whose title vectors items get")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--mixed-precision", action="store_true", help="bf16 autocast on CPU, fp16 on CUDA")
    args = parser.parse_args(argv)
    recipe = args.recipe or Path(__file__).parent / "recipes" / f"rec_{args.data}.toml"
    try:
        cfg = load_rec_config(recipe, epochs=args.epochs, mixed_precision=args.mixed_precision or None)
        options = load_rec_data_options(recipe) if args.data == "synthetic" else {}
        data = load_interactions(args.data, args.data_dir, **options)
        print(f"interactions {data.name}: {json.dumps(data.stats())}", flush=True)
        search = args.search_checkpoint if args.search_checkpoint and args.search_checkpoint.exists() else None
        if args.search_checkpoint and search is None:
            print(f"note: no search checkpoint at {args.search_checkpoint}: items get id embeddings only", flush=True)
        train_to_checkpoint(data, cfg, args.out, search, log=lambda m: print(m, flush=True))
    except ShopSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
