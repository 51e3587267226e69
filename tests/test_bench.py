from shopsearch.perf.bench_models import BASELINE, bench_models, format_table


def test_bench_models_measures_every_variant_side_by_side(random_checkpoint, unit_repo, tmp_path, attention_fusion):
    report = bench_models(random_checkpoint, tmp_path, batches=(1, 4), sequences=(16, 32), threads=1,
                          min_seconds=0.01, repo=unit_repo)
    variants = {r["variant"] for r in report["rows"]}
    assert variants == {BASELINE, "onnxruntime_fp32", "onnxruntime_fused", "onnxruntime_fused_int8",
                        "onnxruntime_fused_int8_rowwise"}
    assert {(r["batch"], r["seq"]) for r in report["rows"]} == {(1, 16), (1, 32), (4, 16), (4, 32)}
    assert all(r["queries_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in report["rows"])
    assert all(r["speedup_vs_pytorch"] == 1.0 for r in report["rows"] if r["variant"] == BASELINE)
    assert report["artifact_bytes"]["onnxruntime_fused_int8"] < report["artifact_bytes"]["onnxruntime_fp32"]
    assert report["repository_bytes"] > 0 and report["thread_rows"]
    assert "x pytorch" in format_table(report)
