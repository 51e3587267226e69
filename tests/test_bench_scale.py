"""make bench-scale's parts that run without a server: the Zipf replay and resumable catalog chunks."""

from __future__ import annotations

from collections import Counter

import numpy as np

import shopsearch.perf.bench_scale as bench_scale
from shopsearch.core.tokenization import EncodedBatch


def test_the_zipf_replay_repeats_a_few_head_queries_and_is_the_same_every_run():
    queries = [f"query {i}" for i in range(1000)]
    stream = bench_scale.zipf_stream(queries, 20_000)
    assert stream == bench_scale.zipf_stream(queries, 20_000)
    counts = Counter(stream).most_common()
    head = sum(c for _, c in counts[:10]) / len(stream)
    assert head > 0.3 and len(counts) > 400  # a heavy head and a long tail
    assert counts[0][1] > 5 * counts[50][1]


class CountingEmbedder:
    """Embeds each text as [its length, 1]; counts the texts it was asked for."""

    def __init__(self):
        self.texts = 0

    def embed(self, batch: EncodedBatch) -> np.ndarray:
        self.texts += len(batch.input_ids)
        return np.stack([batch.attention_mask.sum(axis=1), np.ones(len(batch.input_ids))], axis=1).astype(np.float32)


def test_catalog_chunks_resume_where_a_run_stopped_and_a_new_embedder_starts_over(tmp_path, monkeypatch, tiny_dataset):
    from shopsearch.core.tokenization import TextEncoder
    from tests.tiny_models import word_tokenizer

    monkeypatch.setattr(bench_scale, "CHUNK", 100)
    texts = [p.search_text() for p in tiny_dataset.products[:350]]
    encoder = TextEncoder(word_tokenizer(texts), 16)
    first = CountingEmbedder()
    full = bench_scale.embed_catalog(first, encoder, texts, tmp_path / "chunks", "embedder-a")
    assert full.shape == (350, 2) and first.texts == 350
    (tmp_path / "chunks" / "chunk_00002.npy").unlink()  # a run stopped before its third chunk was written
    resumed = CountingEmbedder()
    np.testing.assert_array_equal(bench_scale.embed_catalog(resumed, encoder, texts, tmp_path / "chunks", "embedder-a"), full)
    assert resumed.texts == 100
    other = CountingEmbedder()
    bench_scale.embed_catalog(other, encoder, texts, tmp_path / "chunks", "embedder-b")
    assert other.texts == 350  # another embedder's vectors are never reused


def test_cold_timing_drops_the_mapped_vectors_and_answers_the_same(tmp_path):
    import pytest

    from shopsearch.core.ann import IndexSpec
    from shopsearch.core.index import CatalogIndex
    from shopsearch.errors import ShopSearchError

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    CatalogIndex.build(vectors, "e", IndexSpec(kind="ivf", nprobe=8)).save(tmp_path)
    index = CatalogIndex.load(tmp_path)
    warm = index.search(queries, 10)
    assert bench_scale.time_search_cold(index, queries, 10) > 0
    np.testing.assert_array_equal(index.search(queries, 10)[0], warm[0])  # re-read from the file, same answer
    with pytest.raises(ShopSearchError, match="in memory"):
        bench_scale.drop_vector_pages(CatalogIndex(vectors, "e"))
