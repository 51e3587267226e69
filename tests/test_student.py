"""A pruned student distilled from its teacher (training tier: it trains)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from shopsearch.compress.student import StudentConfig, distill_student, student_loss
from shopsearch.core.embedding import TorchEmbedder, embed_texts
from shopsearch.core.modeling import load_checkpoint
from shopsearch.core.tokenization import TOKENIZER_FILE, TextEncoder
from shopsearch.errors import ConfigError

FAST = StudentConfig(layers=1, steps=40, batch_size=32, learning_rate=1e-3, selection_queries=100, selection_catalog=500,
                     eval_queries=50)


def test_the_three_terms_vanish_only_when_the_student_is_the_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    same, parts = student_loss(teacher.clone(), teacher, 4, FAST)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6) and parts["embedding"] == pytest.approx(0.0, abs=1e-9)
    other, parts_other = student_loss(torch.nn.functional.normalize(torch.randn(8, 16), dim=1), teacher, 4, FAST)
    assert parts_other["kl"] > 0.01 and parts_other["embedding"] > 0.5 and other > same


def test_hard_negatives_are_candidates_of_every_query_in_the_kl_term():
    """Vectors [queries, products, negatives]: a student that agrees with the teacher everywhere but
    on the negatives must show a KL gap (the negatives are in each query's softmax) and an
    embedding gap; agreeing everywhere, both vanish."""
    torch.manual_seed(0)
    n, m = 4, 3
    teacher = torch.nn.functional.normalize(torch.randn(2 * n + m, 16), dim=1)
    _, same = student_loss(teacher.clone(), teacher, n, FAST)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["embedding"] == pytest.approx(0.0, abs=1e-9)
    student = teacher.clone()
    student[2 * n :] = teacher[:m]  # each negative now points where a query does: the student favours it
    _, parts = student_loss(student, teacher, n, FAST)
    assert parts["kl"] > 0.01 and parts["embedding"] > 0.1


def test_a_negative_hard_negative_depth_is_refused():
    with pytest.raises(ConfigError, match="hard_negatives"):
        StudentConfig(hard_negatives=-1)


@pytest.mark.training
def test_distillation_brings_the_pruned_student_closer_to_its_teacher(tiny_checkpoint, tiny_dataset, tmp_path):
    """Against a control trained the same steps on the same batches without the teacher's two terms:
    on queries none of them trained on, the distilled student's vectors sit nearer the teacher's. (Not
    against the untrained pruned model: a weak tiny teacher can lose a layer and barely move, and
    then any training moves the student away.)"""
    card = distill_student(tiny_checkpoint, tiny_dataset, FAST, tmp_path / "student", log=lambda m: None)
    control_cfg = dataclasses.replace(FAST, kd_weight=0.0, embedding_weight=0.0)
    distill_student(tiny_checkpoint, tiny_dataset, control_cfg, tmp_path / "control", log=lambda m: None)
    teacher, teacher_card = load_checkpoint(tiny_checkpoint)
    student, saved = load_checkpoint(tmp_path / "student")
    layers = card["compression"]["layers"]
    assert student.config.num_layers == 1 and len(layers) == 1 and saved["teacher"]["path"] == str(tiny_checkpoint)
    assert card["compression"]["parameters"] < card["compression"]["teacher_parameters"]
    assert saved["train_config"]["rerank_holdout"] == teacher_card["train_config"]["rerank_holdout"]
    texts = sorted(tiny_dataset.queries["dev"].values())[:200]
    encoder = TextEncoder.from_file(tiny_checkpoint / TOKENIZER_FILE, teacher.config.max_query_length)
    target = embed_texts(TorchEmbedder(teacher), encoder, texts)
    gap = lambda model: float(np.mean(np.sum((embed_texts(TorchEmbedder(model), encoder, texts) - target) ** 2, axis=1)))  # noqa: E731
    distilled, control = gap(student), gap(load_checkpoint(tmp_path / "control")[0])
    assert distilled < 0.5 * control, (distilled, control)
    assert set(saved["dev_metrics"]) >= {"ndcg@10", "recall@100"}


@pytest.mark.training
def test_a_student_with_pruned_heads_and_units_keeps_the_same_count_in_every_layer(tiny_checkpoint, tiny_dataset, tmp_path):
    cfg = dataclasses.replace(FAST, layers=2, heads=1, ffn=32, steps=5, importance_batches=2, hard_negatives=20)
    card = distill_student(tiny_checkpoint, tiny_dataset, cfg, tmp_path / "student", log=lambda m: None)
    student, _ = load_checkpoint(tmp_path / "student")
    assert student.config.layer_heads == (1, 1) and student.config.layer_ffn == (32, 32)
    assert len(card["compression"]["importance"]["heads"]) == 2
    assert card["compression"]["config"]["hard_negatives"] == 20
