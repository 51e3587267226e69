"""`make ladder` end to end on the tiny shop: a rung built, measured in quality, size and served speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopsearch.errors import ConfigError
from shopsearch.evaluation.ladder import Rung, ladder_markdown, run_ladder, write_ladder
from shopsearch.perf.perf_analyzer import ensemble_input_data


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
                        concurrency=2, measurement_ms=500, log=lambda m: None)
    (row,) = report["rows"]
    assert row["precision"] == "fp32" and row["artifact"] == "onnx_fp32" and row["served_qps"] > 0
    assert set(row["dense"]) == set(row["hybrid"]) == {"ndcg@10", "recall@100", "mrr@10"}
    assert row["parameters_m"] > 0 and row["artifact_mb"] > 0 and row["catalog_embedding_s"] > 0
    assert "| random | fp32 |" in ladder_markdown(report) and report["bm25"]["ndcg@10"] > 0
    paths = write_ladder(report, tmp_path / "out")
    assert all(p.exists() for p in paths) and paths[-1].stat().st_size > 5000
