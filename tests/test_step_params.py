"""Each served step's typed parameters: what the config builder writes is what the step reads back."""

from __future__ import annotations

import pytest

from shopsearch.errors import ArtifactError, ConfigError
from shopsearch.serving.registry import STEP_TYPES, load_step, step_name_of
from shopsearch.serving.rec_steps import ItemEmbeddingParams, ItemLookupParams, UserEncoderParams
from shopsearch.serving.steps import (
    HYBRID, EmbedderParams, PostprocessParams, RankerParams, SearchPostprocessParams, TokenizerParams,
)
from shopsearch.triton.model_config import parameters_of
from shopsearch.triton.repository import read_config, read_version_params

# One instance per step's parameter class, every optional field set once.
EXAMPLES = {
    "tokenizer": [TokenizerParams(32, "input_ids", "attention_mask"), TokenizerParams(32, "ids", "mask", 8, "QUERY_TEXT")],
    "embedder": [EmbedderParams(8000, 64), EmbedderParams(8000, 64, intra_op_threads=3, row_by_row=True)],
    "ranker": [RankerParams("embedding", 100, "0123456789abcdef"),
               RankerParams("embedding", 100, "0123456789abcdef", HYBRID, n_dense=100, n_lexical=150)],
    "postprocess": [SearchPostprocessParams(10, 100), SearchPostprocessParams(10, 100, collapse=False)],
    "item_lookup": [ItemLookupParams("item_rows", 50, 256)],
    "user_encoder": [UserEncoderParams(16859), UserEncoderParams(16859, 2)],
    "item_embedding": [ItemEmbeddingParams("item_rows", "user_vector", 50)],
    "rec_postprocess": [PostprocessParams(10, 100)],
}


def test_every_step_declares_a_parameter_class_with_examples_here():
    assert set(EXAMPLES) == set(STEP_TYPES)
    for name, step in STEP_TYPES.items():
        assert all(type(example) is step.params_type for example in EXAMPLES[name]), name


@pytest.mark.parametrize("step, params", [(s, p) for s, ps in EXAMPLES.items() for p in ps])
def test_parameters_round_trip_through_their_triton_strings(step, params):
    written = dict(params.to_parameters())
    assert all(isinstance(v, str) for v in written.values())
    assert type(params).from_parameters(written, step) == params


def test_optional_parameters_left_out_are_not_written():
    assert dict(RankerParams("embedding", 100, "id").to_parameters()) == {
        "query_input": "embedding", "n_candidates": "100", "embedder_id": "id"}
    assert dict(EmbedderParams(8000, 64).to_parameters())["row_by_row"] == "0"


@pytest.mark.parametrize("model", ["tokenizer", "embedder", "ranker", "postprocess", "item_lookup", "user_encoder",
                                   "item_embedding", "rec_ranker", "rec_postprocess"])
def test_a_built_model_loads_the_parameters_its_config_and_version_carry(unit_repo, model):
    params = {**parameters_of(read_config(unit_repo / model)), **read_version_params(unit_repo / model / "1")}
    typed = STEP_TYPES[step_name_of(model)].params_type.from_parameters(params, model)
    assert dict(typed.to_parameters()) == {k: params[k] for k in dict(typed.to_parameters())}
    assert load_step(step_name_of(model), model, unit_repo / model / "1", params).name == model


def test_a_missing_or_malformed_parameter_names_the_model_and_the_key():
    with pytest.raises(ArtifactError, match="rec_ranker: config.pbtxt parameter 'embedder_id' is missing"):
        RankerParams.from_parameters({"query_input": "v", "n_candidates": "5"}, "rec_ranker")
    with pytest.raises(ArtifactError, match="embedder: config.pbtxt parameter 'vocab_size': 'many' is not an integer"):
        EmbedderParams.from_parameters({"vocab_size": "many", "max_length": "8"}, "embedder")
    with pytest.raises(ArtifactError, match="'row_by_row': 'yes' is not 0 or 1"):
        EmbedderParams.from_parameters({"vocab_size": "9", "max_length": "8", "row_by_row": "yes"}, "embedder")


def test_inconsistent_parameters_are_refused_where_they_are_made():
    with pytest.raises(ConfigError, match="ranker: n_dense/n_lexical"):
        RankerParams("embedding", 100, "id", HYBRID)
    with pytest.raises(ConfigError, match="ranker: mode"):
        RankerParams("embedding", 100, "id", "sparse")
    with pytest.raises(ConfigError, match="tokenizer: text_output"):
        TokenizerParams(32, "ids", "mask", text_output="TEXT")
