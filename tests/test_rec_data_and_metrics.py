"""Interaction loaders, synthetic sessions, baselines and the leave-one-out metrics."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from shopsearch.errors import DataError
from shopsearch.evaluation.rec_baselines import LastItemTransitions, Popularity
from shopsearch.data.interactions import Interactions, load_amazon_beauty, load_amazon_games, load_interactions
from shopsearch.evaluation.recs import evaluate_scorer, leave_one_out_metrics, top_items_excluding_history
from tests.conftest import shared_dataset_dir


def test_metrics_score_the_target_by_its_position():
    ranked = [["a", "b"], ["b", "a"], ["c", "d"]]
    m = leave_one_out_metrics(ranked, ["a", "a", "a"])
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_history_items_are_never_recommended():
    scores = np.array([[9.0, 8.0, 7.0, 1.0]], dtype=np.float32)
    assert top_items_excluding_history(scores, [[0, 2]], k=2).tolist() == [[1, 3]]


def small_interactions() -> Interactions:
    # item 1 always follows item 0; item 3 is the most frequent overall
    histories = [[0, 1, 3], [0, 1, 3, 3], [2, 3, 3], [3, 0, 1]]
    return Interactions("small", ["i0", "i1", "i2", "i3", "i4"], [""] * 5, histories + [[0], [3]], [1, 1, 0, 2, 1, 0])


def test_transition_baseline_follows_the_last_item_and_backfills_by_popularity():
    data = small_interactions()
    scores = LastItemTransitions.fit(data).scores([[0], [4]])
    assert int(np.argmax(scores[0])) == 1  # 0 -> 1 three times
    assert int(np.argmax(scores[1])) == 3  # no successor of 4: the most popular item
    assert Popularity.fit(data).counts.argmax() == 3


def test_baselines_evaluate_with_history_excluded():
    data = small_interactions()
    m = evaluate_scorer(LastItemTransitions.fit(data), data.histories, data.targets, data.item_ids)
    assert 0 < m["hr@10"] <= 1 and m["users"] == 6


def test_interactions_refuse_items_outside_the_catalog():
    with pytest.raises(DataError, match="outside the catalog"):
        Interactions("bad", ["a"], [""], [[0, 3]], [0])


def test_synthetic_sessions_follow_affinities_and_complements(tiny_interactions, tiny_dataset):
    data = tiny_interactions
    products = tiny_dataset.products
    assert data.item_ids == [p.product_id for p in products]
    lengths = [len(h) for h in data.histories]
    assert min(lengths) >= 3 and max(lengths) <= 20
    # A shopper sticks to few categories: the top category holds most of a history.
    share = [Counter(products[i].category for i in h + [t]).most_common(1)[0][1] / (len(h) + 1)
             for h, t in zip(data.histories, data.targets)]
    assert np.mean(share) > 0.5
    # Consecutive purchases repeat the model line far more often than chance.
    same_line = np.mean([products[a].attributes.get("line") == products[b].attributes.get("line")
                         and products[a].brand == products[b].brand
                         for h in data.histories for a, b in zip(h, h[1:])])
    assert same_line > 0.1
    assert data.fingerprint() == load_interactions_again(tiny_dataset).fingerprint()


def load_interactions_again(dataset):
    from shopsearch.data.interactions import SessionConfig, generate_sessions

    return generate_sessions(dataset.products, SessionConfig(n_users=1500, min_length=3, max_length=20))


def test_amazon_games_loader_reads_titles_and_the_validation_target():
    data = load_amazon_games(shared_dataset_dir("amazon_games"))
    assert data.n_items == 16859 and len(data.histories) == 50546
    assert data.has_titles and all(t for t in data.titles[:100])
    assert max(len(h) for h in data.histories) <= 49


def test_amazon_beauty_loader_holds_out_the_last_item():
    data = load_amazon_beauty(shared_dataset_dir("amazon_beauty"))
    assert data.n_items == 12101 and len(data.histories) == 22363
    assert sum(len(h) for h in data.histories) + len(data.targets) == 198502
    assert not data.has_titles


def test_unknown_dataset_and_missing_directory_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="unknown recommendation dataset"):
        load_interactions("movielens", tmp_path)
    with pytest.raises(DataError, match="needs a data directory"):
        load_interactions("amazon_games")
    with pytest.raises(DataError, match="items.tsv is missing"):
        load_interactions("amazon_games", tmp_path)
