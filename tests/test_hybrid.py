"""Hybrid retrieval (BM25 + dense candidates), the learned re-ranker and its ONNX export, in-process."""

import numpy as np
import pytest
import torch

from shopsearch.data.schema import Product
from shopsearch.errors import ExportParityError, InvalidInputError
from shopsearch.core.hybrid import FEATURE_NAMES, HybridRanker, LexicalScorer, OnnxReranker
from shopsearch.core.index import CatalogIndex
from shopsearch.core.reranker import RerankerConfig, RerankerMLP, torch_scorer
from shopsearch.export.reranker import export_reranker
from shopsearch.serving.steps import RankerStep, decode_query_text, encode_query_text
from shopsearch.serving.tensors import QUERY_TEXT
from shopsearch.train.reranker import CandidateList, train_reranker

PRODUCTS = [Product("p0", "Angle Bracket Steel"), Product("p1", "Deck Paint Premium"), Product("p2", "Cordless Drill 20V"),
            Product("p3", "Angle Grinder"), Product("p4", "Steel Shelf Bracket")]


def _dense(dim=8, seed=0):
    vectors = np.random.default_rng(seed).standard_normal((len(PRODUCTS), dim)).astype(np.float32)
    return CatalogIndex(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), "test")


def test_lexical_scores_sum_terms_and_report_coverage(tmp_path):
    lexical = LexicalScorer.build(PRODUCTS)
    matches = lexical.match("steel angle brackets")
    bm25, coverage = matches.dense(len(PRODUCTS))
    assert matches.n_terms == 3 and coverage[0] == pytest.approx(1.0) and coverage[4] == pytest.approx(2 / 3)
    assert bm25[0] > bm25[4] > 0 and bm25[1] == 0 and coverage[1] == 0
    lexical.save(tmp_path / "lexical")
    again = LexicalScorer.load(tmp_path / "lexical").match("steel angle brackets")
    np.testing.assert_array_equal(again.dense(len(PRODUCTS))[0], bm25)


def test_candidates_are_the_union_of_dense_and_lexical_tops_with_finite_features():
    dense = _dense()
    hybrid = HybridRanker(dense, LexicalScorer.build(PRODUCTS), None, n_dense=2, n_lexical=2)
    query = dense.vectors[2]  # closest to the drill product
    rows, features = hybrid.candidates("angle grinder", query)
    assert 2 in rows and 3 in rows  # the dense best and the lexical best
    assert features.shape == (rows.size, len(FEATURE_NAMES)) and np.isfinite(features).all()
    assert features[list(rows).index(2), FEATURE_NAMES.index("dense_rank_recip")] == 1.0
    assert features[list(rows).index(3), FEATURE_NAMES.index("bm25_norm")] == pytest.approx(1.0)


def test_candidate_features_equal_scoring_the_whole_catalog_and_batched_rank_equals_one_by_one():
    rng = np.random.default_rng(3)
    products = [Product(f"p{i}", f"{rng.choice(['steel', 'angle', 'deck', 'drill', 'paint'])} item {i}") for i in range(300)]
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    dense = CatalogIndex(vectors, "test")
    hybrid = HybridRanker(dense, LexicalScorer.build(products), lambda f: f[:, 0] + f[:, 5], n_dense=20, n_lexical=20)
    queries = rng.standard_normal((6, 16)).astype(np.float32)
    texts = ["steel angle", "deck paint", "drill", "zzzz", "item 7", "angle"]
    for text, q in zip(texts, queries):
        rows, features = hybrid.candidates(text, q)
        everything = vectors @ q  # the reference: every product scored
        dense_top = np.argsort(-everything, kind="stable")[:20]
        assert set(dense_top) <= set(rows)
        np.testing.assert_allclose(features[:, FEATURE_NAMES.index("dense_score")], everything[rows], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(features[:, FEATURE_NAMES.index("dense_gap")], everything[rows] - everything.max(),
                                   rtol=1e-5, atol=1e-5)
        expected_recip = [1 / (1 + list(dense_top).index(r)) if r in dense_top else 0.0 for r in rows]
        np.testing.assert_allclose(features[:, FEATURE_NAMES.index("dense_rank_recip")], expected_recip)
    batched = hybrid.rank(texts, queries, k=10)
    one_by_one = [hybrid.rank([t], q[None, :], k=10) for t, q in zip(texts, queries)]
    np.testing.assert_array_equal(batched[0], np.concatenate([o[0] for o in one_by_one]))
    np.testing.assert_allclose(batched[1], np.concatenate([o[1] for o in one_by_one]), rtol=1e-6)


def test_a_query_with_no_known_term_still_gets_dense_candidates():
    dense = _dense()
    hybrid = HybridRanker(dense, LexicalScorer.build(PRODUCTS), lambda f: f[:, 0], n_dense=3, n_lexical=3)
    indices, scores = hybrid.rank(["zzzz qqqq"], dense.vectors[:1], k=5)
    assert list(indices[0][:3]) == list(np.argsort(-(dense.vectors @ dense.vectors[0]))[:3])
    assert list(indices[0][3:]) == [-1, -1] and np.isneginf(scores[0][3:]).all()


def _signal_lists(n_lists=60, seed=0):
    rng = np.random.default_rng(seed)
    lists = []
    for _ in range(n_lists):
        features = rng.standard_normal((30, len(FEATURE_NAMES))).astype(np.float32)
        gains = np.clip(np.round(features[:, 3] * 1.5), 0, 3).astype(np.float32)  # relevance follows feature 3
        lists.append(CandidateList(features, gains))
    return lists


def _random_reranker(seed: int = 0) -> RerankerMLP:
    torch.manual_seed(seed)
    return RerankerMLP(len(FEATURE_NAMES), RerankerConfig().hidden).eval()


@pytest.mark.training
def test_reranker_learns_the_signal_in_its_features():
    model = train_reranker(_signal_lists(), RerankerConfig(epochs=40), log=lambda m: None)
    held_out = _signal_lists(n_lists=10, seed=1)
    scores = torch_scorer(model)(held_out[0].features)
    assert np.corrcoef(scores, held_out[0].features[:, 3])[0, 1] > 0.8


def test_reranker_exports_to_onnx_that_matches_pytorch(tmp_path):
    model = _random_reranker()
    probe = np.concatenate([c.features for c in _signal_lists(n_lists=10, seed=1)])
    report = export_reranker(model, tmp_path / "reranker.onnx", probe)
    assert report["max_abs_diff"] < 1e-4
    np.testing.assert_allclose(OnnxReranker(tmp_path / "reranker.onnx")(probe), torch_scorer(model)(probe), atol=1e-4)


def test_reranker_export_fails_the_build_when_onnx_drifts(tmp_path, monkeypatch):
    model = _random_reranker()
    monkeypatch.setattr(OnnxReranker, "__call__", lambda self, f: np.zeros(len(f), np.float32) + 5.0)
    with pytest.raises(ExportParityError, match="reranker.onnx drifted"):
        export_reranker(model, tmp_path / "reranker.onnx", _signal_lists(n_lists=2)[0].features)


def test_hybrid_ranker_step_refuses_missing_or_mismatched_query_text():
    dense = _dense()
    hybrid = HybridRanker(dense, LexicalScorer.build(PRODUCTS), lambda f: f[:, 0], n_dense=3, n_lexical=3)
    step = RankerStep(dense, "embedding", 4, hybrid)
    vectors = dense.vectors[:2]
    good = {"embedding": vectors, QUERY_TEXT: encode_query_text(["angle", "paint"])}
    outcomes = step.run([{"embedding": vectors}, {"embedding": vectors, QUERY_TEXT: encode_query_text(["one"])}, good])
    assert isinstance(outcomes[0], InvalidInputError) and "needs the query text" in str(outcomes[0])
    assert isinstance(outcomes[1], InvalidInputError) and "expected [2, 512] for 2 query vectors" in str(outcomes[1])
    assert outcomes[2]["CANDIDATE_INDICES"].shape == (2, 4)


def test_query_text_survives_the_fixed_size_uint8_tensor():
    texts = ["deck paint", "caf\u00e9 cr\u00e8me \u4e2d\u6587", "nul\x00byte", "x" * 600, "\u00e9" * 300]
    back = decode_query_text(encode_query_text(texts))
    assert back[:3] == ["deck paint", "caf\u00e9 cr\u00e8me \u4e2d\u6587", "nul byte"]
    # Cut to 512 bytes on a character boundary: never a broken character.
    assert back[3] == "x" * 512 and back[4] == "\u00e9" * 256


def test_trigram_coverage_matches_misspelled_and_run_together_queries():
    lexical = LexicalScorer.build(PRODUCTS)
    coverage = lexical.trigram_coverage("deckpaint premiun", np.arange(len(PRODUCTS)))
    assert coverage.argmax() == 1 and coverage[1] > 0.6 and coverage[2] < 0.3
    assert lexical.trigram_coverage("ab", np.arange(2)).tolist() == [0.0, 0.0]  # too short for a trigram


def test_dense_ranker_step_needs_no_query_text_and_matches_exact_search():
    dense = _dense()
    out = RankerStep(dense, "embedding", 3).run([{"embedding": dense.vectors[:2]}])[0]
    indices, scores = dense.search(dense.vectors[:2], 3)
    np.testing.assert_array_equal(out["CANDIDATE_INDICES"], indices)
    np.testing.assert_array_equal(out["CANDIDATE_SCORES"], scores)


def test_popularity_comes_from_the_catalog_or_from_train_judgment_counts():
    from shopsearch.data.schema import Dataset
    from shopsearch.core.hybrid import catalog_popularity

    products = [Product("a", "A"), Product("b", "B"), Product("c", "C")]
    qrels = {"train": {"q1": {"a": 3, "b": 0}, "q2": {"a": 1}}, "dev": {"q3": {"c": 3}}}
    queries = {"train": {"q1": "x", "q2": "y"}, "dev": {"q3": "z"}}
    counted = Dataset("t", products, queries, qrels, relevant_min_gain=2)
    assert catalog_popularity(counted).tolist() == [2.0, 1.0, 0.0]  # dev judgments never count
    own = Dataset("t", [Product("a", "A", popularity=5.0), Product("b", "B", popularity=0.5)], {}, {}, relevant_min_gain=2)
    assert catalog_popularity(own).tolist() == [5.0, 0.5]


@pytest.mark.parametrize("use_popularity", [True, False])
def test_a_reranker_without_popularity_reads_zero_in_training_and_in_the_build(use_popularity, tiny_dataset, tmp_path):
    """[rerank] use_popularity = false: the feature is 0 for every product on both sides, so the
    served re-ranker sees what it was trained on; with it, both count the same train judgments."""
    from shopsearch.build.search import hybrid_ranker_artifacts
    from shopsearch.core.hybrid import LEXICAL_DIR, POPULARITY, catalog_popularity
    from shopsearch.core.reranker import RERANKER_DIR, save_reranker
    from shopsearch.train.reranker import CheckpointRanker
    from tests.tiny_models import random_search_checkpoint

    checkpoint = random_search_checkpoint(tiny_dataset, tmp_path / "ckpt")
    config = RerankerConfig(hidden=8, use_popularity=use_popularity)
    save_reranker(RerankerMLP(len(FEATURE_NAMES), config.hidden), config, checkpoint / RERANKER_DIR,
                  {"holdout": 0.3, "training_queries": 0, "eval_metrics": {}})
    _, files, _ = hybrid_ranker_artifacts(checkpoint / RERANKER_DIR, tiny_dataset, tmp_path / "work", log=lambda m: None)
    served = np.load(files[f"{LEXICAL_DIR}/{POPULARITY}"])
    trained = CheckpointRanker.load(checkpoint, tiny_dataset, 10, 10, use_popularity).hybrid.lexical.popularity
    counted = catalog_popularity(tiny_dataset.with_holdout(0.3))
    assert counted.any()  # the tiny shop's train judgments name products: "on" differs from "off"
    expected = counted if use_popularity else np.zeros_like(counted)
    np.testing.assert_array_equal(served, expected)
    np.testing.assert_array_equal(trained, expected)


def test_a_batch_makes_one_reranker_call_and_ranks_as_query_by_query():
    calls = []

    def scorer(features):
        calls.append(len(features))
        return features[:, 0] + features[:, 3]

    dense = _dense()
    hybrid = HybridRanker(dense, LexicalScorer.build(PRODUCTS), scorer, n_dense=3, n_lexical=3)
    texts = ["angle bracket", "zzzz", "deck paint"]
    batched = hybrid.rank(texts, dense.vectors[:3], k=4)
    assert len(calls) == 1
    for i, text in enumerate(texts):
        alone = hybrid.rank([text], dense.vectors[i: i + 1], k=4)
        np.testing.assert_array_equal(batched[0][i], alone[0][0])
        np.testing.assert_array_equal(batched[1][i], alone[1][0])
