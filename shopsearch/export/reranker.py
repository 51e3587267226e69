"""The re-ranker as ONNX for the served ranker, proven against PyTorch before it is laid out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shopsearch.core.hybrid import INPUT_NAME, OUTPUT_NAME, OnnxReranker
from shopsearch.core.reranker import RerankerMLP, torch_scorer
from shopsearch.errors import ExportParityError

EXPORT_MAX_ABS_DIFF = 1e-4


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
