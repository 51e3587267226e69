"""Run the embedder (PyTorch or ONNX Runtime) over many texts efficiently."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from shopsearch.tokenization import EncodedBatch, TextEncoder


class Embedder(Protocol):
    def embed(self, batch: EncodedBatch) -> np.ndarray: ...


class TorchEmbedder:
    def __init__(self, model):
        import torch

        self._torch = torch
        self.model = model.eval()

    def embed(self, batch: EncodedBatch) -> np.ndarray:
        with self._torch.inference_mode():
            out = self.model(self._torch.from_numpy(batch.input_ids), self._torch.from_numpy(batch.attention_mask))
        return out.numpy().astype(np.float32)


class OnnxEmbedder:
    """ONNX Runtime session whose input/output names are read from the graph, not assumed."""

    def __init__(self, path: Path, intra_op_threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # 0 lets ORT pick; Triton instances on a small machine should set this to share cores.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def embed(self, batch: EncodedBatch) -> np.ndarray:
        feeds = dict(zip(self.input_names, (batch.input_ids, batch.attention_mask)))
        return self.session.run([self.output_name], feeds)[0]


def embed_texts(embedder: Embedder, encoder: TextEncoder, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Embed texts in length-sorted batches (little padding), returned in the input order."""
    if not texts:
        raise ValueError("embed_texts: no texts")
    lengths = [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")
    chunks = []
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        chunks.append(embedder.embed(encoder.encode_texts([texts[i] for i in rows])))
    stacked = np.concatenate(chunks)
    out = np.empty_like(stacked)
    out[order] = stacked
    return out
