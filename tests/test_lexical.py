"""BM25 baseline over the catalog (bm25s with stemming and English stop words)."""

import pytest

from shopsearch.data.schema import Product
from shopsearch.errors import InvalidInputError
from shopsearch.lexical.bm25 import Bm25Index

CATALOG = [Product("p1", "Simpson Strong-Tie 12-Gauge Angle Bracket"), Product("p2", "BEHR Premium DeckOver Paint"),
           Product("p3", "Cordless Drill 20V with Battery"), Product("p4", "Angle Grinder 4.5 in.")]


def test_bm25_ranks_the_matching_title_first_and_stems_query_terms():
    index = Bm25Index(CATALOG)
    rows, scores = index.search(["angle brackets", "cordless drills"], k=2)
    assert index.product_ids[rows[0][0]] == "p1" and scores[0][0] > scores[0][1] > 0  # p4 matches "angle" only
    assert index.product_ids[rows[1][0]] == "p3"


def test_bm25_run_drops_products_without_any_matching_term():
    run = Bm25Index(CATALOG).run({"q1": "deck paint", "q2": "the of and"}, ["q1", "q2"], depth=4)
    assert list(run["q1"]) == ["p2"] and run["q2"] == {}


def test_bm25_refuses_an_empty_batch():
    with pytest.raises(InvalidInputError, match="bm25: queries"):
        Bm25Index(CATALOG).search([], k=3)
