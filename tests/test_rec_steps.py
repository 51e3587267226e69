"""The recommendation steps in-process (no server): lookup, fallbacks, filters, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from shopsearch.errors import ConfigError, InvalidInputError
from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.core.results import CatalogLookup
from shopsearch.triton.ensemble import EnsembleDeclaration, load_declaration, wire_ensemble
from shopsearch.triton.repository import read_config
from shopsearch.core.results import id_rows
from shopsearch.serving.rec_steps import ItemLookupStep, RecPostprocessStep
from shopsearch.serving.tensors import (
    CANDIDATE_INDICES, CANDIDATE_SCORES, EXCLUDE, HISTORY, KNOWN_ITEMS, PRODUCT_IDS, SEEN_ITEMS, UNKNOWN_IDS,
)


def lookup(window=4, max_seen=6) -> ItemLookupStep:
    return ItemLookupStep([f"p{i}" for i in range(10)], "item_rows", window, max_seen)


def test_lookup_keeps_the_newest_known_items_and_reports_unknown_ids():
    out = lookup().run([{HISTORY: id_rows([["p1", "zz", "p2", "p3", "p4", "p5", "p6"], [], ["p9", ""]])}])[0]
    assert out["item_rows"].tolist() == [[3, 4, 5, 6], [10, 10, 10, 10], [10, 10, 10, 9]]
    assert out[KNOWN_ITEMS].ravel().tolist() == [6, 0, 1]
    assert [u for u in out[UNKNOWN_IDS][0] if u] == [b"zz"]
    assert set(out[SEEN_ITEMS][0]) - {-1} == {1, 2, 3, 4, 5, 6}


def test_exclude_is_left_out_before_history_when_the_seen_set_is_full():
    out = lookup(max_seen=3).run([{HISTORY: id_rows([["p1", "p2", "p3", "p4"]]), EXCLUDE: id_rows([["p8"]])}])[0]
    assert out[SEEN_ITEMS][0].tolist() == [8, 4, 3]


def test_bad_shapes_and_too_many_ids_are_refused_per_request():
    step = lookup()
    good = {HISTORY: id_rows([["p1"]])}
    flat = {HISTORY: np.array([b"p1"], dtype=object)}
    huge = {HISTORY: np.full((1, 10_001), b"p1", dtype=object)}
    mismatched = {HISTORY: id_rows([["p1"], ["p2"]]), EXCLUDE: id_rows([["p3"]])}
    outcomes = step.run([good, flat, huge, mismatched])
    assert isinstance(outcomes[0], dict)
    assert all(isinstance(o, InvalidInputError) for o in outcomes[1:])
    assert "HISTORY" in str(outcomes[1]) and "limit" in str(outcomes[2]) and "EXCLUDE" in str(outcomes[3])


def postprocess() -> RecPostprocessStep:
    catalog = CatalogLookup([f"p{i}" for i in range(6)], [f"t{i}" for i in range(6)])
    return RecPostprocessStep(catalog, np.array([1, 5, 3, 0, 2, 4]), top_k=3, max_k=5)


def arrays(indices, seen, known, **extra):
    indices = np.array([indices], dtype=np.int64)
    return {CANDIDATE_INDICES: indices, CANDIDATE_SCORES: -np.arange(indices.shape[1], dtype=np.float32)[None, :],
            SEEN_ITEMS: np.array([seen], dtype=np.int64), KNOWN_ITEMS: np.array([[known]], dtype=np.int32), **extra}


def test_postprocess_removes_what_the_shopper_has_and_backfills_by_popularity():
    out = postprocess().run([arrays([0, 1, 2], [1, -1], known=1)])[0]
    assert out[PRODUCT_IDS][0].tolist() == [b"p0", b"p2", b"p5"]  # p1 seen; p5 is the most popular left
    assert out["STRATEGY"][0, 0] == b"model"


def test_no_known_history_answers_from_popularity():
    out = postprocess().run([arrays([0, 1, 2], [-1], known=0)])[0]
    assert out[PRODUCT_IDS][0].tolist() == [b"p1", b"p5", b"p2"]
    assert out["STRATEGY"][0, 0] == b"popularity"


def test_topk_out_of_range_is_a_client_error_naming_the_field():
    bad = postprocess().run([arrays([0, 1], [-1], known=1, TOPK=np.array([[9]], dtype=np.int32))])[0]
    assert isinstance(bad, InvalidInputError) and "TOPK" in str(bad)


def test_similar_items_wires_its_item_ids_input_through_the_alias(unit_repo):
    config = read_config(unit_repo / "similar_items")
    assert [i.name for i in config.input] == ["ITEM_IDS", "TOPK", "EXCLUDE"]
    first = config.ensemble_scheduling.step[0]
    assert first.model_name == "item_lookup" and first.input_map["HISTORY"] == "ITEM_IDS"
    # The encoder's tensor names come from its ONNX graph, not from this test or the declaration.
    encoder = read_config(unit_repo / "user_encoder")
    assert config.ensemble_scheduling.step[1].input_map[encoder.input[0].name] == encoder.input[0].name


def test_a_declaration_naming_an_input_no_step_reads_fails_the_build():
    from shopsearch.export.onnx import OnnxSignature, TensorIO
    from shopsearch.triton.model_config import DynamicBatching
    from shopsearch.build.rec_configs import (
        item_lookup_config, rec_postprocess_config, rec_ranker_config, user_encoder_config,
    )

    signature = OnnxSignature(inputs=(TensorIO("item_rows", "int64", ("batch", 12)),),
                              outputs=(TensorIO("user_vector", "float32", ("batch", 32)),))
    batching = DynamicBatching()
    lookup = item_lookup_config(signature, 256, batching)
    ranker = rec_ranker_config(signature, 300, "encoder-id", batching)
    models = {c.name: c for c in (lookup, user_encoder_config(signature, 100, 1, batching), ranker,
                                  rec_postprocess_config(ranker, lookup, 10, 100, batching))}
    declaration = load_declaration("recommend")
    assert wire_ensemble(declaration, models).steps[1].input_map == (("item_rows", "item_rows"),)
    broken = EnsembleDeclaration(declaration.name, declaration.steps, declaration.inputs + ("SEGMENT",),
                                 declaration.outputs, declaration.max_batch_size)
    with pytest.raises(ConfigError, match="SEGMENT"):
        wire_ensemble(broken, models)


def test_in_process_recommend_handles_unknown_empty_and_long_histories(unit_repo, tiny_interactions):
    pipeline = InProcessEnsemble.from_repository(unit_repo, "recommend")
    ids = tiny_interactions.item_ids
    long_history = [ids[i] for i in range(40)]  # longer than the window (8)
    recs = pipeline.recommend([["nope", ids[3]], [], long_history], top_k=5)
    assert recs[0].unknown_ids == ["nope"] and recs[0].strategy == "model" and len(recs[0].product_ids) == 5
    assert recs[1].strategy == "popularity" and len(recs[1].product_ids) == 5
    assert len(recs[2].product_ids) == 5 and not set(recs[2].product_ids) & set(long_history)
