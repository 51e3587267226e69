"""`make eval` refuses what it cannot measure honestly, before measuring anything."""

import pytest


def test_an_ablation_checkpoint_trained_on_other_data_fails_clearly(random_checkpoint, unit_repo, tiny_dataset):
    from shopsearch.data import load_dataset
    from shopsearch.errors import DataError
    from shopsearch.evaluation.search import evaluate_ablation, evaluate_repository

    # Refused before anything is measured, not after minutes of evaluating the other systems.
    with pytest.raises(DataError, match="no checkpoint"):
        evaluate_repository(unit_repo, tiny_dataset, "dev", bm25=True, ablation={"y": random_checkpoint / "missing"},
                            log=lambda m: None, limit=5)

    other = load_dataset("synthetic", n_products=300, n_queries=40, seed=7)
    with pytest.raises(DataError, match="ablation 'x'.*was trained on"):
        evaluate_ablation(other, {"x": random_checkpoint}, "dev", limit=5)
    with pytest.raises(DataError, match="no checkpoint"):
        evaluate_ablation(other, {"x": random_checkpoint / "missing"}, "dev", limit=5)


def test_evaluating_a_repository_on_another_catalog_fails_clearly(unit_repo):
    from shopsearch.data import load_dataset
    from shopsearch.errors import DataError
    from shopsearch.evaluation.search import evaluate_repository

    other = load_dataset("synthetic", n_products=300, n_queries=40, seed=7)
    with pytest.raises(DataError, match="was built for catalog"):
        evaluate_repository(unit_repo, other, "dev", limit=5)
