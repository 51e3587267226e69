"""Build the Triton model repository from a checkpoint: `python build/build_repo.py --checkpoint ... --out ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shopsearch.build.options import BuildOptions
from shopsearch.build.search import build_repository
from shopsearch.errors import ShopSearchError
from shopsearch.train.recipes import load_recipe
from shopsearch.triton.tuning import Tuning


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--recipe", required=True, type=Path, help="recipe whose [data] names the catalog")
    parser.add_argument("--out", required=True, type=Path, help="model repository directory")
    parser.add_argument("--work", type=Path, default=Path("artifacts/build"), help="staging directory")
    parser.add_argument("--data", help="catalog dataset name; overrides the recipe's")
    parser.add_argument("--data-dir")
    parser.add_argument("--top-k", type=int, default=BuildOptions.top_k)
    parser.add_argument("--threads", type=int, default=BuildOptions.intra_op_threads, help="ONNX Runtime intra-op threads")
    parser.add_argument("--target", default=BuildOptions.target, help="cpu (pip tritonserver) or gpu (NVIDIA's Triton container)")
    parser.add_argument("--precision", default=BuildOptions.precision, help="cpu target embedder: fp32, fused or int8")
    parser.add_argument("--gpu-backend", default=BuildOptions.gpu_backend, help="gpu target embedder: tensorrt or onnxruntime")
    parser.add_argument("--trt-version-compatible", action="store_true",
                        help="gpu target, tensorrt: build engines later TensorRT releases can load too")
    parser.add_argument("--index", help="catalog search: exact, ivf or hnsw; overrides the recipe's [index] kind")
    parser.add_argument("--rec-checkpoint", type=Path, help="recommender checkpoint: also build recommend + similar_items")
    parser.add_argument("--tuning", type=Path, help="instances and dynamic batching per model, written by `make tune`")
    args = parser.parse_args(argv)
    try:
        tuning = Tuning.load(args.tuning) if args.tuning else None
        if tuning:
            print(f"tuning from {args.tuning}: " + "; ".join(f"{m} {s.label()}" for m, s in sorted(tuning.models.items())), flush=True)
        recipe = load_recipe(args.recipe)
        dataset = recipe.dataset(args.data, args.data_dir)
        report = build_repository(args.checkpoint, dataset, args.out, args.work / dataset.name,
                                  BuildOptions(target=args.target, precision=args.precision, gpu_backend=args.gpu_backend,
                                               trt_version_compatible=args.trt_version_compatible, top_k=args.top_k, intra_op_threads=args.threads,
                                               index=recipe.index_spec(args.index), **recipe.serving_options()),
                                  log=lambda m: print(m, flush=True), tuning=tuning, rec_checkpoint=args.rec_checkpoint)
    except ShopSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"timings": report["timings"], "repository_bytes": report["repository_bytes"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
