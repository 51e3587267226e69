"""Typed configs of the search models, derived from the built artifacts.

Tensor names between the models come from the exported ONNX graph (`OnnxSignature`); each Python
model's parameters are its step's typed parameter class (shopsearch.serving.steps), so the config
writes exactly what the step reads back.
"""

from __future__ import annotations

import dataclasses

from shopsearch.export.onnx import OnnxSignature, TensorIO
from shopsearch.serving.steps import HYBRID, EmbedderParams, RankerParams, SearchPostprocessParams, TokenizerParams
from shopsearch.serving.tensors import (
    CANDIDATE_INDICES, CANDIDATE_SCORES, CATEGORY, COLLAPSE, IN_STOCK, PRICE_MAX, PRICE_MIN, PRODUCT_IDS, QUERY, QUERY_TEXT,
    QUERY_TEXT_BYTES, SCORES, TITLES, TOPK,
)
from shopsearch.triton.model_config import DynamicBatching, OnnxRuntimeModelConfig, PythonModelConfig, TensorRTModelConfig, TensorSpec

MAX_BATCH_SIZE = 256
ISOLATED_BATCH_SIZES = (1,)
QUERY_TEXT_SPEC = TensorSpec(QUERY_TEXT, "uint8", (QUERY_TEXT_BYTES,))


def _spec(io: TensorIO, ragged: bool = False) -> TensorSpec:
    # The first ONNX axis is the batch; named (dynamic) axes become -1.
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in io.shape[1:])
    return TensorSpec(io.name, io.elem_type, dims, allow_ragged_batch=ragged)


def tokenizer_config(signature: OnnxSignature, max_length: int, batching: DynamicBatching,
                     pad_multiple: int = 0, emit_text: bool = False) -> PythonModelConfig:
    """`emit_text`: also output QUERY_TEXT (for the hybrid ranker's BM25)."""
    ids, mask = (_spec(i) for i in signature.inputs)
    # The tokenizer reads the client's raw BYTES. Triton's Python backend fails a whole execution
    # when one request in it carries malformed string framing, so each request runs alone
    # (preferred batch size 1, no delay): bad bytes fail only their sender; the models after it
    # batch as usual. No queue policy here: on tritonserver 2.51 a queue policy on this
    # one-request-at-a-time batcher stalls it (measured: 254 vs 464 q/s at concurrency 16, p99
    # 143 vs 61 ms); the tokenizer is ~10x faster than the ranker, so overload queues build (and
    # are bounded) in the models after it.
    batching = dataclasses.replace(batching, preferred_batch_sizes=ISOLATED_BATCH_SIZES, max_queue_delay_us=0,
                                   max_queue_size=0, queue_timeout_us=0)
    return PythonModelConfig(
        name="tokenizer",
        inputs=(TensorSpec(QUERY, "object", (1,)),),
        outputs=(ids, mask) + ((QUERY_TEXT_SPEC,) if emit_text else ()),
        max_batch_size=MAX_BATCH_SIZE,
        dynamic_batching=batching,
        parameters=TokenizerParams(max_length, ids.name, mask.name, pad_multiple,
                                   QUERY_TEXT if emit_text else None).to_parameters(),
    )


def embedder_config(signature: OnnxSignature, vocab_size: int, max_length: int, threads: int,
                    batching: DynamicBatching, row_by_row: bool = False) -> PythonModelConfig:
    return PythonModelConfig(
        name="embedder",
        # Queries of different token counts still batch together: the model pads them itself.
        inputs=tuple(_spec(i, ragged=True) for i in signature.inputs),
        outputs=tuple(_spec(o) for o in signature.outputs),
        max_batch_size=MAX_BATCH_SIZE,
        dynamic_batching=batching,
        parameters=EmbedderParams(vocab_size, max_length, threads, row_by_row).to_parameters(),
    )


# The search filters, each optional with one value per request (shopsearch.core.filters).
FILTER_SPECS = (TensorSpec(CATEGORY, "object", (1,), optional=True), TensorSpec(PRICE_MIN, "float32", (1,), optional=True),
                TensorSpec(PRICE_MAX, "float32", (1,), optional=True), TensorSpec(IN_STOCK, "bool", (1,), optional=True))


def ranker_config(query: TensorSpec, n_candidates: int, embedder_id: str, batching: DynamicBatching,
                  hybrid: tuple[int, ...] | None = None, filters: bool = True) -> PythonModelConfig:
    """`hybrid` = (dense candidates, BM25 candidates[, rescore_top]): the ranker also reads the
    query text (the tokenizer's QUERY_TEXT) and re-ranks both candidate sets with the learned
    model (a cascade, rescore_top > 0: its best few re-ordered by the second stage); None: dense
    search only. `filters`: it reads the optional search filters too."""
    inputs: tuple[TensorSpec, ...] = (query,) + ((QUERY_TEXT_SPEC,) if hybrid else ()) + (FILTER_SPECS if filters else ())
    params = RankerParams(query.name, n_candidates, embedder_id)
    if hybrid:
        rescore_top = hybrid[2] if len(hybrid) > 2 and hybrid[2] else None
        params = RankerParams(query.name, n_candidates, embedder_id, HYBRID, n_dense=hybrid[0], n_lexical=hybrid[1],
                              rescore_top=rescore_top)
    return PythonModelConfig(
        name="ranker",
        inputs=inputs,
        outputs=(TensorSpec(CANDIDATE_INDICES, "int64", (n_candidates,)), TensorSpec(CANDIDATE_SCORES, "float32", (n_candidates,))),
        max_batch_size=MAX_BATCH_SIZE,
        dynamic_batching=batching,
        parameters=params.to_parameters(),
    )


def postprocess_config(ranker: PythonModelConfig, top_k: int, batching: DynamicBatching) -> PythonModelConfig:
    return PythonModelConfig(
        name="postprocess",
        inputs=ranker.outputs + (TensorSpec(TOPK, "int32", (1,), optional=True), TensorSpec(COLLAPSE, "bool", (1,), optional=True)),
        # -1: the length is top_k, or TOPK when a request sends it.
        outputs=(TensorSpec(PRODUCT_IDS, "object", (-1,)), TensorSpec(TITLES, "object", (-1,)), TensorSpec(SCORES, "float32", (-1,))),
        max_batch_size=MAX_BATCH_SIZE,
        dynamic_batching=batching,
        parameters=SearchPostprocessParams(top_k, ranker.outputs[0].dims[0]).to_parameters(),
    )


def embedder_gpu_config(signature: OnnxSignature, backend: str, batching: DynamicBatching,
                        profile_batches: tuple[tuple[int, int], ...] = ((1, MAX_BATCH_SIZE),),
                        max_batch_size: int = MAX_BATCH_SIZE):
    """The embedder for NVIDIA's Triton container: a TensorRT engine or ONNX Runtime on the GPU.
    `profile_batches`: the engine's profiles' (min, max) batch, from the profiles it was built with."""
    common = dict(
        name="embedder",
        inputs=tuple(_spec(i) for i in signature.inputs),
        outputs=tuple(_spec(o) for o in signature.outputs),
        max_batch_size=max_batch_size,
        instance_kind="KIND_GPU",
        dynamic_batching=batching,
    )
    if backend == "tensorrt":
        return TensorRTModelConfig(**common, profile_batches=profile_batches)
    if backend == "onnxruntime":
        return OnnxRuntimeModelConfig(**common)
    raise ValueError(f"unknown GPU backend {backend!r}; choose tensorrt or onnxruntime")
