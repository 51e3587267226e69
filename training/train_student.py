"""Prune and distill a student from a fine-tuned teacher, then train its re-ranker:
`python training/train_student.py --teacher DIR --recipe RECIPE --out DIR`.

The recipe's [student] section says what to keep (layers, heads, feed-forward units) and how to
distill (shopsearch.compress.student); its [rerank] section trains the student's own re-ranker on the
train queries the teacher was kept away from (stage 2, as for any search checkpoint)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shopsearch.compress.student import distill_student, student_config
from shopsearch.errors import ConfigError, ShopSearchError
from shopsearch.train.recipes import load_recipe
from shopsearch.train.reranker import train_reranker_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True, type=Path, help="the fine-tuned checkpoint to compress")
    parser.add_argument("--recipe", required=True, type=Path, help="a recipe with a [student] section")
    parser.add_argument("--out", required=True, type=Path, help="the student's checkpoint directory")
    parser.add_argument("--data", help="dataset name; overrides the recipe's")
    parser.add_argument("--data-dir", help="where a real dataset lives (e.g. ../shared/data/homedepot)")
    args = parser.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    try:
        recipe = load_recipe(args.recipe)
        cfg = student_config(recipe)
        if cfg is None:
            raise ConfigError(str(args.recipe), "[student]", "is required to make a student")
        dataset = recipe.dataset(args.data, args.data_dir)
        print(f"dataset {dataset.name}: {json.dumps(dataset.stats())}", flush=True)
        card = distill_student(args.teacher, dataset, cfg, args.out, log=log)
        if card.get("train_config", {}).get("rerank_holdout"):
            train_reranker_stage(args.out, dataset, recipe.reranker_config(), log=log)
    except ShopSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
