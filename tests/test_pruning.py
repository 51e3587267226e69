"""Structured pruning: a pruned model keeps exactly the listed layers, heads and units; pruned
checkpoints round-trip and export; importance and layer choice are measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shopsearch.compress.pruning import choose_layers, keep_layers, most_important, prune_units, unit_importance
from shopsearch.core.modeling import BiEncoder, EncoderConfig, encoder_flops, load_checkpoint, parameter_count, save_checkpoint
from shopsearch.errors import ConfigError
from shopsearch.train.biencoder import contrastive_loss

CONFIG = EncoderConfig(vocab_size=50, hidden_size=32, num_layers=4, num_heads=4, intermediate_size=64,
                       max_query_length=8, max_product_length=8, max_positions=16, dropout=0.0)
IDS = torch.tensor([[2, 7, 9, 11, 3, 0], [2, 8, 3, 0, 0, 0], [2, 12, 13, 14, 15, 3]])
MASK = (IDS != 0).long()


@pytest.fixture
def model() -> BiEncoder:
    torch.manual_seed(0)
    return BiEncoder(CONFIG).eval()


def test_keeping_layers_keeps_exactly_those_layers_in_that_order(model):
    student = keep_layers(model, [0, 2]).eval()
    assert student.config.num_layers == 2 and len(student.bert.encoder.layer) == 2
    for target, source in zip(student.bert.encoder.layer, [model.bert.encoder.layer[0], model.bert.encoder.layer[2]]):
        for (name, a), b in zip(target.state_dict().items(), source.state_dict().values()):
            assert torch.equal(a, b), name
    # Keeping every layer changes nothing.
    np.testing.assert_allclose(keep_layers(model, [0, 1, 2, 3]).eval()(IDS, MASK).detach(), model(IDS, MASK).detach(), atol=1e-6)
    with pytest.raises(ConfigError, match="distinct layers"):
        keep_layers(model, [1, 1])


def test_pruned_heads_and_units_equal_gating_them_off_in_the_full_model(model):
    heads, units = {0: [1, 3], 1: [0, 1, 2], 2: [2], 3: [0, 1, 2, 3]}, {0: list(range(0, 64, 2)), 2: [5, 6, 7]}
    pruned = prune_units(model, heads, units).eval()
    assert pruned.config.layer_heads == (2, 3, 1, 4) and pruned.config.layer_ffn == (32, 64, 3, 64)
    d = CONFIG.head_size
    gated = BiEncoder(CONFIG).eval()
    gated.load_state_dict(model.state_dict())
    with torch.no_grad():
        for i, layer in enumerate(gated.bert.encoder.layer):  # zero what was pruned: its output no longer counts
            dropped_heads = [h for h in range(CONFIG.num_heads) if h not in heads.get(i, range(CONFIG.num_heads))]
            for h in dropped_heads:
                layer.attention.output.dense.weight[:, h * d : (h + 1) * d] = 0
            dropped_units = [u for u in range(CONFIG.intermediate_size) if u not in units.get(i, range(CONFIG.intermediate_size))]
            layer.output.dense.weight[:, dropped_units] = 0
    np.testing.assert_allclose(pruned(IDS, MASK).detach(), gated(IDS, MASK).detach(), atol=1e-5)
    assert parameter_count(pruned) < parameter_count(model)


@pytest.mark.parametrize("tokens", [1, 6, 8])
def test_flops_per_query_follow_the_pruned_shape_as_torch_counts_them(model, tokens):
    from torch.utils.flop_counter import FlopCounterMode

    pruned = prune_units(keep_layers(model, [0, 1, 3]), {0: [1, 3], 1: [0, 1, 2], 2: [2]}, {0: list(range(0, 64, 2))}).eval()
    for candidate in (model, pruned):
        ids = torch.full((1, tokens), 7)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            candidate(ids, torch.ones_like(ids))
        assert encoder_flops(candidate.config, tokens) == counter.get_total_flops()
    assert encoder_flops(pruned.config, tokens) < encoder_flops(model.config, tokens)


def test_a_pruned_checkpoint_round_trips_and_exports_with_the_same_numbers(model, tmp_path):
    from shopsearch.core.embedding import OnnxEmbedder
    from shopsearch.core.tokenization import EncodedBatch
    from shopsearch.export.onnx import export_onnx

    pruned = prune_units(keep_layers(model, [1, 3]), {0: [0, 2], 1: [1, 2, 3]}, {0: list(range(40)), 1: list(range(20))}).eval()
    save_checkpoint(pruned, "{}", tmp_path / "ck", {"dataset": {}})
    loaded, _ = load_checkpoint(tmp_path / "ck")
    assert loaded.config == pruned.config
    np.testing.assert_allclose(loaded(IDS, MASK).detach(), pruned(IDS, MASK).detach(), atol=1e-6)
    onnx_path = export_onnx(loaded, tmp_path / "pruned.onnx")
    got = OnnxEmbedder(onnx_path).embed(EncodedBatch(IDS.numpy(), MASK.numpy()))
    np.testing.assert_allclose(got, pruned(IDS, MASK).detach().numpy(), atol=1e-5)


def test_importance_ranks_a_head_that_matters_above_one_that_does_not(model):
    with torch.no_grad():  # head 3 of layer 0 writes nothing: it cannot matter
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 3 * CONFIG.head_size :] = 0
    batches = [(IDS, MASK, 1), (IDS.flip(0), MASK.flip(0), 1)]
    heads, units = unit_importance(model, batches, lambda v, n: contrastive_loss(v[:2], v[1:], 0.05))
    assert [len(h) for h in heads] == [4] * 4 and [len(u) for u in units] == [64] * 4
    assert heads[0][3] == 0 and heads[0][:3].max() > 0
    assert 3 not in most_important(heads, 3)[0]
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_layer_choice_drops_the_layers_that_cost_the_least():
    # A score that loses 0.1 for layer 1 and 0.01 for any other layer removed.
    score = lambda kept: 1.0 - sum(0.01 if i != 1 else 0.1 for i in range(4) if i not in kept)  # noqa: E731
    kept, trials = choose_layers(4, 2, score, log=lambda m: None)
    assert 1 in kept and len(kept) == 2 and kept == sorted(kept)
    assert len(trials) == 1 + 4 + 3
