"""The re-ranker as ONNX for the served ranker, proven against its in-process self before it is laid out.

The MLP goes through PyTorch's exporter; LambdaMART's trees through onnxmltools (ONNX-ML's
TreeEnsembleRegressor, which ONNX Runtime runs natively). Either graph takes `features` [m, F]
and gives `scores` [m], so the ranker does not know which kind it serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from shopsearch.core.hybrid import INPUT_NAME, OUTPUT_NAME, OnnxReranker
from shopsearch.core.reranker import Reranker, RerankerTrees, reranker_scorer
from shopsearch.errors import ExportParityError

EXPORT_MAX_ABS_DIFF = 1e-4
# onnxmltools 1.16 converts up to opset 15; ai.onnx.ml 3 is TreeEnsembleRegressor's version there.
TREES_OPSET = 15


def export_reranker(model: Reranker, path: Path, probe: np.ndarray) -> dict:
    """ONNX export with a dynamic candidate axis; fails when ONNX Runtime disagrees with the
    in-process model on `probe`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(model, RerankerTrees):
        _export_trees(model, path, probe.shape[1])
    else:
        torch.onnx.export(model, (torch.from_numpy(probe[:4]),), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "candidates"}, OUTPUT_NAME: {0: "candidates"}},
                          opset_version=17, dynamo=False)
    diff = float(np.abs(OnnxReranker(path)(probe) - reranker_scorer(model)(probe)).max())
    ok = diff <= EXPORT_MAX_ABS_DIFF
    if not ok:
        raise ExportParityError(path.name, [("max_abs_diff", diff, f"<= {EXPORT_MAX_ABS_DIFF}", ok)])
    report = {"max_abs_diff": diff, "probe_rows": int(probe.shape[0])}
    return {**report, "kind": "lambdamart", "trees": model.n_trees} if isinstance(model, RerankerTrees) else report


def _export_trees(model: RerankerTrees, path: Path, n_features: int) -> None:
    """LightGBM -> ONNX-ML, then the converter's [m, 1] output reshaped to the ranker's [m] `scores`."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    graph_model = onnxmltools.convert_lightgbm(model.booster, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
                                               target_opset=TREES_OPSET, zipmap=False)
    graph = graph_model.graph
    column = graph.output[0].name
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), "scores_shape"))
    graph.node.append(onnx.helper.make_node("Reshape", [column, "scores_shape"], [OUTPUT_NAME]))
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["candidates"]))
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))
