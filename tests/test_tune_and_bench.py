"""`make tune` and `make bench` machinery against real tritonservers (short runs on the tiny model)."""

import os
from pathlib import Path

import pytest

from shopsearch.perf.bench_serving import TARGETS, bench_serving, report_markdown
from shopsearch.perf.tune import TuneGrid, tune
from shopsearch.triton.tuning import ModelSettings, Tuning

pytestmark = pytest.mark.integration
QUERIES = Path(__file__).resolve().parents[1] / "loadtests" / "perf_data" / "search_queries.json"


def test_tune_measures_each_trial_on_a_real_server_and_saves_a_loadable_file(built_repo, tmp_path):
    grid = TuneGrid(models=("ranker",), instance_counts=(1,), queue_delays_us=(100,), preferred_batch_sizes=((),))
    tuning = tune(built_repo, QUERIES, tmp_path / "work", grid, concurrency=2, measurement_ms=500, log=lambda m: None)
    trials = tuning.measured["trials"]
    assert [t["settings"] for t in trials] == [None, ModelSettings(1, 100).label()]
    assert all(t["throughput"] > 0 and t["p99_ms"] > 0 for t in trials)
    expected_delay = 100 if trials[1]["kept"] else 1000
    assert tuning.models["ranker"].max_queue_delay_us == expected_delay
    assert Tuning.load(tuning.save(tmp_path / "cpu.json")).models == tuning.models


def test_bench_reports_every_comparison_from_one_run(built_repo, tmp_path):
    report = bench_serving(built_repo, QUERIES, tmp_path, concurrency=4, measurement_ms=500, in_process_seconds=1.0,
                           log=lambda m: None, rounds=2)
    assert set(report["runs"]) == {"served_grpc", "served_http", "unbatched_grpc", "tokenizer_batched_grpc", "in_process",
                                   "in_process_batched"}
    for name in ("served_grpc", "served_http", "unbatched_grpc", "tokenizer_batched_grpc"):  # medians of the rounds
        rounds = report["runs"][name]["rounds"]
        assert len(rounds) == 2 and report["runs"][name]["throughput"] == pytest.approx(
            sum(r["throughput"] for r in rounds) / 2, abs=0.11)
    assert report["ratios"]["tokenizer_isolation_cost"] == pytest.approx(
        1 - report["runs"]["served_grpc"]["throughput"] / report["runs"]["tokenizer_batched_grpc"]["throughput"], abs=0.002)
    assert all(r["throughput"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in report["runs"].values())
    assert set(report["compute_share"]) == {"tokenizer", "embedder", "ranker", "postprocess"}
    assert sum(report["compute_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert all(share > 0 for share in report["compute_share"].values())
    assert set(report["targets"]) == set(TARGETS)
    assert report["ratios"]["http_vs_grpc"] == pytest.approx(
        report["runs"]["served_http"]["throughput"] / report["runs"]["served_grpc"]["throughput"], rel=0.01)
    assert report["ratios"]["served_vs_in_process"] == pytest.approx(
        report["runs"]["served_grpc"]["throughput"] / report["runs"]["in_process"]["throughput"], rel=0.01)
    for config in ("batched", "unbatched"):  # every process that served measured, per answered query
        cpu = report["cpu_ms_per_query"][config]
        assert {"tritonserver", "tokenizer", "embedder", "ranker", "postprocess", "perf_analyzer"} <= set(cpu)
        assert all(cpu[p] > 0 for p in ("tritonserver", "tokenizer", "embedder", "ranker", "perf_analyzer"))
        assert 0 < cpu["cores_busy"] <= 2 * (os.cpu_count() or 1)
    markdown = report_markdown(report)
    assert "max_batch_size 1" in markdown and "tokenizer_compute_share" in markdown and "| perf_analyzer |" in markdown
