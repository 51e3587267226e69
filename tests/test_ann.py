"""Approximate catalog search: index round trip, determinism, the recall gate, memory mapping."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from shopsearch.core.ann import ANN_FILE, IndexSpec, ann_search, recall_at
from shopsearch.core.index import INDEX_MANIFEST, CatalogIndex, array_file_sha256
from shopsearch.errors import ArtifactError, ConfigError, IndexRecallError

APPROXIMATE = ("ivf", "hnsw")


def clustered_catalog(n: int = 4000, dim: int = 32, clusters: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `clusters` centres (embeddings of a catalog cluster by product type),
    and 60 queries near catalog products."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    queries = vectors[rng.integers(0, n, 60)] + 0.2 * rng.standard_normal((60, dim))
    return vectors, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_an_approximate_index_round_trips_and_answers_the_same_every_time(kind, tmp_path):
    vectors, queries = clustered_catalog()
    built = CatalogIndex.build(vectors, "embedder-x", IndexSpec(kind=kind, nprobe=16))
    manifest = built.save(tmp_path)
    assert manifest["index"]["kind"] == kind and (tmp_path / ANN_FILE).stat().st_size == manifest["ann_bytes"] > 0
    loaded = CatalogIndex.load(tmp_path, expected_embedder_id="embedder-x")
    assert isinstance(loaded.vectors, np.memmap), "the served vectors stay on disk, mapped"
    first = loaded.search(queries, 20)
    np.testing.assert_array_equal(built.search(queries, 20)[0], first[0])
    for _ in range(2):
        again = CatalogIndex.load(tmp_path).search(queries, 20)
        np.testing.assert_array_equal(first[0], again[0])
        np.testing.assert_array_equal(first[1], again[1])
    assert recall_at(first[0], loaded.exact_search(queries, 20)[0]) >= 0.9
    assert loaded.checksum() == built.checksum()


def test_equal_scores_come_out_by_catalog_row_like_exact_search():
    vectors, _ = clustered_catalog(n=800)
    # Rows 700..709 are copies of row 3: ten products with exactly row 3's score for any query.
    vectors[700:710] = vectors[3]
    index = CatalogIndex.build(vectors, "e", IndexSpec(kind="hnsw", ef_search=200))
    rows, scores = index.search(vectors[3:4], 11)
    assert set(rows[0].tolist()) == {3, *range(700, 710)}
    assert rows[0].tolist() == [3, *range(700, 710)]
    assert np.all(scores[0] == scores[0, 0])
    exact_rows, _ = index.exact_search(vectors[3:4], 11)
    assert exact_rows[0].tolist() == rows[0].tolist()


def test_short_answers_pad_with_minus_one_after_every_real_row():
    rows = np.array([[5, -1, 2, -1]])
    scores = np.array([[0.5, -3.4e38, 0.9, -3.4e38]], dtype=np.float32)

    class Stub:  # an IVF index whose probed cells held two products
        def search(self, queries, k):
            return scores, rows

    got_rows, got_scores = ann_search(Stub(), np.zeros((1, 4), np.float32), 4)
    assert got_rows.tolist() == [[2, 5, -1, -1]]
    assert got_scores[0, :2].tolist() == [pytest.approx(0.9), pytest.approx(0.5)] and np.isneginf(got_scores[0, 2:]).all()


def test_a_tampered_ann_file_or_vector_file_is_refused(tmp_path):
    vectors, _ = clustered_catalog(n=500)
    CatalogIndex.build(vectors, "e", IndexSpec(kind="ivf")).save(tmp_path)
    ann = tmp_path / ANN_FILE
    original = ann.read_bytes()
    ann.write_bytes(original[:-8] + bytes(8))
    with pytest.raises(ArtifactError, match="ann.faiss"):
        CatalogIndex.load(tmp_path)
    ann.unlink()
    with pytest.raises(ArtifactError, match="ann.faiss"):
        CatalogIndex.load(tmp_path)


def test_an_exact_index_saved_over_an_approximate_one_leaves_no_stale_ann_file(tmp_path):
    vectors, queries = clustered_catalog(n=500)
    CatalogIndex.build(vectors, "e", IndexSpec(kind="ivf")).save(tmp_path)
    CatalogIndex.build(vectors, "e").save(tmp_path)
    assert not (tmp_path / ANN_FILE).exists()
    loaded = CatalogIndex.load(tmp_path)
    assert loaded.ann is None and not isinstance(loaded.vectors, np.memmap)
    assert json.loads((tmp_path / INDEX_MANIFEST).read_text())["index"]["kind"] == "exact"


def test_the_vector_checksum_is_read_from_the_file_and_matches_the_array(tmp_path):
    vectors, _ = clustered_catalog(n=300)
    np.save(tmp_path / "v.npy", vectors)
    assert array_file_sha256(tmp_path / "v.npy") == hashlib.sha256(vectors.tobytes()).hexdigest()


def test_index_settings_are_checked_and_name_their_field():
    with pytest.raises(ConfigError, match="kind"):
        IndexSpec(kind="annoy")
    with pytest.raises(ConfigError, match="nprobe"):
        IndexSpec(kind="ivf", nprobe=-1)
    with pytest.raises(ConfigError, match="min_recall"):
        IndexSpec(min_recall=1.5)
    with pytest.raises(ConfigError, match="nprobes"):
        IndexSpec.from_mapping({"nprobes": 3})
    assert IndexSpec().cells(2_000_000) == 5657 and IndexSpec().cells(500) == 12 and IndexSpec(nlist=64).cells(10_000) == 64


def test_recipes_name_their_index_and_the_command_line_overrides_the_kind(tmp_path):
    from shopsearch.train.recipes import load_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\nname = "synthetic"\n[index]\nkind = "ivf"\nnprobe = 48\nmin_recall = 0.99\n')
    loaded = load_recipe(recipe)
    assert loaded.index_spec() == IndexSpec(kind="ivf", nprobe=48, min_recall=0.99)
    assert loaded.index_spec("hnsw") == IndexSpec(kind="hnsw", nprobe=48, min_recall=0.99)
    recipe.write_text('[data]\nname = "synthetic"\n[index]\nkind = "faiss"\n')
    with pytest.raises(ConfigError, match=r"r.toml \[index\]|kind"):
        load_recipe(recipe).index_spec()


def test_the_build_refuses_an_index_below_the_recipes_recall_and_ships_one_above(tmp_path):
    from shopsearch.build.search import index_catalog
    from shopsearch.export.parity import SideOutputs

    vectors, queries = clustered_catalog(n=6000, clusters=60)
    side = SideOutputs(probe_vectors=queries, catalog_vectors=vectors, top10=np.zeros((0, 10)), ndcg10=0.0,
                       query_vectors=queries)
    with pytest.raises(IndexRecallError, match=r"recall@100 .* below \[index\].min_recall 0.99"):
        index_catalog(side, "e", IndexSpec(kind="ivf", nlist=64, nprobe=1, min_recall=0.99), tmp_path / "low", lambda m: None)
    assert not (tmp_path / "low").exists(), "a refused index is never written where the repository reads it"
    index, report = index_catalog(side, "e", IndexSpec(kind="ivf", nlist=64, nprobe=64, min_recall=0.99), tmp_path / "ok",
                                  lambda m: None)
    assert report["recall@100_vs_exact"] >= 0.99 and report["recall_queries"] == len(queries)
    assert report["ann_bytes"] == (tmp_path / "ok" / ANN_FILE).stat().st_size
    # 8-bit codes: about a quarter of the float32 vectors' bytes (plus ids and centroids).
    assert report["ann_bytes"] < 0.5 * vectors.nbytes


def test_a_repository_built_with_an_ivf_index_ranks_hybrid_through_it(random_checkpoint, tiny_dataset, tmp_path):
    """The real build with INDEX=ivf: the ranker's version holds the faiss file, the manifests
    record the index and its measured recall, and the in-process ensemble answers through it."""
    from shopsearch.build.options import BuildOptions
    from shopsearch.build.search import build_repository
    from shopsearch.serving.pipeline import InProcessEnsemble

    repo = tmp_path / "model_repository"
    spec = IndexSpec(kind="ivf", nprobe=8, min_recall=0.5)
    report = build_repository(random_checkpoint, tiny_dataset, repo, tmp_path / "work",
                              BuildOptions(precision="fp32", intra_op_threads=1, index=spec), log=lambda m: None)
    assert report["index"]["kind"] == "ivf" and report["index"]["recall@100_vs_exact"] >= 0.5
    assert (repo / "ranker" / "1" / ANN_FILE).exists()
    ranker_manifest = json.loads((repo / "ranker" / "1" / "manifest.json").read_text())
    assert ranker_manifest["index"]["kind"] == "ivf" and ranker_manifest["mode"] == "hybrid"
    pipeline = InProcessEnsemble.from_repository(repo, "search")
    ranker = next(step for step in pipeline.steps if step.name == "ranker")
    assert ranker.index.ann is not None and isinstance(ranker.index.vectors, np.memmap)
    hits = pipeline.search(["blue tent", "frying pan 12 inch"], top_k=10)
    assert [len(h) for h in hits] == [10, 10] and hits == pipeline.search(["blue tent", "frying pan 12 inch"], top_k=10)


@pytest.mark.parametrize("kind,field", [("ivf", "nprobe"), ("hnsw", "ef_search")])
def test_a_breadth_left_to_the_build_is_the_smallest_that_reaches_the_recall(kind, field, tmp_path):
    from shopsearch.build.search import index_catalog
    from shopsearch.export.parity import SideOutputs

    vectors, queries = clustered_catalog(n=6000, clusters=60)
    side = SideOutputs(probe_vectors=queries, catalog_vectors=vectors, top10=np.zeros((0, 10)), ndcg10=0.0,
                       query_vectors=queries)
    spec = IndexSpec(kind=kind, nlist=64, hnsw_m=8, ef_construction=16, min_recall=0.97, **{field: 0})
    index, report = index_catalog(side, "e", spec, tmp_path, lambda m: None)
    chosen = getattr(index.spec, field)
    tried = report["tuning"]
    assert chosen == tried[-1][field] > 0 and tried[-1]["recall"] >= 0.97
    assert all(step["recall"] < 0.97 for step in tried[:-1])
    # The chosen breadth is what the served index searches with.
    assert getattr(CatalogIndex.load(tmp_path).spec, field) == chosen
    assert report["recall@100_vs_exact"] == tried[-1]["recall"]


class _Untouchable:
    """Stands in for the float32 vectors of an index that must never read them (their shape only)."""

    def __init__(self, shape):
        self.shape = shape

    def __getitem__(self, rows):
        raise AssertionError("the float32 catalog vectors were read")


def test_ivf_without_rescoring_serves_8_bit_scores_and_never_reads_the_float32_vectors(tmp_path):
    vectors, queries = clustered_catalog()
    CatalogIndex.build(vectors, "e", IndexSpec(kind="ivf", nprobe=16, rescore=0)).save(tmp_path)
    index = CatalogIndex.load(tmp_path)
    raw_rows, raw_scores = ann_search(index.ann, queries, 20)
    index.vectors = _Untouchable(vectors.shape)
    rows, scores = index.search(queries, 20)
    np.testing.assert_array_equal(rows, raw_rows)  # the 8-bit answer as it is: no rescoring ...
    np.testing.assert_array_equal(scores, raw_scores)
    exact = CatalogIndex(vectors, "e").exact_search(queries, 20)[0]
    assert recall_at(rows, exact) > 0.9  # ... still close to exact search
    decoded = index.row_vectors(np.array([5, 0, 3999]))  # filters and the hybrid ranker read rows decoded
    np.testing.assert_allclose(decoded, vectors[[5, 0, 3999]], atol=0.02)
    few = np.zeros(len(vectors), dtype=bool)
    few[::100] = True  # few allowed rows: all scored, from the codes
    found, _ = index.search_within(queries, 5, few)
    assert few[found].all()
    rescored = CatalogIndex.build(vectors, "e", IndexSpec(kind="ivf", nprobe=16))
    assert recall_at(rescored.search(queries, 20)[0], exact) >= recall_at(rows, exact)
