"""Exact resume of an interrupted bi-encoder run, and BM25-mined hard negatives."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from shopsearch.errors import ConfigError
from shopsearch.core.modeling import CHECKPOINT_META, CHECKPOINT_WEIGHTS
from shopsearch.train.biencoder import PairSampler, contrastive_loss, train_biencoder
from shopsearch.train.resume import RESUME_DIR


def _weights(directory):
    return torch.load(directory / CHECKPOINT_WEIGHTS, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def small(tiny_recipe, tiny_dataset):
    # Dropout on: a resumed run must also restore the random state that draws the masks.
    cfg = dataclasses.replace(tiny_recipe.train_config(), steps=8, save_every=3, eval_queries=10, rerank_holdout=0.0)
    return tiny_dataset, cfg


class Killed(Exception):
    """Stands for the process dying mid-run (OOM kill, preemption)."""


def kill_at_step(monkeypatch, step: int) -> None:
    """The run dies when it asks for the batch of `step` (0-based): steps before it are done."""
    calls = {"n": 0}
    batch = PairSampler.batch

    def dying(self, size):
        if calls["n"] == step:
            raise Killed(f"killed at step {step}")
        calls["n"] += 1
        return batch(self, size)

    monkeypatch.setattr(PairSampler, "batch", dying)


@pytest.mark.training
def test_an_interrupted_run_resumes_to_the_same_weights(small, tmp_path, monkeypatch):
    dataset, cfg = small
    whole = train_biencoder(dataset, cfg, tmp_path / "whole", log=lambda m: None)
    with monkeypatch.context() as patch:
        kill_at_step(patch, 5)
        # The same tokenizer (WordPiece training breaks frequency ties differently from run to run).
        with pytest.raises(Killed):
            train_biencoder(dataset, cfg, tmp_path / "resumed", log=lambda m: None,
                            tokenizer_file=tmp_path / "whole" / "tokenizer.json")
    assert (tmp_path / "resumed" / RESUME_DIR / "state.pt").exists()
    # The last saved state is step 3: steps 4 and 5 are redone, as after a crash.
    resumed = train_biencoder(dataset, cfg, tmp_path / "resumed", log=lambda m: None, resume=True)
    assert resumed["resumed_from_step"] == 3 and whole["resumed_from_step"] == 0
    assert resumed["loss_curve"] == whole["loss_curve"]
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    assert not (tmp_path / "resumed" / RESUME_DIR).exists()  # finished runs leave no state behind
    assert json.loads((tmp_path / "resumed" / CHECKPOINT_META).read_text())["dev_metrics"] == whole["dev_metrics"]


@pytest.mark.training
def test_resume_without_a_state_starts_from_step_zero(small, tmp_path):
    dataset, cfg = small
    meta = train_biencoder(dataset, dataclasses.replace(cfg, steps=2), tmp_path / "fresh", log=lambda m: None, resume=True)
    assert meta["resumed_from_step"] == 0 and len(meta["loss_curve"]) == 2


def test_hard_negatives_come_from_bm25_and_are_never_judged_relevant(tiny_dataset):
    sampler = PairSampler(tiny_dataset, seed=0)
    assert sampler.mine_hard_negatives(tiny_dataset, 30) > 0.8 * len(sampler.items)
    relevant = dict(sampler.items)
    for text, pool in list(sampler.negatives.items())[:200]:
        assert pool and not set(pool) & set(relevant[text])


def test_a_hard_negative_raises_the_loss_only_when_it_competes():
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    p = q.clone()
    easy = torch.tensor([[-1.0, 0.0]])
    hard = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1]]), dim=1)
    base = contrastive_loss(q, p, 0.1)
    assert contrastive_loss(q, p, 0.1, easy) == pytest.approx(base.item(), abs=1e-3)
    assert contrastive_loss(q, p, 0.1, hard) > base + 0.1


@pytest.mark.training
def test_training_with_hard_negatives_runs_and_fp16_needs_cuda(small, tmp_path):
    dataset, cfg = small
    meta = train_biencoder(dataset, dataclasses.replace(cfg, steps=3, save_every=0, hard_negatives=30), tmp_path / "hn",
                           log=lambda m: None)
    assert len(meta["loss_curve"]) == 3 and all(0 < v < 20 for v in meta["loss_curve"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="amp_fp16"):
            train_biencoder(dataset, dataclasses.replace(cfg, amp_fp16=True), tmp_path / "fp16", log=lambda m: None)


def test_masking_follows_bert_and_never_touches_padding_or_special_tokens():
    import numpy as np

    from shopsearch.train.mlm import mask_tokens

    rng = np.random.default_rng(0)
    ids = np.tile(np.array([[2, 10, 11, 12, 13, 14, 15, 16, 3, 0, 0]]), (4000, 1))
    attention = (ids != 0).astype(np.int64)
    inputs, labels = mask_tokens(ids, attention, mask_id=4, vocab_size=100, special_ids={0, 1, 2, 3, 4}, rng=rng)
    chosen = labels != -100
    assert not chosen[:, [0, 8, 9, 10]].any()  # [CLS], [SEP], padding
    assert 0.13 < chosen[:, 1:8].mean() < 0.17
    assert 0.75 < (inputs[chosen] == 4).mean() < 0.85
    assert (labels[chosen] == ids[chosen]).all()


@pytest.mark.training
def test_mlm_pretraining_learns_the_catalog_and_hands_its_transformer_to_the_bi_encoder(small, tmp_path):
    from shopsearch.core.modeling import BiEncoder, EncoderConfig
    from shopsearch.train.mlm import pretrain_mlm
    from shopsearch.core.tokenization import TextEncoder, train_wordpiece

    dataset, cfg = small
    texts = [p.search_text() for p in dataset.products]
    tokenizer = train_wordpiece(texts, vocab_size=800)
    model = BiEncoder(EncoderConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_layers=1, num_heads=2,
                                    intermediate_size=64, max_query_length=16, max_product_length=24, max_positions=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = pretrain_mlm(model, TextEncoder(tokenizer, 24), texts, steps=200, batch_size=32, learning_rate=3e-3, seed=0,
                          log=lambda m: None)
    assert np.mean(losses[-20:]) < 0.85 * np.mean(losses[:20])  # well below where it started
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # the bi-encoder's weights moved
    meta = train_biencoder(dataset, dataclasses.replace(cfg, steps=2, save_every=0, mlm_steps=5, mlm_batch_size=8),
                           tmp_path / "mlm", log=lambda m: None)
    assert len(meta["mlm_loss_curve"]) == 5 and len(meta["loss_curve"]) == 2
