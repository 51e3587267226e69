"""Run the embedder (PyTorch or ONNX Runtime) over many texts efficiently."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from shopsearch.core.tokenization import EncodedBatch, TextEncoder


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
    """ONNX Runtime session whose input/output names are read from the graph, not assumed.

    `row_by_row` runs each text alone, trimmed to its own length. Dynamically quantized (INT8)
    graphs need it: they pick activation scales per tensor at run time, so a batched query's
    vector would depend on whatever other queries shared its batch, and served rankings would
    change with traffic. Row by row, a query's vector depends on the query alone.
    """

    def __init__(self, path: Path, intra_op_threads: int = 0, row_by_row: bool = False):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # 0 lets ORT pick; Triton instances on a small machine should set this to share cores.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.row_by_row = row_by_row

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], dict(zip(self.input_names, (ids, mask))))[0]

    def embed(self, batch: EncodedBatch) -> np.ndarray:
        if not self.row_by_row:
            return self._run(batch.input_ids, batch.attention_mask)
        rows = []
        for ids, mask in zip(batch.input_ids, batch.attention_mask):
            length = max(int(mask.sum()), 1)
            rows.append(self._run(ids[None, :length], mask[None, :length]))
        return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)


# From this many texts on (a catalog, not a batch of queries) embedding shows a progress bar: a
# 6-layer encoder takes minutes over 50,000 titles on 2 cores.
PROGRESS_FROM = 10_000


def embed_texts(embedder: Embedder, encoder: TextEncoder, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Embed texts in length-sorted batches (little padding), returned in the input order."""
    from tqdm.auto import tqdm

    if not texts:
        raise ValueError("embed_texts: no texts")
    lengths = [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")
    chunks = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=f"embedding {len(texts)} texts", unit="batch", disable=len(texts) < PROGRESS_FROM,
                      mininterval=5.0, leave=False):
        rows = order[start : start + batch_size]
        chunks.append(embedder.embed(encoder.encode_texts([texts[i] for i in rows])))
    stacked = np.concatenate(chunks)
    out = np.empty_like(stacked)
    out[order] = stacked
    return out
