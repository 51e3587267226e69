import math

import pytest

from shopsearch.core.metrics import evaluate_run


def test_metrics_match_hand_computed_values():
    qrels = {"q1": {"a": 3, "b": 1, "c": 3}, "q2": {"x": 3}}
    run = {"q1": {"b": 0.9, "a": 0.8, "z": 0.7}, "q2": {"y": 0.9, "x": 0.5}}
    out = evaluate_run(run, qrels, relevant_min_gain=3)
    # q1: DCG = 1/log2(2) + 3/log2(3); IDCG = 3 + 3/log2(3) + 1/log2(4)
    dcg = 1 + 3 / math.log2(3)
    idcg = 3 + 3 / math.log2(3) + 1 / 2
    q2 = (3 / math.log2(3)) / 3
    assert out["ndcg@10"] == pytest.approx((dcg / idcg + q2) / 2, abs=1e-4)
    assert out["recall@100"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["mrr@10"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_queries_without_results_count_as_zero_and_queries_without_relevant_products_are_skipped():
    qrels = {"q1": {"a": 3}, "q2": {"b": 3}, "q3": {"c": 1}}
    out = evaluate_run({"q1": {"a": 1.0}}, qrels, relevant_min_gain=3)
    assert out["queries"] == 2
    assert out["ndcg@10"] == pytest.approx(0.5)
    assert out["recall@100"] == pytest.approx(0.5)
