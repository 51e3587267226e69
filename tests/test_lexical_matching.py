"""Query-time lexical matching: every sparse shortcut equals the whole-catalog computation it replaces."""

import bm25s
import numpy as np
import pytest
import Stemmer

from shopsearch.core.hybrid import LexicalScorer, _rank_recip, lexical_features
from shopsearch.lexical.matching import (
    TRIGRAM_IDS, LexicalMatches, QueryTokenizer, TrigramIndex, match_postings, trigram_keys,
)
from shopsearch.data.schema import Product

WORDS = ["steel", "angle", "bracket", "brackets", "deck", "paint", "premium", "drill", "cordless", "20v", "1/2", "in.",
         "x", "the", "and", "café", "crème", "中文", "grinder", "running", "runs", "shelf", "white", "ft."]
TRICKY = ["", " ", "a", "ab", "abc", "The AND of", "Steel  ANGLE\tbrackets", "1/2 in. x 10 ft.", "café crème",
          "CAFÉ", "中文 drill", "run runs running runner", "x" * 40, "\udcff lone surrogate", "nul\x00byte", "20v 20V 20-v"]


def _catalog(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return [Product(f"p{i}", " ".join(rng.choice(WORDS, size=int(rng.integers(1, 7))))) for i in range(n)]


def _whole_catalog(lexical: LexicalScorer, text: str):
    """The computation the sparse path replaced: one dense bm25s score vector per distinct known term."""
    terms = list(dict.fromkeys(bm25s.tokenize([text], stopwords="en", stemmer=Stemmer.Stemmer("english"),
                                              return_ids=False, show_progress=False)[0]))
    known = [t for t in terms if t in lexical.vocab]
    n = len(lexical)
    if not known:
        return np.zeros(n, np.float32), np.zeros(n, np.float32), len(terms)
    per_term = np.stack([lexical.retriever.get_scores([t]) for t in known]).astype(np.float32)
    return per_term.sum(axis=0), (per_term > 0).sum(axis=0).astype(np.float32) / len(terms), len(terms)


def _trigram_sets(text: str) -> set[str]:
    text = " ".join(text.lower().split())
    return {text[i: i + 3] for i in range(len(text) - 2)}


@pytest.mark.parametrize("text", TRICKY + [" ".join(WORDS)])
def test_query_tokenizer_equals_bm25s_tokenize(text):
    stemmer = Stemmer.Stemmer("english")
    expected = bm25s.tokenize([text], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)[0]
    assert QueryTokenizer(stemmer)(text) == expected


def test_matches_equal_whole_catalog_scores_and_their_top_orders_by_score_then_row():
    products = _catalog()
    lexical = LexicalScorer.build(products)
    allowed = np.random.default_rng(1).random(len(products)) < 0.4
    for text in TRICKY + ["steel angle brackets", "paint deck premium white", "zzzz", "drill drill drill"]:
        matches = lexical.match(text)
        bm25, coverage, n_terms = _whole_catalog(lexical, text)
        assert matches.n_terms == n_terms
        dense_bm25, dense_coverage = matches.dense(len(products))
        np.testing.assert_array_equal(dense_bm25, bm25)  # bit for bit: same float32 values added in the same order
        np.testing.assert_array_equal(dense_coverage, coverage)
        assert matches.best() == (float(bm25.max()) if bm25.size else 0.0)
        rows = np.arange(len(products))
        np.testing.assert_array_equal(matches.at(rows)[0], bm25)
        for n in (0, 1, 5, 37, 1000):
            for mask in (None, allowed):
                scores = bm25 if mask is None else np.where(mask, bm25, 0)
                expected = np.lexsort((rows, -scores))  # best first, ties by row
                expected = expected[scores[expected] > 0][:n]
                np.testing.assert_array_equal(matches.top(n, mask), expected)


def test_ties_at_the_cut_keep_the_lowest_rows():
    matches = LexicalMatches(np.array([2, 5, 7, 9]), np.array([1.0, 3.0, 1.0, 1.0], np.float32),
                             np.ones(4, np.float32), 1)
    assert matches.top(2).tolist() == [5, 2]
    assert matches.top(3).tolist() == [5, 2, 7]


def test_match_postings_skips_nothing_and_counts_unknown_terms_in_coverage():
    # Two terms: term 0 in products 1 and 3, term 1 in product 3; a third query term is unknown.
    scores = {"data": np.array([0.5, 0.25, 1.0], np.float32), "indices": np.array([1, 3, 3], np.int32),
              "indptr": np.array([0, 2, 3], np.int32)}
    matches = match_postings(scores, [0, 1], n_terms=3)
    assert matches.rows.tolist() == [1, 3]
    assert matches.bm25.tolist() == [0.5, 1.25] and matches.coverage.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert match_postings(scores, [], n_terms=2).rows.size == 0


@pytest.mark.parametrize("text", TRICKY + ["deckpaint premiun", "steel bracket", "café"])
def test_trigram_coverage_equals_python_sets(text):
    products = _catalog(200, seed=2) + [Product("e", ""), Product("s", "ab"), Product("u", "café crème 中文")]
    texts = [p.search_text() for p in products]
    index = TrigramIndex.build(texts)
    rows = np.random.default_rng(3).permutation(len(texts))[:120]
    query = _trigram_sets(text)
    expected = [len(query & _trigram_sets(texts[r])) / len(query) if query else 0.0 for r in rows]
    np.testing.assert_array_equal(index.coverage(text, rows), np.array(expected, np.float32))
    assert index.coverage(text, rows[:0]).size == 0
    assert trigram_keys(text).size == len(query)


def test_trigram_index_saved_is_memory_mapped_and_an_older_directory_rebuilds_it(tmp_path):
    products = _catalog(50)
    lexical = LexicalScorer.build(products)
    lexical.save(tmp_path / "lexical")
    loaded = LexicalScorer.load(tmp_path / "lexical")
    assert isinstance(loaded.trigrams.ids, np.memmap)
    rows = np.arange(50)
    np.testing.assert_array_equal(loaded.trigram_coverage("steel angle", rows), lexical.trigram_coverage("steel angle", rows))
    (tmp_path / "lexical" / TRIGRAM_IDS).unlink()  # a lexical index built before trigrams were stored
    rebuilt = LexicalScorer.load(tmp_path / "lexical")
    np.testing.assert_array_equal(rebuilt.trigram_coverage("steel angle", rows), lexical.trigram_coverage("steel angle", rows))


def test_a_trigram_index_that_does_not_cover_its_ids_is_refused():
    with pytest.raises(ValueError, match="trigram index"):
        TrigramIndex(np.arange(3), np.array([0, 2, 5]), np.zeros(4, np.int32))


def test_rank_reciprocal_equals_a_position_lookup():
    rng = np.random.default_rng(4)
    top = rng.permutation(300)[:40]
    rows = np.unique(rng.integers(0, 300, 80))
    position = {int(r): i for i, r in enumerate(top)}
    expected = np.array([1.0 / (1 + position[r]) if r in position else 0.0 for r in rows.tolist()], np.float32)
    np.testing.assert_array_equal(_rank_recip(rows, top), expected)
    assert _rank_recip(rows, top[:0]).tolist() == [0.0] * rows.size


def test_lexical_features_do_not_depend_on_being_handed_the_matches():
    products = _catalog()
    lexical = LexicalScorer.build(products)
    rows = np.arange(0, len(products), 3)
    matches = lexical.match("steel angle")
    np.testing.assert_array_equal(lexical_features(lexical, "steel angle", rows, 20),
                                  lexical_features(lexical, "steel angle", rows, 20, matches, matches.top(20)))
