"""A cross-encoder re-scoring the built ensemble's top k, measured in-process (`make rescoring`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shopsearch.compress.distillation import CrossEncoder, _save_teacher, load_cross_encoder
from shopsearch.core.hybrid import LEXICAL_FEATURE_NAMES
from shopsearch.core.modeling import load_checkpoint
from shopsearch.core.tokenization import TOKENIZER_FILE
from shopsearch.errors import ArtifactError, ConfigError
from shopsearch.evaluation import rescoring
from shopsearch.evaluation.rescoring import measure_rescoring, rescored, rescoring_markdown


def test_only_the_first_depth_products_are_reordered_and_they_stay_on_top():
    ids = ["a", "b", "c", "d", "e"]
    base = np.array([5.0, 4.0, 3.0, 2.0, 1.0], np.float32)
    run = rescored(ids, base, np.array([0.1, 0.9, 0.5], np.float32), blend=False)
    assert sorted(run, key=run.get, reverse=True) == ["b", "c", "a", "d", "e"]
    # Blend: equal z-scores of both; "a" leads the ensemble by far and the cross-encoder's best only a little.
    blend = rescored(ids, np.array([9.0, 1.0, 0.0, 0, 0], np.float32), np.array([0.4, 0.5, 0.0], np.float32), blend=True)
    assert sorted(blend, key=blend.get, reverse=True)[:2] == ["a", "b"]


@pytest.fixture(scope="module")
def random_cross_encoder(random_checkpoint, tmp_path_factory):
    model, _ = load_checkpoint(random_checkpoint)
    torch.manual_seed(0)
    cross = CrossEncoder(model.config, len(LEXICAL_FEATURE_NAMES)).eval()
    out = tmp_path_factory.mktemp("cross_encoder")
    _save_teacher(cross, out, {"config": {"max_query_tokens": 16}})
    (out / TOKENIZER_FILE).write_text((random_checkpoint / TOKENIZER_FILE).read_text())
    return out


def test_a_saved_cross_encoder_loads_with_the_same_scores(random_cross_encoder, tmp_path):
    loaded, card = load_cross_encoder(random_cross_encoder)
    again, _ = load_cross_encoder(random_cross_encoder)
    ids = torch.tensor([[2, 5, 6, 3, 7, 8, 3]])
    mask, types = torch.ones_like(ids), torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    features = torch.ones(1, len(LEXICAL_FEATURE_NAMES))
    assert torch.equal(loaded(ids, mask, types, features), again(ids, mask, types, features))
    assert card["config"]["max_query_tokens"] == 16
    with pytest.raises(ArtifactError, match="cross_encoder.pt"):
        load_cross_encoder(tmp_path)


def test_an_oracle_cross_encoder_lifts_ndcg_and_recall_never_moves(unit_repo, random_cross_encoder, tiny_dataset, monkeypatch):
    """Scores = the judged gain of each (query, title): re-ordering the top k by them can only help
    nDCG@10, and a re-order inside the top 100 leaves Recall@100 as it was. The random
    cross-encoder is measured first, for the cost column and the wiring."""
    report = measure_rescoring(unit_repo, random_cross_encoder, tiny_dataset, (5, 100), limit=40, log=lambda m: None)
    assert [r["depth"] for r in report["depths"]] == [5, 100] and all(r["cross_encoder_ms_per_query"] > 0 for r in report["depths"])
    assert all(r[k]["recall@100"] == report["ensemble"]["recall@100"] for r in report["depths"] for k in ("cross_encoder_order", "blend"))
    assert "| + top 100 re-scored, cross-encoder order |" in rescoring_markdown(report)

    queries, qrels = tiny_dataset.split("dev")
    by_text = {p.search_text(): p.product_id for p in tiny_dataset.products}
    gain = {(queries[q], pid): g for q, judged in qrels.items() for pid, g in judged.items()}

    def oracle(model, pairs, query_texts, product_texts, features=None, batch=256):
        return np.array([gain.get((q, by_text[t]), 0) for q, t in zip(query_texts, product_texts)], np.float32)

    monkeypatch.setattr(rescoring, "score_pairs", oracle)
    report = measure_rescoring(unit_repo, random_cross_encoder, tiny_dataset, (100,), limit=40, log=lambda m: None)
    ordered = report["depths"][0]["cross_encoder_order"]
    assert ordered["ndcg@10"] > report["ensemble"]["ndcg@10"] and ordered["recall@100"] == report["ensemble"]["recall@100"]


def test_a_depth_outside_the_served_top_100_is_refused(unit_repo, random_cross_encoder, tiny_dataset):
    with pytest.raises(ConfigError, match="depth"):
        measure_rescoring(unit_repo, random_cross_encoder, tiny_dataset, (0,), log=lambda m: None)
    with pytest.raises(ConfigError, match="depth"):
        measure_rescoring(unit_repo, random_cross_encoder, tiny_dataset, (101,), log=lambda m: None)
