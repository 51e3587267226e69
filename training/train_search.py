"""Train the search models from a recipe: `python training/train_search.py --recipe ... --out ...`.

Stage 1, the bi-encoder (tokenizer + dense embedder; data-parallel under
`torchrun --nproc_per_node N training/train_search.py ...`); stage 1b, when the recipe has a
[distill] section, a cross-encoder teacher distilled into the bi-encoder (one process); stage 2,
when the recipe keeps a share of train queries for it (`rerank_holdout`), the re-ranker of hybrid
(BM25 + dense) candidates."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shopsearch.compress.distillation import distill_config, distill_stage
from shopsearch.errors import ConfigError, ShopSearchError
from shopsearch.train.recipes import load_recipe
from shopsearch.train.reranker import checkpoint_holdout, train_reranker_stage
from shopsearch.train.biencoder import train_biencoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--data", help="dataset name; overrides the recipe's")
    parser.add_argument("--data-dir", help="where a real dataset lives (e.g. ../shared/data/homedepot)")
    parser.add_argument("--steps", type=int, help="override the recipe's step count")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast during training (CPU or CUDA)")
    parser.add_argument("--fp16", action="store_true", help="fp16 autocast + gradient scaling (CUDA)")
    parser.add_argument("--save-every", type=int, help="steps between resumable training states in --out")
    parser.add_argument("--resume", action="store_true", help="continue from the last state in --out (exactly)")
    parser.add_argument("--tokenizer", type=Path, help="reuse this tokenizer.json instead of training one")
    parser.add_argument("--reranker-only", action="store_true", help="keep the checkpoint's bi-encoder, train stage 2 only")
    parser.add_argument("--distill-only", action="store_true",
                        help="start from the stage-1 bi-encoder in --out: stage 1b (the recipe's [distill]) and stage 2")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
        dataset = recipe.dataset(args.data, args.data_dir)
        print(f"dataset {dataset.name}: {json.dumps(dataset.stats())}", flush=True)
        config = recipe.train_config(steps=args.steps, amp_bf16=args.bf16 or None, amp_fp16=args.fp16 or None,
                                     save_every=args.save_every)
        log = lambda m: print(m, flush=True)  # noqa: E731
        distill = distill_config(recipe)
        if args.distill_only and distill is None:
            raise ConfigError(str(args.recipe), "[distill]", "--distill-only needs a [distill] section")
        if not (args.reranker_only or args.distill_only):
            # Stage 2 evaluates the dense model on dev as well, on a catalog embedding it needs anyway:
            # stage 1 leaves it that (a minute on Home Depot). Stage 1b reads stage 1's own numbers.
            reranker_follows = bool(config.rerank_holdout) and distill is None
            train_biencoder(dataset, config, args.out, log=log, tokenizer_file=args.tokenizer, resume=args.resume,
                            evaluate=not reranker_follows)
        if int(os.environ.get("RANK", "0")) != 0:
            return 0  # data-parallel ranks > 0: rank 0 wrote the checkpoint and runs stages 1b and 2
        if distill is not None and not args.reranker_only:
            distill_stage(args.out, dataset, distill, log=log)
        # The checkpoint's own holdout decides: a student's recipe has no [train], its card has the teacher's.
        if args.reranker_only or checkpoint_holdout(args.out):
            train_reranker_stage(args.out, dataset, recipe.reranker_config(), log=log)
    except ShopSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
