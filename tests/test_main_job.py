"""The README's main job, stage by stage, through the same scripts the Makefile calls
(on the tiny recipe so it takes a minute): train -> build-repo -> serve -> query."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shopsearch.ops.server import free_port

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.integration
def test_train_build_serve_and_query_through_the_scripts(tmp_path):
    checkpoint, repo = tmp_path / "ck", tmp_path / "repo"
    out = run("training/train_search.py", "--recipe", "training/recipes/tiny.toml", "--out", str(checkpoint), "--steps", "40")
    assert "dev metrics" in out and (checkpoint / "checkpoint.json").exists()
    assert "re-ranker dev [hybrid]" in out and (checkpoint / "reranker" / "reranker.json").exists()  # stage 2
    # Stage 1 leaves the dense dev evaluation to stage 2 (one catalog embedding, not two); the card has its numbers.
    assert "measured by the re-ranker stage" in out
    card = json.loads((checkpoint / "checkpoint.json").read_text())
    assert card["dev_metrics"] == json.loads((checkpoint / "reranker" / "reranker.json").read_text())["eval_metrics"]["dense"]
    assert set(card["dev_metrics"]) >= {"ndcg@10", "recall@100", "mrr@10", "queries"}
    rec_checkpoint = tmp_path / "rec"
    out = run("training/train_recommender.py", "--data", "synthetic", "--recipe", "training/recipes/rec_tiny.toml",
              "--out", str(rec_checkpoint), "--search-checkpoint", str(checkpoint))
    assert "title vectors: 2000 items" in out and (rec_checkpoint / "recommender.json").exists()
    out = run("build/build_repo.py", "--checkpoint", str(checkpoint), "--recipe", "training/recipes/tiny.toml",
              "--out", str(repo), "--work", str(tmp_path / "work"), "--rec-checkpoint", str(rec_checkpoint))
    manifest = json.loads((repo / "build_manifest.json").read_text())
    assert manifest["parity"]["onnx_fp32"]["numbers"]["max_abs_diff"] < 1e-4
    assert manifest["served_embedder"] == "onnx_int8" and manifest["parity"]["onnx_int8"]["passed"]
    for model in ("tokenizer", "embedder", "ranker", "postprocess", "search"):
        version = json.loads((repo / model / "1" / "manifest.json").read_text())
        assert version["checkpoint_sha256"] == manifest["checkpoint_sha256"] and version["code_version"]
    assert manifest["catalog"]["products"] == 2000
    assert manifest["ranker"]["mode"] == "hybrid" and manifest["ranker"]["reranker_export"]["max_abs_diff"] < 1e-4
    recs = manifest["recommender"]
    assert recs["same_catalog_as_search"] and recs["items"] == 2000 and recs["parity"]["onnx_fp32"]["max_abs_diff"] < 1e-4
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == [
        "embedder", "item_embedding", "item_lookup", "postprocess", "ranker", "rec_postprocess", "rec_ranker",
        "recommend", "search", "similar_items", "tokenizer", "user_encoder"]
    ports = [str(free_port()) for _ in range(3)]
    out = run("-m", "shopsearch.cli", "serve", "--repo", str(repo), "--http-port", ports[0], "--grpc-port", ports[1],
              "--metrics-port", ports[2], "--log", str(tmp_path / "triton.log"), "--exit-after-ready",
              "--admin-key-file", str(tmp_path / "admin.key"))
    # Model control is on, behind a key only the owner can read.
    assert (tmp_path / "admin.key").stat().st_mode & 0o777 == 0o600 and len((tmp_path / "admin.key").read_text().strip()) > 30
    assert "> red running shoes" in out and "tritonserver is ready" in out and "tritonserver stopped" in out
    first_hit = out.split("> red running shoes", 1)[1].splitlines()[1]
    assert first_hit.strip().startswith("1.")
    assert "> recommend after" in out and "[model]" in out and "> similar to" in out


def test_build_fails_with_a_clear_message_when_the_checkpoint_is_missing(tmp_path, capsys):
    import runpy

    build_repo = runpy.run_path(str(ROOT / "build" / "build_repo.py"))  # what `make build-repo` runs
    code = build_repo["main"](["--checkpoint", str(tmp_path / "none"), "--recipe", str(ROOT / "training/recipes/tiny.toml"),
                               "--out", str(tmp_path / "repo"), "--work", str(tmp_path / "work")])
    assert code == 2 and "encoder.pt is missing (train first)" in capsys.readouterr().err


def test_make_help_lists_every_target():
    result = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    for target in ("demo", "train", "train-rec", "eval-rec", "recommend", "train-reranker", "build-repo", "serve", "query", "eval", "tune", "bench", "deploy", "rollback", "test"):
        assert f"  {target}" in result.stdout
