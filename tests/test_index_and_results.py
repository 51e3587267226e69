import numpy as np
import pytest

from shopsearch.errors import ArtifactError, ConfigError
import shopsearch.core.index as index_module
from shopsearch.core.index import CatalogIndex, ExactSearch, top_k_rows
from shopsearch.core.results import CatalogLookup, hits_to_arrays


def test_top_k_rows_matches_a_full_sort_with_ties_broken_by_index():
    rng = np.random.default_rng(0)
    # Few distinct values: many ties, including at the k-th position.
    scores = rng.integers(0, 5, size=(20, 300)).astype(np.float32)
    indices, top = top_k_rows(scores, 17)
    for r in range(scores.shape[0]):
        expected = np.lexsort((np.arange(300), -scores[r]))[:17]
        np.testing.assert_array_equal(indices[r], expected)
        np.testing.assert_array_equal(top[r], scores[r, expected])


def test_top_k_rows_returns_everything_when_k_exceeds_the_catalog():
    indices, _ = top_k_rows(np.array([[0.1, 0.3, 0.2]], dtype=np.float32), 10)
    assert indices.tolist() == [[1, 2, 0]]


@pytest.mark.parametrize("embedded", [True, False])
def test_exact_search_equals_numpy_scoring_with_ties_broken_by_index(monkeypatch, embedded):
    if not embedded:  # a catalog too large for one protobuf message is fed to every run instead
        monkeypatch.setattr(index_module, "MAX_EMBEDDED_CATALOG_BYTES", 0)
    rng = np.random.default_rng(1)
    # Small integers: products with equal scores, ties at the k-th position included, and exact
    # float arithmetic, so ONNX Runtime's GEMM and numpy's agree to the bit.
    vectors = rng.integers(-2, 3, size=(500, 8)).astype(np.float32)
    search = ExactSearch(vectors)
    assert search.embedded is embedded
    for batch in (1, 3, 16):
        queries = rng.integers(-2, 3, size=(batch, 8)).astype(np.float32)
        rows, scores = search.search(queries, 40)
        expected_rows, expected_scores = top_k_rows(queries @ vectors.T, 40)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(scores, expected_scores)
    rows, _ = search.search(queries, 10_000)  # k beyond the catalog: all of it, in order
    assert rows.shape == (16, 500)


def test_index_search_of_real_valued_vectors_matches_numpy_and_takes_an_empty_batch():
    rng = np.random.default_rng(2)
    index = CatalogIndex(rng.standard_normal((2000, 32)).astype(np.float32), "e")
    queries = rng.standard_normal((5, 32)).astype(np.float32)
    rows, scores = index.search(queries, 20)
    expected_rows, expected_scores = top_k_rows(queries @ index.vectors.T, 20)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    assert (rows == expected_rows).mean() > 0.99  # float rounding may swap exact near-ties only
    empty_rows, empty_scores = index.search(np.zeros((0, 32), dtype=np.float32), 20)
    assert empty_rows.shape == empty_scores.shape == (0, 20)


def test_index_search_rejects_vectors_of_the_wrong_width_naming_the_model():
    index = CatalogIndex(np.eye(4, dtype=np.float32), "e1")
    with pytest.raises(ConfigError, match=r"ranker: query_embedding: expected \[batch, 4\]"):
        index.search(np.ones((1, 3), dtype=np.float32), 2)


def test_index_refuses_to_load_for_a_different_embedder(tmp_path):
    CatalogIndex(np.eye(4, dtype=np.float32), "embedder-a").save(tmp_path)
    assert CatalogIndex.load(tmp_path, "embedder-a").embedder_id == "embedder-a"
    with pytest.raises(ArtifactError, match="built by embedder embedder-a.*served embedder is embedder-b"):
        CatalogIndex.load(tmp_path, "embedder-b")


def test_index_detects_vectors_that_do_not_match_their_manifest(tmp_path):
    CatalogIndex(np.eye(4, dtype=np.float32), "e").save(tmp_path)
    np.save(tmp_path / "index.npy", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ArtifactError, match="checksum"):
        CatalogIndex.load(tmp_path)


def test_finalize_dedupes_keeps_best_score_and_breaks_ties_by_product_id():
    catalog = CatalogLookup(["p3", "p1", "p2", "p0"], ["t3", "t1", "t2", "t0"])
    indices = np.array([[0, 1, 0, 2, 3, -1]])
    scores = np.array([[0.5, 0.9, 0.7, 0.9, 0.1, 5.0]], dtype=np.float32)
    hits = catalog.finalize(indices, scores, top_k=3)[0]
    # p1 and p2 tie at 0.9: p1 first; p3 appears twice, its best score wins; -1 is dropped.
    assert [(h.product_id, round(h.score, 2)) for h in hits] == [("p1", 0.9), ("p2", 0.9), ("p3", 0.7)]


def test_collapse_keeps_the_best_ranked_listing_of_each_title_and_refills_from_below():
    # The Home Depot case: one deck-screw title under three product ids.
    screws = "Grip-Rite #9 x 3 in. Star Bugle-Head Composite Deck Screws (5 lb.-Pack)"
    catalog = CatalogLookup(["A", "B", "C", "D", "E"], [screws, "Deck Stain", f"  {screws.upper()} ", screws, "Hammer"])
    assert catalog.groups.tolist() == [0, 1, 0, 0, 4]
    rows, scores = np.array([[2, 0, 3, 1, 4]]), np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], np.float32)
    assert [h.product_id for h in catalog.finalize(rows, scores, 5)[0]] == ["C", "A", "D", "B", "E"]
    collapsed = catalog.finalize(rows, scores, 3, collapse=True)[0]
    assert [(h.product_id, h.score) for h in collapsed] == [("C", pytest.approx(0.9)), ("B", pytest.approx(0.6)),
                                                            ("E", pytest.approx(0.5))]


def test_the_postprocess_step_collapses_unless_the_request_says_false():
    from shopsearch.errors import InvalidInputError
    from shopsearch.serving.steps import PostprocessStep
    from shopsearch.serving.tensors import CANDIDATE_INDICES, CANDIDATE_SCORES, COLLAPSE, PRODUCT_IDS

    step = PostprocessStep(CatalogLookup(["A", "B", "C"], ["Tent", "tent", "Lamp"]), top_k=3, max_k=3)
    request = {CANDIDATE_INDICES: np.array([[1, 0, 2]]), CANDIDATE_SCORES: np.array([[0.9, 0.8, 0.7]], np.float32)}
    default, kept, bad = step.run([dict(request), {**request, COLLAPSE: np.array([[False]])},
                                   {**request, COLLAPSE: np.array([[True], [False]])}])
    assert default[PRODUCT_IDS][0].tolist() == [b"B", b"C", b""]
    assert kept[PRODUCT_IDS][0].tolist() == [b"B", b"A", b"C"]
    assert isinstance(bad, InvalidInputError) and "COLLAPSE" in str(bad)
    off_by_default = PostprocessStep(step.catalog, top_k=3, max_k=3, collapse=False)
    assert off_by_default.run([dict(request)])[0][PRODUCT_IDS][0].tolist() == [b"B", b"A", b"C"]


def test_hits_to_arrays_pads_short_rows_with_empty_ids():
    catalog = CatalogLookup(["a", "b"], ["Alpha", "Bêta"])
    hits = catalog.finalize(np.array([[1, 0]]), np.array([[0.2, 0.1]], dtype=np.float32), top_k=4)
    ids, titles, scores = hits_to_arrays(hits, 4)
    assert ids.tolist() == [[b"b", b"a", b"", b""]]
    assert titles[0, 0].decode() == "Bêta"
    assert scores.dtype == np.float32 and scores[0, 3] == 0


def test_embedding_a_catalog_shows_progress_and_a_few_queries_stay_quiet(capsys):
    """Minutes of catalog embedding show a bar with an ETA on stderr; query batches print nothing."""
    import numpy as np

    from shopsearch.core.embedding import PROGRESS_FROM, embed_texts
    from shopsearch.core.tokenization import EncodedBatch

    class Encoder:
        def encode_texts(self, texts):
            ids = np.array([[len(t)] for t in texts], dtype=np.int64)
            return EncodedBatch(ids, np.ones_like(ids))

    class Embedder:
        def embed(self, batch):
            return batch.input_ids.astype(np.float32)

    texts = [str(i) for i in range(PROGRESS_FROM)]
    vectors = embed_texts(Embedder(), Encoder(), texts)
    assert vectors[:, 0].tolist() == [len(t) for t in texts]  # input order kept
    assert f"embedding {PROGRESS_FROM} texts" in capsys.readouterr().err
    embed_texts(Embedder(), Encoder(), texts[:50])
    assert capsys.readouterr().err == ""
