"""The served models' logic, in-process against a built repository (no server)."""

import json

import numpy as np
import pytest

from shopsearch.errors import InvalidInputError
from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.serving.registry import load_step
from shopsearch.triton.model_config import parameters_of
from shopsearch.triton.repository import read_config, read_version_params


@pytest.fixture(scope="module")
def pipeline(unit_repo):
    return InProcessEnsemble.from_repository(unit_repo)


@pytest.fixture(scope="module")
def steps(unit_repo):
    def load(model):
        params = {**parameters_of(read_config(unit_repo / model)), **read_version_params(unit_repo / model / "1")}
        return load_step(model, model, unit_repo / model / "1", params)

    return {model: load(model) for model in ("tokenizer", "embedder", "ranker", "postprocess")}


@pytest.mark.training
def test_pipeline_of_a_trained_model_returns_ten_products_of_the_searched_type(built_repo, tiny_dataset):
    hits = InProcessEnsemble.from_repository(built_repo).search(["blue tent", "frying pan"])
    assert [len(h) for h in hits] == [10, 10]
    types = {p.product_id: p.product_type for p in tiny_dataset.products}
    assert sum(types[h.product_id] == "tent" for h in hits[0]) >= 5
    assert sum(types[h.product_id] == "frying pan" for h in hits[1]) >= 5
    scores = [h.score for h in hits[0]]
    assert scores == sorted(scores, reverse=True)


def test_pipeline_honours_topk_up_to_the_candidate_count(pipeline):
    assert len(pipeline.search(["tent"], top_k=57)[0]) == 57
    with pytest.raises(InvalidInputError, match=r"postprocess: TOPK: must be between 1 and 100"):
        pipeline.search(["tent"], top_k=101)


def test_pipeline_is_deterministic_and_independent_of_batch_neighbours(pipeline):
    alone = pipeline.search(["grey couch"])[0]
    batched = pipeline.search(["grey couch", "stainless steel 12 inch frying pan with lid " * 3])[0]
    assert [h.product_id for h in alone] == [h.product_id for h in batched]
    np.testing.assert_allclose([h.score for h in alone], [h.score for h in batched], atol=1e-5)


def test_tokenizer_step_fails_only_the_bad_request_in_a_batch(steps):
    good = {"QUERY": np.array([[b"tent"]], dtype=object)}
    empty = {"QUERY": np.array([[b"   "]], dtype=object)}
    outcomes = steps["tokenizer"].run([good, empty, good])
    assert isinstance(outcomes[1], InvalidInputError) and "QUERY[0]" in str(outcomes[1])
    assert not isinstance(outcomes[0], Exception) and not isinstance(outcomes[2], Exception)


def test_embedder_step_pads_ragged_requests_and_rejects_out_of_range_ids(steps):
    embedder = steps["embedder"]
    short = {"input_ids": np.array([[2, 10, 3]]), "attention_mask": np.array([[1, 1, 1]])}
    long = {"input_ids": np.array([[2, 10, 11, 12, 13, 3], [2, 10, 3, 0, 0, 0]]), "attention_mask": np.array([[1] * 6, [1, 1, 1, 0, 0, 0]])}
    bad = {"input_ids": np.array([[2, 10 ** 6, 3]]), "attention_mask": np.array([[1, 1, 1]])}
    out = embedder.run([short, long, bad])
    assert out[0]["embedding"].shape[0] == 1 and out[1]["embedding"].shape[0] == 2
    # The same query padded differently gives the same vector.
    np.testing.assert_allclose(out[0]["embedding"][0], out[1]["embedding"][1], atol=1e-5)
    assert isinstance(out[2], InvalidInputError) and "token ids must lie in" in str(out[2])


def test_ranker_step_rejects_vectors_of_the_wrong_width(steps):
    out = steps["ranker"].run([{"embedding": np.ones((1, 3), dtype=np.float32)}])
    assert isinstance(out[0], InvalidInputError) and "ranker: embedding" in str(out[0])


def test_served_repository_refuses_an_index_from_another_embedder(unit_repo, tmp_path):
    import shutil

    from shopsearch.errors import ArtifactError

    copy = tmp_path / "repo"
    shutil.copytree(unit_repo, copy)
    # The embedder a ranker version expects travels in that version's params.json.
    params_file = copy / "ranker" / "1" / "params.json"
    params = json.loads(params_file.read_text())
    assert params["embedder_id"] == parameters_of(read_config(copy / "ranker"))["embedder_id"]
    params_file.write_text(json.dumps({**params, "embedder_id": "0000000000000000"}))
    with pytest.raises(ArtifactError, match="rebuild the index"):
        InProcessEnsemble.from_repository(copy)
