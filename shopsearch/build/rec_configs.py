"""Typed configs of the recommendation models, derived from the exported user encoder."""

from __future__ import annotations

import dataclasses

from shopsearch.build.search_configs import ISOLATED_BATCH_SIZES, MAX_BATCH_SIZE, _spec, postprocess_config, ranker_config
from shopsearch.export.onnx import OnnxSignature
from shopsearch.serving.rec_steps import ItemEmbeddingParams, ItemLookupParams, UserEncoderParams
from shopsearch.serving.steps import PostprocessParams
from shopsearch.serving.tensors import EXCLUDE, HISTORY, KNOWN_ITEMS, SEEN_ITEMS, STRATEGY, TOPK, UNKNOWN_IDS
from shopsearch.triton.model_config import DynamicBatching, OnnxRuntimeModelConfig, PythonModelConfig, TensorRTModelConfig, TensorSpec


def item_lookup_config(encoder: OnnxSignature, max_seen: int, batching: DynamicBatching) -> PythonModelConfig:
    """Reads the client's BYTES ids: like the tokenizer, one request per execution, so malformed
    string framing fails only its sender (Triton's Python backend fails a whole execution)."""
    items = _spec(encoder.inputs[0])
    batching = dataclasses.replace(batching, preferred_batch_sizes=ISOLATED_BATCH_SIZES, max_queue_delay_us=0,
                                   max_queue_size=0, queue_timeout_us=0)
    return PythonModelConfig(
        name="item_lookup",
        inputs=(TensorSpec(HISTORY, "object", (-1,)), TensorSpec(EXCLUDE, "object", (-1,), optional=True)),
        outputs=(items, TensorSpec(SEEN_ITEMS, "int64", (max_seen,)), TensorSpec(KNOWN_ITEMS, "int32", (1,)),
                 TensorSpec(UNKNOWN_IDS, "object", (-1,))),
        max_batch_size=MAX_BATCH_SIZE,
        dynamic_batching=batching,
        parameters=ItemLookupParams(items.name, items.dims[0], max_seen).to_parameters(),
    )


def user_encoder_config(encoder: OnnxSignature, n_items: int, threads: int, batching: DynamicBatching) -> PythonModelConfig:
    return PythonModelConfig(
        name="user_encoder",
        inputs=tuple(_spec(i) for i in encoder.inputs),
        outputs=tuple(_spec(o) for o in encoder.outputs),
        max_batch_size=MAX_BATCH_SIZE,
        dynamic_batching=batching,
        parameters=UserEncoderParams(n_items, threads).to_parameters(),
    )


def user_encoder_gpu_config(encoder: OnnxSignature, batching: DynamicBatching, backend: str = "onnxruntime",
                            profile_batches: tuple[tuple[int, int], ...] = ((1, MAX_BATCH_SIZE),)):
    """The user encoder for NVIDIA's Triton container: a TensorRT engine or ONNX Runtime on the GPU."""
    common = dict(name="user_encoder", inputs=tuple(_spec(i) for i in encoder.inputs),
                  outputs=tuple(_spec(o) for o in encoder.outputs), max_batch_size=MAX_BATCH_SIZE,
                  instance_kind="KIND_GPU", dynamic_batching=batching)
    if backend == "tensorrt":
        return TensorRTModelConfig(**common, profile_batches=profile_batches)
    return OnnxRuntimeModelConfig(**common)


def item_embedding_config(encoder: OnnxSignature, batching: DynamicBatching) -> PythonModelConfig:
    """Same input and output tensors as the user encoder: similar_items swaps one for the other."""
    items, vector = _spec(encoder.inputs[0]), _spec(encoder.outputs[0])
    return PythonModelConfig(
        name="item_embedding", inputs=(items,), outputs=(vector,), max_batch_size=MAX_BATCH_SIZE, dynamic_batching=batching,
        parameters=ItemEmbeddingParams(items.name, vector.name, items.dims[0]).to_parameters(),
    )


def rec_ranker_config(encoder: OnnxSignature, n_candidates: int, encoder_id: str, batching: DynamicBatching) -> PythonModelConfig:
    """The search ranker's machinery (exact inner product over an index) over the item table."""
    return dataclasses.replace(ranker_config(_spec(encoder.outputs[0]), n_candidates, encoder_id, batching, filters=False),
                               name="rec_ranker")


def rec_postprocess_config(ranker: PythonModelConfig, lookup: PythonModelConfig, top_k: int, max_k: int,
                           batching: DynamicBatching) -> PythonModelConfig:
    search_post = postprocess_config(ranker, top_k, batching)
    seen, known = (next(o for o in lookup.outputs if o.name == n) for n in (SEEN_ITEMS, KNOWN_ITEMS))
    return dataclasses.replace(
        search_post,
        name="rec_postprocess",
        inputs=ranker.outputs + (seen, known, TensorSpec(TOPK, "int32", (1,), optional=True)),
        outputs=search_post.outputs + (TensorSpec(STRATEGY, "object", (1,)),),
        parameters=PostprocessParams(top_k, max_k).to_parameters(),
    )
