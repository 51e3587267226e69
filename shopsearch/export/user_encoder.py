"""Export the user encoder to ONNX and prove it: the exported graph must give the PyTorch model's
user vectors and the same top-10 over the catalog, or the build fails with every number listed."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch

from shopsearch.errors import ExportParityError
from shopsearch.export.onnx import OPSET
from shopsearch.core.index import top_k_rows
from shopsearch.core.recommender import SequentialRecommender
from shopsearch.core.recommender import pack

ITEMS_INPUT = "item_rows"
VECTOR_OUTPUT = "user_vector"
# artifact -> (max abs diff of user vectors, min top-10 overlap over the catalog) against PyTorch
BOUNDS = {"onnx_fp32": (1e-4, 0.98), "onnx_fp16": (2e-2, 0.90), "trt_fp16": (2e-2, 0.90)}


def export_user_encoder(model: SequentialRecommender, path: Path) -> Path:
    """[batch, window] int64 item rows (left-padded with the padding row) -> [batch, hidden] float32."""
    model = model.eval()
    cfg = model.config
    sample = torch.from_numpy(pack([[0, 1, 2], [3]], cfg.padding_item, cfg.max_length))
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample,), str(path), input_names=[ITEMS_INPUT], output_names=[VECTOR_OUTPUT],
                          dynamic_axes={ITEMS_INPUT: {0: "batch"}, VECTOR_OUTPUT: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def probe_histories(histories: list[list[int]], window: int, n: int = 512, seed: int = 0) -> np.ndarray:
    """Real histories (short, long, longer than the window) plus an empty one, as the encoder sees them."""
    rng = np.random.default_rng(seed)
    picked = [histories[i] for i in rng.choice(len(histories), size=min(n, len(histories)), replace=False)]
    return pack(picked + [[]], -1, window)


def onnx_runner(onnx_path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return lambda rows: session.run([VECTOR_OUTPUT], {ITEMS_INPUT: rows})[0]


@contextmanager
def trt_engine_runner(engine_path: Path):
    """The built engine through Polygraphy's TrtRunner (GPU hosts only), fed at most its profile's
    largest batch at a time (the gate sends every probe history at once); deactivated on leaving
    the block (an active runner holds its execution context and device buffers)."""
    from shopsearch.export.tensorrt import chunked, engine_profile, trt_runner

    runner = trt_runner(engine_path, 0, "user_encoder")
    max_batch = engine_profile(engine_path, 0)["batch"][2]
    with runner:  # Polygraphy's runners activate on entering and deactivate on leaving
        yield lambda rows: chunked(lambda feeds: runner.infer(feeds)[VECTOR_OUTPUT], {ITEMS_INPUT: rows}, max_batch)


def check_user_encoder(model: SequentialRecommender, onnx_path: Path, histories: list[list[int]],
                       catalog_vectors: np.ndarray, artifact: str = "onnx_fp32", run=None) -> dict[str, float]:
    """`run(rows) -> vectors`: the artifact under test (default: ONNX Runtime on `onnx_path`)."""
    cfg = model.config
    rows = probe_histories(histories, cfg.max_length)
    rows[rows < 0] = cfg.padding_item
    with torch.inference_mode():
        reference = model(torch.from_numpy(rows)).numpy()
    got = (run or onnx_runner(onnx_path))(rows)
    max_abs, min_overlap = BOUNDS[artifact]
    ref_top = top_k_rows(reference @ catalog_vectors.T, 10)[0]
    got_top = top_k_rows(got @ catalog_vectors.T, 10)[0]
    numbers = {"max_abs_diff": float(np.max(np.abs(reference - got))),
               "top10_overlap": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref_top, got_top)])),
               "probes": float(len(rows))}
    checks = [("max_abs_diff", numbers["max_abs_diff"], f"<= {max_abs}", numbers["max_abs_diff"] <= max_abs),
              ("top10_overlap", numbers["top10_overlap"], f">= {min_overlap}", numbers["top10_overlap"] >= min_overlap)]
    if not all(ok for *_, ok in checks):
        raise ExportParityError(f"user_encoder ({artifact})", checks)
    return numbers
