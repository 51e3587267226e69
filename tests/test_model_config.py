"""Generated configs against committed golden files, plus generate -> parse round trips."""

import dataclasses
from pathlib import Path

import pytest
from google.protobuf import text_format

from shopsearch.errors import ConfigError
from shopsearch.export.tensorrt import profiles_for
from shopsearch.export.onnx import OnnxSignature, TensorIO
from shopsearch.triton.ensemble import EnsembleDeclaration, load_declaration, wire_ensemble
from shopsearch.triton.model_config import DynamicBatching, PythonModelConfig, TensorSpec, parameters_of, render_config
from shopsearch.triton.repository import read_config, write_config
from shopsearch.build.search_configs import (
    embedder_config, embedder_gpu_config, postprocess_config, ranker_config, tokenizer_config,
)

GOLDEN = Path(__file__).parent / "golden"
SIGNATURE = OnnxSignature(
    inputs=(TensorIO("input_ids", "int64", ("batch", "sequence")), TensorIO("attention_mask", "int64", ("batch", "sequence"))),
    outputs=(TensorIO("embedding", "float32", ("batch", 256)),),
)
BATCHING = DynamicBatching(max_queue_delay_us=1000)


def search_models():
    tok = tokenizer_config(SIGNATURE, 32, BATCHING)
    emb = embedder_config(SIGNATURE, 8000, 48, 1, BATCHING)
    rank = ranker_config(emb.outputs[0], 100, "0123456789abcdef", BATCHING)
    post = postprocess_config(rank, 10, BATCHING)
    return {m.name: m for m in (tok, emb, rank, post)}


def gpu_models(backend):
    gpu_batching = DynamicBatching(preferred_batch_sizes=(8, 32), max_queue_delay_us=1000)
    models = search_models()
    models["tokenizer"] = tokenizer_config(SIGNATURE, 32, BATCHING, pad_multiple=8)
    if backend == "tensorrt":  # the engine's two profiles as the build makes them
        stats = {"p50": 6, "p95": 13, "p99": 17, "max": 30, "queries": 100}
        profiles = profiles_for(stats, max_length=48, max_batch=256, pad_multiple=8)
        models["embedder"] = embedder_gpu_config(SIGNATURE, backend, gpu_batching,
                                                 tuple((p.batch[0], p.batch[2]) for p in profiles))
    else:
        models["embedder"] = embedder_gpu_config(SIGNATURE, backend, gpu_batching)
    return models


REC_SIGNATURE = OnnxSignature(inputs=(TensorIO("item_rows", "int64", ("batch", 50)),),
                              outputs=(TensorIO("user_vector", "float32", ("batch", 64)),))


def rec_models():
    from shopsearch.build.rec_configs import (
        item_embedding_config, item_lookup_config, rec_postprocess_config, rec_ranker_config, user_encoder_config,
    )

    lookup = item_lookup_config(REC_SIGNATURE, 256, BATCHING)
    ranker = rec_ranker_config(REC_SIGNATURE, 356, "0123456789abcdef", BATCHING)
    models = (lookup, user_encoder_config(REC_SIGNATURE, 16859, 1, BATCHING), item_embedding_config(REC_SIGNATURE, BATCHING),
              ranker, rec_postprocess_config(ranker, lookup, 10, 100, BATCHING))
    return {m.name: m for m in models}


def all_configs():
    """Every config a build can emit: the CPU target, and the GPU target with either backend."""
    models = search_models()
    # The search ensemble as the build ships it: its whole answers in Triton's response cache.
    configs = {**models, "search": dataclasses.replace(wire_ensemble(load_declaration("search"), models), response_cache=True)}
    for backend in ("tensorrt", "onnxruntime"):
        gpu = gpu_models(backend)
        configs[f"gpu_{backend}/embedder"] = gpu["embedder"]
        configs[f"gpu_{backend}/search"] = wire_ensemble(load_declaration("search"), gpu)
    configs["gpu_tensorrt/tokenizer"] = gpu_models("tensorrt")["tokenizer"]
    hybrid = dict(models, ranker=ranker_config(models["embedder"].outputs[0], 100, "0123456789abcdef", BATCHING, (100, 100)),
                  tokenizer=tokenizer_config(SIGNATURE, 32, BATCHING, emit_text=True))
    configs["hybrid/ranker"] = hybrid["ranker"]
    configs["hybrid/tokenizer"] = hybrid["tokenizer"]
    configs["hybrid/search"] = wire_ensemble(load_declaration("search"), hybrid)
    recs = rec_models()
    configs.update({f"recs/{name}": config for name, config in recs.items()})
    for ensemble in ("recommend", "similar_items"):
        configs[f"recs/{ensemble}"] = wire_ensemble(load_declaration(ensemble), recs)
    return configs


GOLDEN_NAMES = ["tokenizer", "embedder", "ranker", "postprocess", "search", "gpu_tensorrt/embedder",
                "gpu_tensorrt/tokenizer", "gpu_tensorrt/search", "gpu_onnxruntime/embedder", "gpu_onnxruntime/search",
                "hybrid/ranker", "hybrid/tokenizer", "hybrid/search", "recs/item_lookup", "recs/user_encoder",
                "recs/item_embedding", "recs/rec_ranker", "recs/rec_postprocess", "recs/recommend", "recs/similar_items"]


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_generated_config_matches_its_golden_file(name):
    rendered = render_config(all_configs()[name])
    assert rendered == (GOLDEN / f"{name}.pbtxt").read_text(), "regenerate with: python tests/golden/regenerate.py"


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_written_config_parses_back_to_the_same_message(name, tmp_path):
    config = all_configs()[name]
    write_config(config, tmp_path / name)
    assert read_config(tmp_path / name) == config.to_proto()


def test_ensemble_tensor_names_come_from_the_exported_model():
    renamed = OnnxSignature(
        inputs=(TensorIO("ids", "int64", ("b", "s")), TensorIO("mask", "int64", ("b", "s"))),
        outputs=(TensorIO("query_vector", "float32", ("b", 64)),),
    )
    tok = tokenizer_config(renamed, 32, BATCHING)
    emb = embedder_config(renamed, 100, 48, 1, BATCHING)
    rank = ranker_config(emb.outputs[0], 50, "x", BATCHING)
    post = postprocess_config(rank, 10, BATCHING)
    ensemble = wire_ensemble(load_declaration("search"), {m.name: m for m in (tok, emb, rank, post)})
    steps = {s.model_name: s for s in ensemble.steps}
    assert dict(steps["tokenizer"].output_map) == {"ids": "ids", "mask": "mask"}
    # The embedder's output by its exported name, and the request's filters straight from the ensemble's inputs.
    assert dict(steps["ranker"].input_map) == {"query_vector": "query_vector", "CATEGORY": "CATEGORY", "PRICE_MIN": "PRICE_MIN",
                                               "PRICE_MAX": "PRICE_MAX", "IN_STOCK": "IN_STOCK"}
    assert parameters_of(tok.to_proto())["ids_output"] == "ids"


def test_wiring_fails_naming_the_step_and_tensor_when_nothing_produces_an_input():
    models = search_models()
    models["ranker"] = ranker_config(TensorSpec("other_vector", "float32", (256,)), 100, "x", BATCHING)
    with pytest.raises(ConfigError, match=r"search: ranker.other_vector: no earlier step produces it"):
        wire_ensemble(load_declaration("search"), models)


def test_wiring_fails_when_a_declared_output_is_not_produced():
    decl = EnsembleDeclaration("search", ("tokenizer", "embedder", "ranker", "postprocess"), ("QUERY",), ("PRICES",), 256)
    with pytest.raises(ConfigError, match=r"search: outputs: \['PRICES'\]"):
        wire_ensemble(decl, search_models())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"instance_count": 0}, "instance_group.count"),
        ({"max_batch_size": 0}, "dynamic_batching"),
        ({"dynamic_batching": DynamicBatching(preferred_batch_sizes=(512,))}, "dynamic_batching.preferred_batch_size"),
        ({"inputs": (TensorSpec("x", "float32", (0,)),)}, "x.dims"),
        ({"inputs": (TensorSpec("x", "complex64", (1,)),)}, "data_type"),
    ],
)
def test_python_model_config_rejects_invalid_fields_naming_model_and_field(kwargs, field):
    base = dict(name="m", inputs=(TensorSpec("x", "float32", (4,)),), outputs=(TensorSpec("y", "float32", (4,)),))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        PythonModelConfig(**{**base, **kwargs})


def test_config_with_max_batch_size_zero_keeps_the_field_explicit():
    config = PythonModelConfig("m", (TensorSpec("x", "float32", (4,)),), (TensorSpec("y", "float32", (4,)),),
                               max_batch_size=0, dynamic_batching=None)
    message = text_format.Parse(render_config(config), type(config.to_proto())())
    assert message.max_batch_size == 0 and not message.HasField("dynamic_batching")


def test_gpu_embedder_configs_use_native_platforms_on_gpu_instances():
    trt = gpu_models("tensorrt")["embedder"].to_proto()
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "model.plan"
    # One group listing every profile: each instance picks the profile that takes a batch's shapes.
    assert [(g.kind, list(g.profile)) for g in trt.instance_group] == [(pb_kind("KIND_GPU"), ["0", "1"])]
    assert list(trt.dynamic_batching.preferred_batch_size) == [8, 32]
    assert not any(i.allow_ragged_batch for i in trt.input)  # the tokenizer pads instead
    ort = gpu_models("onnxruntime")["embedder"].to_proto()
    assert ort.platform == "onnxruntime_onnx" and ort.instance_group[0].kind == pb_kind("KIND_GPU")


def pb_kind(name):
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelInstanceGroup.Kind.Value(name)


def test_tensorrt_config_refuses_cpu_instances():
    from shopsearch.triton.model_config import TensorRTModelConfig

    with pytest.raises(ConfigError, match="embedder: instance_group.kind: a TensorRT engine runs on KIND_GPU only"):
        TensorRTModelConfig("embedder", (TensorSpec("x", "int64", (-1,)),), (TensorSpec("y", "float32", (4,)),))
