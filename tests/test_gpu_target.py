"""TARGET=gpu: what runs here (layout, configs, the ONNX Runtime GPU variant, TensorRT's clear
failure) and what needs TensorRT (marked, skipped with the reason where it does not import)."""

import importlib.util
import json
import runpy
from pathlib import Path

import pytest

from shopsearch.build.options import BuildOptions
from shopsearch.build.search import build_repository
from shopsearch.errors import BackendUnavailableError
from shopsearch.triton.repository import read_config
from shopsearch.export.tensorrt import polygraphy_command, profiles_for, require_tensorrt, token_length_stats

ROOT = Path(__file__).resolve().parents[1]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not importable on this machine (CPU-only; no wheel installs here)")


def test_profiles_follow_the_measured_query_lengths():
    profiles = profiles_for({"p50": 6, "p95": 13, "p99": 17, "max": 30, "queries": 100}, max_length=32, max_batch=256, pad_multiple=8)
    interactive, batched = profiles
    # Both take every batch size (an instance picks among its profiles by shape); opt differs.
    assert interactive.batch == (1, 1, 256) and interactive.sequence == (1, 8, 32)
    assert batched.batch == (1, 32, 256) and batched.sequence == (1, 16, 32)
    assert "p50=6" in interactive.why and "p95=13" in batched.why


def test_token_length_stats_measure_real_token_counts(random_checkpoint):
    from shopsearch.core.tokenization import TextEncoder

    encoder = TextEncoder.from_file(random_checkpoint / "tokenizer.json", 32)
    stats = token_length_stats(encoder, ["tent", "blue tent", "stainless steel frying pan 12 inch"] * 10)
    assert 3 <= stats["p50"] <= stats["p95"] <= stats["max"] <= 32 and stats["queries"] == 30


def test_saved_build_command_declares_one_shape_set_per_profile():
    profiles = profiles_for({"p50": 6, "p95": 13, "p99": 17, "max": 30, "queries": 1}, 32, 256, 8)
    command = polygraphy_command(Path("model.fp16.onnx"), Path("model.plan"), profiles)
    # FP16 comes from the graph's own types (a strongly typed network), not the deprecated FP16 flag.
    assert command.startswith("polygraphy convert model.fp16.onnx --convert-to trt -o model.plan --strongly-typed")
    assert "--fp16" not in command and "--version-compatible" not in command
    assert "--version-compatible" in polygraphy_command(Path("m.onnx"), Path("m.plan"), profiles, version_compatible=True)
    assert command.count("--trt-opt-shapes") == 2
    assert "'input_ids:[1,8]'" in command and "'attention_mask:[32,16]'" in command


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is importable here; the missing-TensorRT message cannot be shown")
def test_tensorrt_target_stops_at_once_naming_what_is_missing(tmp_path, tiny_dataset):
    with pytest.raises(BackendUnavailableError, match="needs the TensorRT Python package.*GPU_BACKEND=onnxruntime"):
        require_tensorrt()
    # The build stops before exporting anything: a checkpoint that does not exist is never read.
    with pytest.raises(BackendUnavailableError):
        build_repository(tmp_path / "no-checkpoint", tiny_dataset, tmp_path / "repo", tmp_path / "work",
                         BuildOptions(target="gpu", gpu_backend="tensorrt"))
    assert not (tmp_path / "repo").exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is importable here")
def test_the_build_script_for_target_gpu_fails_with_a_clear_message_and_exit_code_2(tmp_path, capsys):
    build_repo = runpy.run_path(str(ROOT / "build" / "build_repo.py"))  # what `make build-repo` runs
    code = build_repo["main"](["--checkpoint", str(tmp_path), "--recipe", str(ROOT / "training/recipes/tiny.toml"),
                               "--out", str(tmp_path / "repo"), "--target", "gpu"])
    assert code == 2
    assert "error: TARGET=gpu GPU_BACKEND=tensorrt needs the TensorRT Python package" in capsys.readouterr().err


@pytest.fixture(scope="module")
def gpu_onnxruntime_repo(random_checkpoint, random_rec_checkpoint, tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_ort")
    build_repository(random_checkpoint, tiny_dataset, root / "repo", root / "work",
                     BuildOptions(target="gpu", gpu_backend="onnxruntime", parity_queries=50), log=lambda m: None,
                     rec_checkpoint=random_rec_checkpoint)
    return root / "repo"


def test_gpu_onnxruntime_build_lays_out_a_complete_repository(gpu_onnxruntime_repo, tiny_dataset):
    repo = gpu_onnxruntime_repo
    embedder = read_config(repo / "embedder")
    assert embedder.platform == "onnxruntime_onnx" and (repo / "embedder" / "1" / "model.onnx").exists()
    assert not (repo / "embedder" / "1" / "model.py").exists()
    for name in ("tokenizer", "ranker", "postprocess"):
        assert read_config(repo / name).backend == "python" and (repo / name / "1" / "model.py").exists()
    assert read_config(repo / "tokenizer").parameters["pad_multiple"].string_value == "8"
    manifest = json.loads((repo / "embedder" / "1" / "manifest.json").read_text())
    assert manifest["artifact"] == "onnx_fp32" and manifest["parity"]["passed"]
    assert manifest["checkpoint_sha256"] and manifest["catalog_fingerprint"] == tiny_dataset.fingerprint()


def test_gpu_onnxruntime_build_serves_the_user_encoder_natively(gpu_onnxruntime_repo):
    repo = gpu_onnxruntime_repo
    encoder = read_config(repo / "user_encoder")
    assert encoder.platform == "onnxruntime_onnx" and encoder.instance_group[0].kind == encoder.instance_group[0].KIND_GPU
    assert (repo / "user_encoder" / "1" / "model.onnx").exists() and not (repo / "user_encoder" / "1" / "model.py").exists()
    # The ensemble feeds it the tensor its graph declares.
    step = read_config(repo / "recommend").ensemble_scheduling.step[1]
    assert step.model_name == "user_encoder" and list(step.input_map) == [encoder.input[0].name]


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_tensorrt_engine_builds_and_passes_its_parity_gate(random_checkpoint, tiny_dataset, tmp_path):
    repo = tmp_path / "repo"
    report = build_repository(random_checkpoint, tiny_dataset, repo, tmp_path / "work",
                              BuildOptions(target="gpu", gpu_backend="tensorrt", parity_queries=50), log=lambda m: None)
    assert report["parity"]["trt_fp16"]["passed"]
    assert (repo / "embedder" / "1" / "model.plan").exists()
    assert (repo / "embedder" / "1" / "build_command.txt").read_text().startswith("polygraphy convert")


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_user_encoder_engine_builds_and_passes_its_parity_gate(random_checkpoint, random_rec_checkpoint, tiny_dataset, tmp_path):
    repo = tmp_path / "repo"
    report = build_repository(random_checkpoint, tiny_dataset, repo, tmp_path / "work",
                              BuildOptions(target="gpu", gpu_backend="tensorrt", parity_queries=50), log=lambda m: None,
                              rec_checkpoint=random_rec_checkpoint)
    assert report["recommender"]["parity"]["trt_fp16"]["top10_overlap"] >= 0.9
    assert read_config(repo / "user_encoder").platform == "tensorrt_plan"
    assert (repo / "user_encoder" / "1" / "model.plan").exists()
