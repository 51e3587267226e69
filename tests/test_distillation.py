"""Stage 1b: a cross-encoder teacher trained on the judgments, distilled into the bi-encoder."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from shopsearch.compress.distillation import (
    TEACHER_CARD, TEACHER_DIR, CrossEncoder, DistillConfig, PairEncoder, add_lexical_features, build_groups, distill_stage,
    score_groups, student_loss, train_teacher,
)
from shopsearch.core.hybrid import LEXICAL_FEATURE_NAMES, LexicalScorer
from shopsearch.errors import ConfigError
from shopsearch.core.modeling import CHECKPOINT_META, CHECKPOINT_WEIGHTS, load_checkpoint
from shopsearch.core.reranker import RERANKER_DIR
from shopsearch.core.tokenization import TOKENIZER_FILE

FAST = DistillConfig(teacher_steps=40, teacher_learning_rate=5e-4, teacher_eval_queries=40, student_steps=6)


def _stage1(checkpoint, dataset):
    model, card = load_checkpoint(checkpoint)
    data = dataset.with_holdout(card["train_config"]["rerank_holdout"])
    tokenizer_json = (checkpoint / TOKENIZER_FILE).read_text()
    pairs = PairEncoder(tokenizer_json, FAST.max_query_tokens, model.config.max_product_length, model.config.max_positions)
    text = {p.product_id: p.search_text() for p in data.products}
    return model, data, pairs, text


@pytest.fixture(scope="module")
def stage1(random_checkpoint, tiny_dataset):
    """A stage-1 checkpoint's layout (random weights): enough for groups and pair encoding."""
    return _stage1(random_checkpoint, tiny_dataset)


@pytest.fixture(scope="module")
def trained_stage1(tiny_checkpoint, tiny_dataset):
    return _stage1(tiny_checkpoint, tiny_dataset)


def test_groups_put_a_relevant_product_first_then_only_products_bm25_ranks_high(stage1):
    from shopsearch.lexical.bm25 import Bm25Index

    _, data, _, _ = stage1
    queries, qrels = data.split("train")
    by_text = {queries[q]: qrels[q] for q in qrels}
    groups = build_groups(data, "train", FAST)
    index = Bm25Index(data.products)
    rows, _ = index.search([g.query for g in groups[:300]], FAST.mined_depth)
    for g, row in zip(groups, rows):  # past the first, what a ranker would meet: BM25's top
        assert set(g.product_ids[1:]) <= {index.product_ids[r] for r in row}
    assert len(groups) > 0.9 * len(qrels)
    assert not {g.query for g in groups} & set(data.queries["rerank"].values())  # the re-ranker's queries stay out
    for g in groups[:300]:
        judged = by_text[g.query]
        assert 2 <= len(g.product_ids) <= FAST.group_size and len(set(g.product_ids)) == len(g.product_ids)
        assert judged[g.product_ids[0]] >= data.relevant_min_gain
        for pid, gain in zip(g.product_ids, g.gains):
            assert gain == judged.get(pid, 0)
    assert np.mean([sum(pid not in by_text[g.query] for pid in g.product_ids) >= FAST.mined_per_query for g in groups]) > 0.9


def test_pairs_are_query_then_product_within_the_positions(stage1):
    model, _, pairs, _ = stage1
    ids, mask, types = pairs.encode(["red shoes " * 40, "tv"], ["nike running shoe " * 40, "samsung 55 inch tv"])
    assert ids.shape[1] <= model.config.max_positions
    cls = pairs.query.tokenizer.token_to_id("[CLS]")
    sep = pairs.query.tokenizer.token_to_id("[SEP]")
    for row in range(2):
        n = int(mask[row].sum())
        first_product = int((types[row] == 1).nonzero()[0])
        assert ids[row, 0] == cls and ids[row, first_product - 1] == sep and ids[row, n - 1] == sep
        assert types[row, :first_product].eq(0).all() and types[row, first_product:n].eq(1).all()
    assert int((types[0] == 0).sum()) == FAST.max_query_tokens  # the long query was cut to its budget
    with pytest.raises(ConfigError, match="max_query_tokens"):
        PairEncoder(pairs.query.tokenizer.to_str(), 32, 48, 64)


def test_the_kl_term_is_zero_when_the_student_agrees_and_pulls_it_towards_the_teacher():
    torch.manual_seed(0)
    qv = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    pv = torch.nn.functional.normalize(torch.randn(7, 8), dim=1)
    sizes, temperature = [3, 4], 0.1
    logits = qv @ pv.T / temperature
    agreeing = torch.cat([logits[0, :3], logits[1, 3:]]) + 5.0  # a softmax ignores a shift
    _, kl = student_loss(qv, pv, sizes, agreeing, temperature, 1.0)
    assert kl.item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.tensor([5.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0])
    pv = pv.clone().requires_grad_(True)
    _, kl = student_loss(qv, pv, sizes, teacher, temperature, 1.0)
    kl.backward()
    with torch.no_grad():
        _, after = student_loss(qv, pv - 0.05 * pv.grad, sizes, teacher, temperature, 1.0)
    assert kl.item() > 0.1 and after.item() < kl.item()


def test_the_contrastive_term_ignores_the_rest_of_the_querys_own_group():
    torch.manual_seed(1)
    qv = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    qv[1] = 0.0  # query 1's row is then constant: only query 0's row can move the loss
    pv = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    base, _ = student_loss(qv, pv, [3, 3], None, 0.1, 0.0)
    moved = pv.clone()
    moved[1], moved[2] = qv[0], qv[0]  # query 0's other group members: maybe relevant, never negatives
    same, _ = student_loss(qv, moved, [3, 3], None, 0.1, 0.0)
    assert same.item() == pytest.approx(base.item(), rel=1e-6)
    moved[4] = qv[0]  # another query's product is a negative for query 0
    worse, _ = student_loss(qv, moved, [3, 3], None, 0.1, 0.0)
    assert worse.item() > base.item()


@pytest.mark.training
def test_the_teacher_learns_to_put_relevant_products_above_unjudged_ones(trained_stage1):
    model, data, pairs, text = trained_stage1
    groups = build_groups(data, "train", FAST)
    add_lexical_features(groups, LexicalScorer.build(data.products), {p.product_id: i for i, p in enumerate(data.products)})
    assert groups[0].features.shape == (len(groups[0].product_ids), len(LEXICAL_FEATURE_NAMES))
    probe = [g for g in groups[:200] if (g.gains == 0).any()]

    def separation(teacher):
        score_groups(teacher, pairs, probe, text)
        return np.mean([g.teacher[g.gains > 0].mean() > g.teacher[g.gains == 0].mean() for g in probe])

    teacher, losses = train_teacher(model.bert.state_dict(), model.config, pairs, groups, text, FAST, log=lambda m: None)
    assert len(losses) == FAST.teacher_steps and all(np.isfinite(losses)) and teacher.n_features == len(LEXICAL_FEATURE_NAMES)
    torch.manual_seed(FAST.seed)
    untrained = CrossEncoder(model.config, teacher.n_features)
    untrained.bert.load_state_dict(model.bert.state_dict())
    untrained.feature_mean.copy_(teacher.feature_mean)
    untrained.feature_std.copy_(teacher.feature_std)
    before, after = separation(untrained.eval()), separation(teacher)
    assert after >= before + 0.05, (before, after)


@pytest.mark.training
def test_distill_stage_replaces_the_bi_encoder_and_drops_the_stale_reranker(tiny_checkpoint, tiny_dataset, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    before = torch.load(checkpoint / CHECKPOINT_WEIGHTS, weights_only=True)["state_dict"]
    report = distill_stage(checkpoint, tiny_dataset, FAST, log=lambda m: None)
    card = json.loads((checkpoint / CHECKPOINT_META).read_text())
    assert card["distillation"]["config"] == json.loads(json.dumps(dataclasses.asdict(FAST))) and card["train_config"]["rerank_holdout"] > 0
    assert set(report["teacher_dev"]) >= {"bm25", "teacher"} and len(report["student_loss_curve"]) == FAST.student_steps
    assert card["dev_metrics"] and card["dev_metrics"] != report["dev_metrics_before"]
    after = torch.load(checkpoint / CHECKPOINT_WEIGHTS, weights_only=True)["state_dict"]
    assert not torch.equal(before["bert.embeddings.word_embeddings.weight"], after["bert.embeddings.word_embeddings.weight"])
    assert not (checkpoint / RERANKER_DIR).exists()  # trained on the old features: stage 2 retrains it
    assert json.loads((checkpoint / TEACHER_DIR / TEACHER_CARD).read_text())["teacher_dev"] == report["teacher_dev"]
    with pytest.raises(ConfigError, match="distilled already"):
        distill_stage(checkpoint, tiny_dataset, FAST, log=lambda m: None)


@pytest.mark.training
def test_the_control_run_trains_no_teacher(tiny_checkpoint, tiny_dataset, tmp_path):
    checkpoint = tmp_path / "control"
    shutil.copytree(tiny_checkpoint, checkpoint)
    report = distill_stage(checkpoint, tiny_dataset, dataclasses.replace(FAST, kd_weight=0.0), log=lambda m: None)
    assert "teacher_dev" not in report and not (checkpoint / TEACHER_DIR).exists()
    assert len(report["student_loss_curve"]) == FAST.student_steps


def test_the_teacher_starts_from_pretrained_weights_only_when_they_fit_the_bi_encoder(stage1, random_checkpoint, tmp_path):
    from shopsearch.compress.distillation import _teacher_start
    from tests.test_pretrained import write_pretrained

    model = stage1[0]
    tokenizer_json = (random_checkpoint / TOKENIZER_FILE).read_text()
    state, config = _teacher_start(model, tokenizer_json, FAST)  # default: the bi-encoder's own transformer
    assert config == model.config and all(torch.equal(state[k], v) for k, v in model.bert.state_dict().items())
    same = tmp_path / "same"
    model.bert.save_pretrained(same)  # the bi-encoder's transformer as a Hugging Face checkpoint
    (same / "tokenizer.json").write_text(tokenizer_json)
    state, config = _teacher_start(model, tokenizer_json, dataclasses.replace(FAST, teacher_init_from=str(same)))
    assert config == model.config and all(torch.equal(state[k], v) for k, v in model.bert.state_dict().items())
    other = write_pretrained(tmp_path / "other", ["words nobody else uses"])
    with pytest.raises(ConfigError, match="teacher_init_from"):
        _teacher_start(model, tokenizer_json, dataclasses.replace(FAST, teacher_init_from=str(other)))


def test_a_pruned_cross_encoder_starts_from_exactly_the_layers_it_keeps():
    from shopsearch.compress.distillation import _teacher_start
    from shopsearch.core.modeling import BiEncoder, EncoderConfig

    torch.manual_seed(0)
    model = BiEncoder(EncoderConfig(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32,
                                    max_query_length=8, max_product_length=8, max_positions=16, dropout=0.0))
    state, config = _teacher_start(model, "{}", dataclasses.replace(FAST, teacher_keep_layers=[2, 0]))
    assert config.num_layers == 2 and config.hidden_size == 16
    layers = model.bert.encoder.layer
    for kept, source in ((0, layers[2]), (1, layers[0])):
        for name, value in source.state_dict().items():
            assert torch.equal(state[f"encoder.layer.{kept}.{name}"], value), (kept, name)
    assert not any(k.startswith("encoder.layer.2.") for k in state)
    assert torch.equal(state["embeddings.word_embeddings.weight"], model.bert.embeddings.word_embeddings.weight)
    with pytest.raises(ConfigError, match=r"teacher_keep_layers.*0\.\.2"):
        _teacher_start(model, "{}", dataclasses.replace(FAST, teacher_keep_layers=[1, 3]))
    with pytest.raises(ConfigError, match="teacher_keep_layers"):  # a trained cross-encoder is not pruned again
        dataclasses.replace(FAST, teacher_keep_layers=[0], teacher_from="somewhere")


@pytest.mark.training
def test_a_cross_encoder_alone_is_trained_and_the_bi_encoder_left_as_it_was(tiny_checkpoint, tiny_dataset, tmp_path):
    from shopsearch.compress.distillation import load_cross_encoder, train_cross_encoder

    before = (tiny_checkpoint / CHECKPOINT_WEIGHTS).read_bytes()
    report = train_cross_encoder(tiny_checkpoint, tiny_dataset, FAST, tmp_path / "cross", log=lambda m: None)
    model, card = load_cross_encoder(tmp_path / "cross")
    assert (tiny_checkpoint / CHECKPOINT_WEIGHTS).read_bytes() == before
    assert card["teacher_dev"] == report["teacher_dev"] and len(card["loss_curve"]) == FAST.teacher_steps
    assert model.n_features == len(LEXICAL_FEATURE_NAMES) and (tmp_path / "cross" / TOKENIZER_FILE).exists()


def _group_kl(model, checkpoint, groups, data) -> float:
    """Mean KL(teacher || bi-encoder) over the groups' candidates (their teacher scores set)."""
    from shopsearch.core.tokenization import TextEncoder, pad_batches

    enc_q = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, model.config.max_query_length)
    enc_p = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, model.config.max_product_length)
    text = {p.product_id: p.search_text() for p in data.products}
    joined, _ = pad_batches([enc_q.encode_texts([g.query for g in groups]),
                             enc_p.encode_texts([text[p] for g in groups for p in g.product_ids])])
    with torch.no_grad():
        v = model.eval()(torch.from_numpy(joined.input_ids), torch.from_numpy(joined.attention_mask))
    _, kl = student_loss(v[: len(groups)], v[len(groups) :], [len(g.product_ids) for g in groups],
                         torch.from_numpy(np.concatenate([g.teacher for g in groups])), 0.05, 1.0)
    return kl.item()


@pytest.mark.training
def test_a_trained_cross_encoder_teaches_a_pruned_student_and_the_gap_to_it_shrinks(tiny_checkpoint, tiny_dataset, tmp_path):
    from shopsearch.compress.distillation import TEACHER_WEIGHTS, load_cross_encoder, train_cross_encoder
    from shopsearch.compress.student import StudentConfig, distill_student
    from shopsearch.core.provenance import file_sha256

    cross = tmp_path / "cross"
    train_cross_encoder(tiny_checkpoint, tiny_dataset, FAST, cross, log=lambda m: None)
    student = tmp_path / "student"
    distill_student(tiny_checkpoint, tiny_dataset, StudentConfig(layers=1, steps=4, batch_size=16, selection_queries=20,
                                                                 selection_catalog=50, eval_queries=20), student, log=lambda m: None)
    cfg = dataclasses.replace(FAST, teacher_from=str(cross), student_steps=40, kd_weight=5.0)
    model, card = load_checkpoint(student)
    data = tiny_dataset.with_holdout(card["train_config"]["rerank_holdout"])
    groups = build_groups(data, "train", cfg)[:64]
    teacher, teacher_card = load_cross_encoder(cross)
    add_lexical_features(groups, LexicalScorer.build(data.products), {p.product_id: i for i, p in enumerate(data.products)})
    pairs = PairEncoder((student / TOKENIZER_FILE).read_text(), teacher_card["config"]["max_query_tokens"],
                        teacher.config.max_product_length, teacher.config.max_positions)
    score_groups(teacher, pairs, groups, {p.product_id: p.search_text() for p in data.products})
    gap_before = _group_kl(model, student, groups, data)

    report = distill_stage(student, tiny_dataset, cfg, log=lambda m: None)
    assert report["teacher_from"]["sha256"] == file_sha256(cross / TEACHER_WEIGHTS)
    assert "teacher_seconds" not in report and not (student / TEACHER_DIR).exists()  # loaded, not trained again
    assert report["teacher_dev"] == teacher_card["teacher_dev"]
    after, card_after = load_checkpoint(student)
    assert card_after["compression"] == card["compression"] and after.config.num_layers == 1  # still the pruned student
    assert _group_kl(after, student, groups, data) < gap_before


@pytest.mark.training
def test_a_trained_cross_encoder_must_share_the_tokenizer_and_the_held_out_queries(tiny_checkpoint, tiny_dataset, tmp_path):
    from shopsearch.compress.distillation import TEACHER_CARD, train_cross_encoder

    cross = tmp_path / "cross"
    train_cross_encoder(tiny_checkpoint, tiny_dataset, dataclasses.replace(FAST, teacher_steps=2), cross, log=lambda m: None)
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    with pytest.raises(ConfigError, match="teacher_from.*no trained cross-encoder"):
        distill_stage(checkpoint, tiny_dataset, dataclasses.replace(FAST, teacher_from=str(tmp_path / "nowhere")), log=lambda m: None)
    cfg = dataclasses.replace(FAST, teacher_from=str(cross))
    card = json.loads((cross / TEACHER_CARD).read_text())
    (cross / TEACHER_CARD).write_text(json.dumps({**card, "rerank_holdout": 0.5}))
    with pytest.raises(ConfigError, match="teacher_from.*rerank_holdout 0.5"):
        distill_stage(checkpoint, tiny_dataset, cfg, log=lambda m: None)
    (cross / TEACHER_CARD).write_text(json.dumps(card))
    (cross / TOKENIZER_FILE).write_text((cross / TOKENIZER_FILE).read_text().replace('"[UNK]"', '"[UNKNOWN]"'))
    with pytest.raises(ConfigError, match="teacher_from.*tokenizer"):
        distill_stage(checkpoint, tiny_dataset, cfg, log=lambda m: None)
    assert "distillation" not in load_checkpoint(checkpoint)[1]  # refused before anything was written


def test_teacher_from_and_teacher_init_from_exclude_each_other():
    with pytest.raises(ConfigError, match="teacher_from"):
        DistillConfig(teacher_from="a", teacher_init_from="b")


@pytest.mark.training
def test_distill_only_with_a_recipe_without_train_retrains_the_checkpoints_reranker(tiny_checkpoint, tmp_path):
    """A student's recipe has no [train]: stage 2 follows the checkpoint's own holdout, so the
    re-ranker that stage 1b removed is trained again (it used to be left out without a word)."""
    import re
    import runpy
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tiny = (root / "training" / "recipes" / "tiny.toml").read_text()
    recipe = tmp_path / "student.toml"
    recipe.write_text(re.sub(r"\[train\].*?(?=^\[)", "", tiny, flags=re.S | re.M)
                      + "\n[distill]\nkd_weight = 0.0\nstudent_steps = 2\n")
    assert "[train]" not in recipe.read_text() and "[rerank]" in recipe.read_text()
    checkpoint = tmp_path / "student"
    shutil.copytree(tiny_checkpoint, checkpoint)
    main = runpy.run_path(str(root / "training" / "train_search.py"))["main"]
    assert main(["--recipe", str(recipe), "--out", str(checkpoint), "--distill-only"]) == 0
    assert "distillation" in load_checkpoint(checkpoint)[1] and (checkpoint / RERANKER_DIR / "reranker.pt").exists()
