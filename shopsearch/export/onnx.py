"""Export the bi-encoder to ONNX and prove the export computes what the PyTorch model computes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from shopsearch.core.modeling import BiEncoder

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
OPSET = 17


@dataclass(frozen=True)
class TensorIO:
    name: str
    elem_type: str  # numpy dtype name
    shape: tuple[int | str, ...]  # ints are fixed, strings are dynamic axes


@dataclass(frozen=True)
class OnnxSignature:
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]


def export_onnx(model: BiEncoder, path: Path) -> Path:
    model = model.eval()  # export restores the mode it found; make sure that mode is eval
    # Trace with real padding in the batch so the exported graph keeps the masked path.
    ids = torch.full((2, 8), 5, dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, mask),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAMES[0]: {0: "batch", 1: "sequence"},
                INPUT_NAMES[1]: {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    # The tracer leaves the embedding width symbolic (it flows through a division); pin it, so
    # the Triton configs derived from this graph get a fixed output shape.
    graph_model = onnx.load(str(path))
    width = graph_model.graph.output[0].type.tensor_type.shape.dim[1]
    width.Clear()
    width.dim_value = model.config.hidden_size
    onnx.save(graph_model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def read_signature(path: Path) -> OnnxSignature:
    """Input/output names, dtypes and shapes of an ONNX graph: the source of Triton tensor names."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def io(value) -> TensorIO:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in tensor.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        return TensorIO(value.name, dtype, dims)

    return OnnxSignature(
        inputs=tuple(io(v) for v in graph.input if v.name not in initializers),
        outputs=tuple(io(v) for v in graph.output),
    )
