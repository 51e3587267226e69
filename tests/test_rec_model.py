"""The sequential recommender: causal, padding-safe, cold-start aware, learns, and exports with proof."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from shopsearch.errors import ExportParityError
from shopsearch.evaluation.rec_baselines import Popularity
from shopsearch.data.interactions import Interactions
from shopsearch.evaluation.recs import ModelScorer, evaluate_scorer
from shopsearch.export.user_encoder import check_user_encoder, export_user_encoder
from shopsearch.core.recommender import RecConfig, SequentialRecommender, load_recommender, pack
from shopsearch.train.recommender import RecTrainConfig, train_recommender


def model_with_text(n=20, text_dim=8, trained=None):
    torch.manual_seed(0)
    text = np.random.default_rng(0).normal(size=(n, text_dim)).astype(np.float32)
    return SequentialRecommender(RecConfig(n_items=n, text_dim=text_dim, hidden_size=16, max_length=6), text, trained).eval()


def test_a_position_reads_only_earlier_items():
    model = model_with_text()
    a = torch.tensor([[1, 2, 3, 4, 5, 6]])
    b = torch.tensor([[1, 2, 3, 9, 9, 9]])
    with torch.no_grad():
        ha, hb = model.encode(a), model.encode(b)
    assert torch.allclose(ha[:, :3], hb[:, :3], atol=1e-6)
    assert not torch.allclose(ha[:, 3:], hb[:, 3:])


def test_left_padding_does_not_change_the_user_vector():
    model = model_with_text()
    pad = model.config.padding_item
    with torch.no_grad():
        short = model(torch.tensor([[3, 4]]))
        padded = model(torch.tensor([[pad, pad, pad, pad, 3, 4]]))
        empty = model(torch.tensor([[pad] * 6]))
    assert torch.allclose(short, padded, atol=1e-5)
    assert torch.isfinite(empty).all()  # a history with no known item still gives a number


def test_items_never_trained_keep_only_their_title_vector():
    trained = np.ones(20, dtype=bool)
    trained[7] = False
    model = model_with_text(trained=trained)
    vectors = model.catalog_vectors()
    text_only = model.text_projection(model.title_vectors[7]).detach().numpy()
    assert np.allclose(vectors[7], text_only, atol=1e-6)
    assert not np.allclose(vectors[6], model.text_projection(model.title_vectors[6]).detach().numpy())


def patterned(n_items=40, users=600, seed=0) -> Interactions:
    """Each user walks the catalog in steps of +1: the next item is predictable from the last."""
    rng = np.random.default_rng(seed)
    histories, targets = [], []
    for _ in range(users):
        start, length = int(rng.integers(n_items)), int(rng.integers(3, 9))
        seq = [(start + k) % n_items for k in range(length + 1)]
        histories.append(seq[:-1])
        targets.append(seq[-1])
    return Interactions("patterned", [f"i{i}" for i in range(n_items)], [""] * n_items, histories, targets)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = patterned()
    cfg = RecTrainConfig(hidden_size=32, max_length=8, epochs=12, negatives=10_000, learning_rate=5e-3, batch_size=64)
    model, card = train_recommender(data, cfg, None, log=lambda m: None)
    return data, model, card


@pytest.mark.training
def test_training_learns_what_popularity_cannot(trained):
    data, model, card = trained
    assert card["loss_curve"][-1] < card["loss_curve"][0]
    ours = evaluate_scorer(ModelScorer(model), data.histories, data.targets, data.item_ids)
    popular = evaluate_scorer(Popularity.fit(data), data.histories, data.targets, data.item_ids)
    assert ours["hr@10"] > 0.9 > popular["hr@10"] * 2


@pytest.mark.training
def test_sampled_softmax_training_runs_with_mixed_precision():
    data = patterned(users=100)
    cfg = RecTrainConfig(hidden_size=16, max_length=8, epochs=1, negatives=8, mixed_precision=True, batch_size=32)
    model, card = train_recommender(data, cfg, None, log=lambda m: None)
    assert np.isfinite(card["loss_curve"][0]) and card["device"] in ("cpu", "cuda")


def test_export_matches_pytorch_and_a_drifted_graph_fails_the_gate(tmp_path):
    data = patterned()
    torch.manual_seed(0)
    model = SequentialRecommender(RecConfig(n_items=data.n_items, hidden_size=32, max_length=8)).eval()
    path = export_user_encoder(model, tmp_path / "model.onnx")
    numbers = check_user_encoder(model, path, data.histories, model.catalog_vectors())
    assert numbers["max_abs_diff"] < 1e-4 and numbers["top10_overlap"] == 1.0
    graph = onnx.load(str(path))
    for init in graph.graph.initializer:  # shift the norms' outputs: the graph no longer matches the model
        if ".norm" in init.name and init.name.endswith(".bias"):
            values = onnx.numpy_helper.to_array(init) + 0.5
            init.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), init.name))
    onnx.save(graph, str(tmp_path / "drifted.onnx"))
    with pytest.raises(ExportParityError, match="max_abs_diff"):
        check_user_encoder(model, tmp_path / "drifted.onnx", data.histories, model.catalog_vectors())


@pytest.mark.training
def test_checkpoint_round_trip_carries_config_and_buffers(tiny_rec_checkpoint, tiny_interactions):
    model, card = load_recommender(tiny_rec_checkpoint)
    assert model.config.n_items == tiny_interactions.n_items and model.config.text_dim > 0
    assert card["dataset"]["fingerprint"] == tiny_interactions.fingerprint()
    assert card["title_vectors"]["items_with_titles"] == tiny_interactions.n_items
    rows = torch.from_numpy(pack(tiny_interactions.histories[:4], model.config.padding_item, model.config.max_length))
    with torch.no_grad():
        assert torch.isfinite(model(rows)).all()
