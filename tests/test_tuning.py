"""Tuning files, how build-repo applies them, and repository variants (no server)."""

import json

import pytest

from shopsearch.errors import ConfigError
from shopsearch.triton.repository import read_config
from shopsearch.perf.bench_serving import compute_shares
from shopsearch.serving.steps import session_threads
from shopsearch.perf.tune import TuneGrid
from shopsearch.triton.tuning import ModelSettings, Tuning, current_tuning, unbatched_repository, variant_repository
from tests.test_model_config import search_models

TUNED = Tuning({"embedder": ModelSettings(2, 4000, (4, 8)), "ranker": ModelSettings(1, 100)}, {"machine": {"cpus": 2}})


def test_tuning_file_round_trips(tmp_path):
    path = TUNED.save(tmp_path / "tuning" / "cpu.json")
    loaded = Tuning.load(path)
    assert loaded.models == TUNED.models and loaded.measured == TUNED.measured


@pytest.mark.parametrize(
    "content, field",
    [
        ('{"models": {"embedder": {"instance_count": 0}}}', "instance_count"),
        ('{"models": {"embedder": {"max_queue_delay_us": "soon"}}}', "models.embedder"),
        ('{"models": {"reranker": {}}}', "models"),
        ("not json", "tuning file"),
    ],
)
def test_bad_tuning_file_fails_naming_the_field(tmp_path, content, field):
    path = tmp_path / "cpu.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=field):
        Tuning.load(path)


def test_applying_a_tuning_changes_only_the_models_it_names():
    models = search_models()
    tuned = {name: TUNED.apply(config) for name, config in models.items()}
    embedder = tuned["embedder"].to_proto()
    assert embedder.instance_group[0].count == 2
    assert embedder.dynamic_batching.max_queue_delay_microseconds == 4000
    assert list(embedder.dynamic_batching.preferred_batch_size) == [4, 8]
    assert tuned["ranker"].to_proto().dynamic_batching.max_queue_delay_microseconds == 100
    assert tuned["tokenizer"] == models["tokenizer"] and tuned["postprocess"] == models["postprocess"]


def test_build_applies_the_tuning_file_and_records_it(random_checkpoint, tiny_dataset, tmp_path):
    from shopsearch.build.options import BuildOptions
    from shopsearch.build.search import build_repository

    repo = tmp_path / "repo"
    build_repository(random_checkpoint, tiny_dataset, repo, tmp_path / "work", BuildOptions(precision="fp32", intra_op_threads=1),
                     log=lambda m: None, tuning=TUNED)
    assert current_tuning(repo).settings("embedder") == ModelSettings(2, 4000, (4, 8))
    # The tokenizer keeps its build default: one request per execution (malformed bytes fail alone).
    assert current_tuning(repo).settings("tokenizer") == ModelSettings(1, 0, (1,))
    manifest = json.loads((repo / "build_manifest.json").read_text())
    assert manifest["tuning"]["models"]["embedder"]["instance_count"] == 2
    assert manifest["tuning"]["measured_on"] == {"cpus": 2}


def test_variant_repository_rewrites_configs_and_links_artifacts(unit_repo, tmp_path):
    variant = variant_repository(unit_repo, tmp_path / "variant", TUNED)
    assert current_tuning(variant).settings("embedder") == ModelSettings(2, 4000, (4, 8))
    assert current_tuning(variant).settings("tokenizer") == current_tuning(unit_repo).settings("tokenizer")
    assert read_config(unit_repo / "embedder").instance_group[0].count == 1  # the source is untouched
    source, copy = unit_repo / "embedder" / "1" / "model.onnx", variant / "embedder" / "1" / "model.onnx"
    assert copy.read_bytes() == source.read_bytes()


def test_unbatched_repository_turns_batching_off_everywhere(unit_repo, tmp_path):
    variant = unbatched_repository(unit_repo, tmp_path / "unbatched")
    for model in ("tokenizer", "embedder", "ranker", "postprocess", "search"):
        config = read_config(variant / model)
        assert config.max_batch_size == 1 and not config.HasField("dynamic_batching"), model


def test_served_sessions_run_one_thread_unless_threads_are_set():
    from shopsearch.serving.steps import EmbedderParams

    assert session_threads(0) == 1  # Triton parallelises across requests instead
    assert session_threads(EmbedderParams.from_parameters({"vocab_size": "9", "max_length": "8"}, "embedder").intra_op_threads) == 1
    assert session_threads(3) == 3


def test_compute_shares_are_deltas_of_execution_time():
    shares = compute_shares({"tokenizer": 100, "ranker": 1000}, {"tokenizer": 200, "ranker": 1900})
    assert shares == {"ranker": 0.9, "tokenizer": 0.1}


def test_tune_grid_refuses_unknown_models():
    with pytest.raises(ConfigError, match="tune: models"):
        TuneGrid(models=("reranker",))


def test_tune_keeps_a_trial_only_when_clearly_faster_without_worse_p99(unit_repo, tmp_path, monkeypatch):
    from shopsearch.perf.perf_analyzer import SweepPoint
    from shopsearch.perf import tune as tuner

    # Scripted measurements, keyed by the ranker's settings in the variant being measured.
    results = {
        ModelSettings(1, 1000): (100.0, 50.0),  # as built
        ModelSettings(2, 1000): (140.0, 80.0),  # faster but p99 much worse: rejected
        ModelSettings(1, 100): (103.0, 45.0),  # within noise: rejected
        ModelSettings(1, 4000): (130.0, 40.0),  # clearly better: kept
        ModelSettings(1, 4000, (4, 8, 16)): (131.0, 40.0),  # noise on top of the best: rejected
    }

    def fake_measure(repo, input_data, concurrency, work, measurement_ms=2000, model="search"):
        throughput, p99 = results[current_tuning(repo).settings("ranker")]
        return SweepPoint("search", concurrency, throughput, p99 / 2, p99, 0.0, 0.0)

    monkeypatch.setattr(tuner, "measure_repository", fake_measure)
    tuning = tuner.tune(unit_repo, tmp_path / "q.json", tmp_path / "work", TuneGrid(models=("ranker",)), log=lambda m: None)
    assert tuning.models["ranker"] == ModelSettings(1, 4000)
    assert tuning.measured["best"]["throughput"] == 130.0 and tuning.measured["as_built"]["throughput"] == 100.0
    assert [t["kept"] for t in tuning.measured["trials"]] == [True, False, False, True, False]


def test_tuning_never_batches_the_tokenizer_across_requests(unit_repo):
    from shopsearch.build.search_configs import ISOLATED_BATCH_SIZES

    built = current_tuning(unit_repo).settings("tokenizer")
    assert built.preferred_batch_sizes == ISOLATED_BATCH_SIZES and built.max_queue_delay_us == 0
    tuned = Tuning({"tokenizer": ModelSettings(2, 4000, (4, 8))})
    variant = variant_repository(unit_repo, unit_repo.parent / "tokenizer_variant", tuned)
    assert current_tuning(variant).settings("tokenizer") == ModelSettings(2, 0, ISOLATED_BATCH_SIZES)
