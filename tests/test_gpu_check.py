"""`make gpu-check`, proven here before a GPU sees it: its --dry-run runs every step on the CPU at a
tiny size, in a Python that cannot import what the GPU hosts lack (they have torch with CUDA,
transformers, onnx and onnxruntime; no TensorRT, no tritonserver, none of our serving or report
packages; the pytrec_eval wheel travels with the tree, see `make gpu-wheels`)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_GPU_HOSTS = ("tensorrt", "polygraphy", "pytriton", "tritonclient", "grpc", "bm25s", "Stemmer", "pyarrow",
                       "matplotlib", "prometheus_client", "kubernetes_validate", "locust", "gevent")
RUNNER = """
import sys
for absent in %r:
    try:
        __import__(absent)
    except ImportError:
        continue
    raise SystemExit(f"{absent} is still importable: the test would not prove anything")
from shopsearch.cli import main
sys.exit(main(sys.argv[1:]))
""" % (ABSENT_ON_GPU_HOSTS,)


def site_packages_without(absent: tuple[str, ...], into: Path) -> Path:
    """This venv's site-packages as links, less the absent packages and their metadata: a Python
    started with -S and this directory on its path cannot import them, as if never installed."""
    import site

    source = next(Path(p) for p in site.getsitepackages() if Path(p).name == "site-packages")
    into.mkdir()
    names = {a.lower() for a in absent}
    for entry in source.iterdir():
        distribution = entry.name.lower().split("-")[0].split(".")[0]
        if distribution in names:
            continue
        (into / entry.name).symlink_to(entry)
    return into


def test_gpu_check_dry_run_runs_every_step_without_what_gpu_hosts_lack(tmp_path):
    out = tmp_path / "gpu_check"
    packages = site_packages_without(ABSENT_ON_GPU_HOSTS, tmp_path / "site-packages")
    env = {"PYTHONPATH": f"{ROOT}:{packages}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-S", "-c", RUNNER, "gpu-check", "--dry-run", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["plan"]["dry_run"] and report["environment"]["gpu"] is None
    for model, metric in (("search", "ndcg@10"), ("recommender", "hr@10")):
        runs = report["training"][model]
        assert set(runs) == {"cpu_fp32", "cuda_bf16", "cuda_fp16"}
        assert all(r["final_loss"] > 0 and 0 <= r[metric] <= 1 for r in runs.values())
        assert set(report["training"][f"{model}_vs_cpu"]) == {"cuda_bf16", "cuda_fp16"}
    # the trained encoder and every planned shape, at every batch and sequence
    plan = report["plan"]
    assert len(report["encoders"]) == (1 + len(plan["shapes"])) * len(plan["batches"]) * len(plan["sequences"])
    assert all(r["sequences_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in report["encoders"])
    catalog = report["catalog"]["fp32"]  # the dry run's "device" is this CPU in FP32: it must match the artifact
    assert catalog["mean_cosine"] > 0.9999 and catalog["top10_overlap"] == 1.0
    assert all(c["passed"] for c in report["checks"]) and len(report["goals"]) == 4
    markdown = (out / "gpu_check.md").read_text()
    assert "dry run on the CPU" in markdown and "## Goals (recorded, not asserted)" in markdown


def test_gpu_check_refuses_to_pretend_without_cuda(tmp_path):
    import torch

    from shopsearch.errors import BackendUnavailableError
    from shopsearch.evaluation.gpu_check import GpuCheckPlan, run_gpu_check

    if torch.cuda.is_available():
        return  # on a GPU host the real run is `make gpu-check`
    try:
        run_gpu_check(GpuCheckPlan(), tmp_path, log=lambda m: None)
    except BackendUnavailableError as exc:
        assert "no CUDA device" in str(exc) and "--dry-run" in str(exc)
    else:
        raise AssertionError("gpu-check ran without CUDA and without --dry-run")
