"""CPU artifacts derived from the FP32 ONNX export: transformer graph fusion, then INT8.

Each artifact declares beside it how far it may drift from the PyTorch model (`PARITY`); the
build measures every number and fails with all of them listed when one is out of bounds.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx

from shopsearch.errors import FusionUnavailableError


@dataclass(frozen=True)
class ParityThresholds:
    """Bounds vs the PyTorch FP32 model on the build's fixed query set and the dev split."""

    max_abs_diff: float | None  # per embedding value; None: not meaningful (quantized weights)
    min_mean_cosine: float
    min_top10_overlap: float  # share of the PyTorch top-10 products the artifact also returns
    max_ndcg10_drop: float  # dev nDCG@10 of PyTorch minus the artifact's


# FP32 exports match to float rounding; fusion reorders float math a little; INT8 weights move
# embeddings visibly but must keep ranking quality (the bar: cosine >= 0.98, nDCG -0.01).
PARITY = {
    "onnx_fp32": ParityThresholds(max_abs_diff=1e-4, min_mean_cosine=0.9999, min_top10_overlap=0.97, max_ndcg10_drop=0.002),
    "onnx_fused": ParityThresholds(max_abs_diff=1e-3, min_mean_cosine=0.9999, min_top10_overlap=0.95, max_ndcg10_drop=0.003),
    "onnx_int8": ParityThresholds(max_abs_diff=None, min_mean_cosine=0.98, min_top10_overlap=0.60, max_ndcg10_drop=0.01),
    "onnx_fp16": ParityThresholds(max_abs_diff=1e-2, min_mean_cosine=0.999, min_top10_overlap=0.90, max_ndcg10_drop=0.005),
    "trt_fp16": ParityThresholds(max_abs_diff=1e-2, min_mean_cosine=0.999, min_top10_overlap=0.90, max_ndcg10_drop=0.005),
}
PRECISIONS = ("fp32", "fused", "int8")
# Artifacts whose outputs depend on batch neighbours (dynamic activation scales): run row by row.
ROW_BY_ROW = {"onnx_int8"}


def attention_shape(config) -> tuple[int, int] | None:
    """(heads, attention width) the fusion of an encoder's attention needs: the same in every layer.
    ONNX Runtime's optimizer takes one pair for the whole graph and cannot detect it per node, so an
    encoder pruned to different head counts per layer has none (it is quantized unfused)."""
    heads = set(config.layer_heads) if config.layer_heads else {config.num_heads}
    if len(heads) != 1:
        return None
    (n,) = heads
    return n, n * config.head_size


def fuse_transformer(fp32_path: Path, out_path: Path, num_heads: int, hidden_size: int) -> tuple[Path, dict[str, int]]:
    """ONNX Runtime's BERT optimizer: Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNorm.
    `num_heads` / `hidden_size`: of the attention (`attention_shape`), not of the model's width."""
    from onnxruntime.transformers.optimizer import optimize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(str(fp32_path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    if not fused.get("Attention"):
        import onnxruntime

        raise FusionUnavailableError(f"{fp32_path}: ONNX Runtime {onnxruntime.__version__} fused no Attention node "
                                     f"(got {fused}); export with eager attention, or use ONNX Runtime >= 1.32")
    optimized.save_model_to_file(str(out_path))
    return out_path, fused


def quantize_int8(fused_path: Path, out_path: Path) -> Path:
    """Dynamic INT8: weights quantized per channel ahead of time, activations at run time (no
    calibration data needed; the MatMul/Attention weights dominate the cost at these sizes)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ORT logs a hint to run its shape pre-processing first; that step's symbolic shape inference
    # cannot follow this graph's attention mask arithmetic, so the hint is muted, not followed.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(fused_path), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
            # Fused contrib ops have no ONNX shape inference; their outputs are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    return out_path
