"""Search filters: category, price range and stock, in the index, the ranker and the whole pipeline."""

from __future__ import annotations

import numpy as np
import pytest

import shopsearch.core.index as index_module
from shopsearch.core.ann import IndexSpec
from shopsearch.core.filters import CatalogFacets, SearchFilters
from shopsearch.core.index import CatalogIndex
from shopsearch.data.schema import Product
from shopsearch.errors import InvalidInputError
from tests.test_ann import clustered_catalog

PRODUCTS = [
    Product("P0", "Trail Tent", category="Tents", price=120.0, in_stock=True),
    Product("P1", "Dome Tent", category="Tents", price=60.0, in_stock=False),
    Product("P2", "Camp Stove", category="Stoves", price=45.0, in_stock=True),
    Product("P3", "Old Tent", category="Tents", price=None, in_stock=None),  # the catalog does not say
]


def test_each_facet_narrows_the_rows_and_unknown_price_or_stock_never_passes_a_filter():
    facets = CatalogFacets.from_products(PRODUCTS)
    assert facets.mask(SearchFilters()) is None
    assert facets.mask(SearchFilters(in_stock=False)) is None  # "stock does not matter"
    assert facets.mask(SearchFilters(category="Tents")).tolist() == [True, True, False, True]
    assert facets.mask(SearchFilters(category="Tents", price_max=100)).tolist() == [False, True, False, False]
    assert facets.mask(SearchFilters(price_min=45, price_max=60)).tolist() == [False, True, True, False]
    assert facets.mask(SearchFilters(category="Tents", in_stock=True)).tolist() == [True, False, False, False]
    assert facets.mask(SearchFilters(category="Stoves", price_min=50)).tolist() == [False] * 4


@pytest.mark.parametrize("filters, field, message", [
    (SearchFilters(category="Tent"), "CATEGORY", "unknown category 'Tent'; this catalog has 2: 'Stoves', 'Tents'"),
    (SearchFilters(category=" "), "CATEGORY", "empty"),
    (SearchFilters(price_min=80, price_max=20), "PRICE_MIN", "80 is above PRICE_MAX 20: an empty range"),
    (SearchFilters(price_max=float("nan")), "PRICE_MAX", "finite"),
])
def test_impossible_filters_are_refused_naming_the_field(filters, field, message):
    with pytest.raises(InvalidInputError, match=rf"ranker: {field}: .*{message}"):
        CatalogFacets.from_products(PRODUCTS).mask(filters)


def test_facets_round_trip(tmp_path):
    facets = CatalogFacets.from_products(PRODUCTS)
    facets.save(tmp_path)
    loaded = CatalogFacets.load(tmp_path)
    assert loaded.categories == ["Stoves", "Tents"] and loaded.stock.tolist() == [1, 0, 1, -1]
    assert np.isnan(loaded.prices[3]) and loaded.mask(SearchFilters(category="Tents")).tolist() == [True, True, False, True]


def brute_force(vectors: np.ndarray, queries: np.ndarray, allowed: np.ndarray, k: int) -> list[list[int]]:
    scores = queries @ vectors.T
    scores[:, ~allowed] = -np.inf
    return [[int(r) for r in np.lexsort((np.arange(len(row)), -row))[:k] if allowed[r]] for row in scores]


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_a_filtered_search_is_the_best_k_that_match_not_the_matches_of_an_unfiltered_k(kind, monkeypatch):
    vectors, queries = clustered_catalog(n=6000, clusters=60)
    rng = np.random.default_rng(1)
    index = CatalogIndex.build(vectors, "e", IndexSpec(kind=kind, nlist=64, nprobe=64, ef_search=400))
    # A loose filter (searched by faiss with a selector) and a narrow one: 7 products, every one scored.
    loose = rng.random(len(vectors)) < 0.5
    narrow = np.zeros(len(vectors), dtype=bool)
    narrow[rng.choice(len(vectors), 7, replace=False)] = True
    for allowed in (loose, narrow):
        monkeypatch.setattr(index_module, "EXACT_WITHIN_MAX", 100)
        rows, scores = index.search_within(queries, 10, allowed)
        assert rows.shape == (len(queries), 10)
        assert all(allowed[r] for r in rows[rows >= 0]), "a returned product does not match the filter"
        expected = brute_force(vectors, queries, allowed, 10)
        agree = np.mean([rows[i][rows[i] >= 0].tolist() == expected[i] for i in range(len(queries))])
        assert agree >= 0.98, (kind, int(allowed.sum()), agree)
        if allowed is narrow:  # answers are short, padded, never filled with products that do not match
            assert (rows[:, 7:] == -1).all() and np.isneginf(scores[:, 7:]).all() and (rows[:, :7] >= 0).all()
    nothing = index.search_within(queries[:2], 5, np.zeros(len(vectors), dtype=bool))
    assert (nothing[0] == -1).all()


def test_the_served_pipeline_returns_only_matching_products(unit_repo, tiny_dataset):
    from shopsearch.serving.pipeline import InProcessEnsemble

    pipeline = InProcessEnsemble.from_repository(unit_repo, "search")
    by_id = {p.product_id: p for p in tiny_dataset.products}
    category = tiny_dataset.products[0].category
    prices = sorted(p.price for p in tiny_dataset.products if p.category == category)
    filters = SearchFilters(category=category, price_min=prices[len(prices) // 4], price_max=prices[3 * len(prices) // 4],
                            in_stock=True)
    queries = ["blue tent", "running shoes size 9", "frying pan"]
    answers = pipeline.search(queries, top_k=20, filters=filters)
    assert all(len(hits) > 0 for hits in answers)
    for hits in answers:
        for hit in hits:
            product = by_id[hit.product_id]
            assert product.category == category and filters.price_min <= product.price <= filters.price_max
            assert product.in_stock
    unfiltered = pipeline.search(queries, top_k=20)
    assert answers != unfiltered
    with pytest.raises(InvalidInputError, match="ranker: CATEGORY: unknown category 'Spaceships'"):
        pipeline.search(["tent"], filters=SearchFilters(category="Spaceships"))
    with pytest.raises(InvalidInputError, match="ranker: PRICE_MIN"):
        pipeline.search(["tent"], filters=SearchFilters(price_min=50, price_max=10))


def test_requests_with_different_filters_batched_together_each_get_their_own(unit_repo, tiny_dataset):
    from shopsearch.core.filters import filter_arrays
    from shopsearch.serving.pipeline import InProcessEnsemble
    from shopsearch.serving.tensors import CANDIDATE_INDICES

    pipeline = InProcessEnsemble.from_repository(unit_repo, "search")
    ranker = next(step for step in pipeline.steps if step.name == "ranker")
    state = {"QUERY": np.array([[b"tent"]], dtype=object)}
    for step in pipeline.steps[:2]:
        state.update(step.run([dict(state)])[0])
    categories = sorted({p.category for p in tiny_dataset.products})[:2]
    requests = [dict(state), {**state, **filter_arrays(SearchFilters(category=categories[0]), 1)},
                {**state, **filter_arrays(SearchFilters(category="nope"), 1)},
                {**state, **filter_arrays(SearchFilters(category=categories[1]), 1)}]
    plain, first, bad, second = ranker.run(requests)
    assert isinstance(bad, InvalidInputError)
    for outcome, category in ((first, categories[0]), (second, categories[1])):
        rows = outcome[CANDIDATE_INDICES][0]
        assert {tiny_dataset.products[r].category for r in rows[rows >= 0]} == {category}
    assert len({tiny_dataset.products[r].category for r in plain[CANDIDATE_INDICES][0]}) > 2


def test_a_repository_built_before_facets_refuses_filters_naming_the_input_and_still_searches():
    from shopsearch.serving.steps import RankerStep
    from shopsearch.serving.tensors import CANDIDATE_INDICES, PRICE_MAX

    vectors, queries = clustered_catalog(n=200, dim=8, clusters=4)
    ranker = RankerStep(CatalogIndex(vectors, "e"), "q", 5)  # no facets: an older build's ranker
    plain, filtered = ranker.run([{"q": queries[:1]}, {"q": queries[:1], PRICE_MAX: np.array([[50.0]], np.float32)}])
    assert plain[CANDIDATE_INDICES].shape == (1, 5)
    assert isinstance(filtered, InvalidInputError) and "ranker: PRICE_MAX: this build has no catalog facets" in str(filtered)
