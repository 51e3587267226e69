"""`make ladder` end to end on the tiny shop: a rung built, measured in quality, size and served speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopsearch.errors import ConfigError
from shopsearch.evaluation.ladder import Rung, ladder_markdown, run_ladder, write_ladder
from shopsearch.perf.perf_analyzer import SweepPoint, ensemble_input_data


def test_a_rung_names_its_checkpoint_and_optionally_its_precisions():
    assert Rung.parse("teacher=artifacts/ck") == Rung("teacher", Path("artifacts/ck"), ())
    assert Rung.parse("student=ck:int8").precisions == ("int8",)
    with pytest.raises(ConfigError, match="LABEL=CHECKPOINT_DIR"):
        Rung.parse("no-label")
    with pytest.raises(ConfigError, match="fp16"):
        Rung.parse("x=ck:fp16")


@pytest.mark.integration
def test_the_ladder_builds_measures_and_reports_every_rung(random_checkpoint, tiny_dataset, tmp_path):
    import json

    queries = tmp_path / "queries.json"
    queries.write_text(json.dumps(ensemble_input_data(tiny_dataset, 50)))
    report = run_ladder([Rung("random", random_checkpoint, ("fp32",))], tiny_dataset, tmp_path / "ladder", queries,
                        concurrency=2, measurement_ms=500, rounds=2, log=lambda m: None)
    (row,) = report["rows"]
    assert row["precision"] == "fp32" and row["artifact"] == "onnx_fp32" and row["served_qps"] > 0
    assert len(row["served_rounds"]) == 2 and all(r["qps"] > 0 for r in row["served_rounds"])
    assert set(row["dense"]) == set(row["hybrid"]) == {"ndcg@10", "recall@100", "mrr@10"}
    assert row["parameters_m"] > 0 and row["artifact_mb"] > 0 and row["catalog_embedding_s"] > 0 and row["mflops_per_query"] > 0
    assert "| random | fp32 |" in ladder_markdown(report) and report["bm25"]["ndcg@10"] > 0
    paths = write_ladder(report, tmp_path / "out")
    assert all(p.exists() for p in paths) and paths[-1].stat().st_size > 5000


def test_a_rung_the_parity_gate_refuses_is_reported_and_the_rest_still_measured(random_checkpoint, tiny_dataset, tmp_path,
                                                                                  monkeypatch):
    import json

    from shopsearch.errors import ExportParityError
    from shopsearch.evaluation import ladder

    def fake_measure(rung, precision, *args, **kwargs):
        if precision == "int8":
            raise ExportParityError("onnx_int8", [("min_cosine", 0.99, ">= 0.98", True), ("top10_overlap", 0.91, ">= 0.95", False)])
        return {"label": rung.label, "precision": precision, "dense": {"ndcg@10": 0.2, "recall@100": 0.5, "mrr@10": 0.3},
                "hybrid": {"ndcg@10": 0.25, "recall@100": 0.6, "mrr@10": 0.35}, "parameters_m": 1.0,
                "mflops_per_query": 2.0, "artifact_mb": 1.0, "catalog_embedding_s": 0.1, "repository": f"{rung.label}/repo"}

    monkeypatch.setattr(ladder, "measure_rung", fake_measure)
    served = iter([SweepPoint("search", 16, qps, 1.0, qps / 2, 0.0, 0.0) for qps in (10.0, 30.0, 20.0)])
    monkeypatch.setattr(ladder, "measure_repository", lambda *args, **kwargs: next(served))
    report = run_ladder([Rung("random", random_checkpoint)], tiny_dataset, tmp_path / "out", tmp_path / "unused.json",
                        rounds=3, log=lambda m: None)
    assert [r["precision"] for r in report["rows"]] == ["fp32", "int8"] and "top10_overlap" in report["rows"][1]["refused"]
    # Only the measured row is served, once per round; it reports the median of its rounds.
    assert [r["qps"] for r in report["rows"][0]["served_rounds"]] == [10.0, 30.0, 20.0]
    assert report["rows"][0]["served_qps"] == 20.0 and report["rows"][0]["served_p99_ms"] == 10.0
    table = ladder_markdown(report)
    assert "| random | int8 | exact | refused by the parity gate: onnx_int8: top10_overlap = 0.91 (bound >= 0.95) |" in table
    assert len({line.count("|") for line in table.splitlines() if line.startswith("|")}) == 1  # one column count
    # Written after every row: what was measured survives a crash of a later rung.
    assert json.loads((tmp_path / "out" / "ladder.json").read_text())["rows"] == report["rows"]


def test_each_catalog_index_is_a_row_and_one_the_recall_gate_refuses_is_reported(random_checkpoint, tiny_dataset, tmp_path,
                                                                                   monkeypatch):
    from shopsearch.core.ann import IndexSpec
    from shopsearch.errors import IndexRecallError
    from shopsearch.evaluation import ladder

    built = []

    def fake_measure(rung, precision, dataset, queries, judged, work, tuning, log, reference=None, index=IndexSpec()):
        built.append((precision, index.kind))
        if index.kind == "ivf":
            raise IndexRecallError("ivf", 0.91, 0.98, 12)
        return {"label": rung.label, "precision": precision, "dense": {"ndcg@10": 0.2, "recall@100": 0.5, "mrr@10": 0.3},
                "hybrid": {"ndcg@10": 0.25, "recall@100": 0.6, "mrr@10": 0.35}, "parameters_m": 1.0,
                "mflops_per_query": 2.0, "artifact_mb": 1.0, "catalog_embedding_s": 0.1, "repository": f"{index.kind}/repo",
                "index": ladder.index_summary({"kind": index.kind, "build_s": 1.0, "recall@100_vs_exact": 0.99,
                                               "spec": {"ef_search": 64}} if index.approximate else {"kind": "exact"})}

    monkeypatch.setattr(ladder, "measure_rung", fake_measure)
    served = iter([SweepPoint("search", 16, qps, 1.0, 2.0, 0.0, 0.0) for qps in (10.0, 30.0)])
    monkeypatch.setattr(ladder, "measure_repository", lambda *args, **kwargs: next(served))
    report = run_ladder([Rung("random", random_checkpoint, ("int8",))], tiny_dataset, tmp_path / "out", tmp_path / "unused.json",
                        log=lambda m: None, indexes=(IndexSpec(), IndexSpec(kind="hnsw"), IndexSpec(kind="ivf")))
    assert built == [("int8", "exact"), ("int8", "hnsw"), ("int8", "ivf")]
    assert [r["index"]["kind"] for r in report["rows"]] == ["exact", "hnsw", "ivf"]
    assert [r.get("served_qps") for r in report["rows"]] == [10.0, 30.0, None]  # the refused index is not served
    table = ladder_markdown(report)
    assert "| random | int8 | hnsw (ef_search 64, R@100 0.9900) |" in table
    assert "| random | int8 | ivf | refused by the recall gate: ivf recall@100 0.9100 < 0.98 |" in table
    assert len({line.count("|") for line in table.splitlines() if line.startswith("|")}) == 1


def test_tune_each_serves_every_row_at_the_settings_its_own_sweep_found(random_checkpoint, tiny_dataset, tmp_path, monkeypatch):
    from shopsearch.evaluation import ladder
    from shopsearch.triton.tuning import ModelSettings, Tuning

    def fake_measure(rung, precision, *args, **kwargs):
        return {"label": rung.label, "precision": precision, "dense": {"ndcg@10": 0.2, "recall@100": 0.5, "mrr@10": 0.3},
                "hybrid": {"ndcg@10": 0.25, "recall@100": 0.6, "mrr@10": 0.35}, "parameters_m": 1.0,
                "mflops_per_query": 2.0, "artifact_mb": 1.0, "catalog_embedding_s": 0.1,
                "repository": str(tmp_path / precision / "model_repository")}

    tuned_repos, served_repos = [], []

    def fake_tune(repo, queries, work, grid, concurrency, log):
        instances = 2 if "int8" in str(repo) else 1
        return Tuning({"embedder": ModelSettings(instances, 100)},
                      {"as_built": {"throughput": 10.0}, "best": {"throughput": 12.0 * instances}, "seconds": 1.0})

    def fake_variant(src, dst, tuning):
        tuned_repos.append((Path(src).parent.name, tuning.models["embedder"].instance_count))
        return dst

    def fake_serve(repo, *args, **kwargs):
        served_repos.append(Path(repo).name)
        return SweepPoint("search", 16, 20.0, 1.0, 2.0, 0.0, 0.0)

    monkeypatch.setattr(ladder, "measure_rung", fake_measure)
    monkeypatch.setattr(ladder, "tune", fake_tune)
    monkeypatch.setattr(ladder, "variant_repository", fake_variant)
    monkeypatch.setattr(ladder, "measure_repository", fake_serve)
    report = run_ladder([Rung("random", random_checkpoint)], tiny_dataset, tmp_path / "out", tmp_path / "unused.json",
                        rounds=2, log=lambda m: None, tune_each=True)
    assert tuned_repos == [("fp32", 1), ("int8", 2)]  # each row's own sweep, applied to its own repository
    assert served_repos == ["model_repository_tuned"] * 4  # 2 rows x 2 rounds, all tuned
    assert report["rows"][1]["tuning"]["settings"] == {"embedder": "instances=2 delay_us=100 preferred=-"}
    assert "- random int8 exact: embedder instances=2 delay_us=100 preferred=- (sweep: as built 10.0 -> 24.0 q/s)" in ladder_markdown(report)
