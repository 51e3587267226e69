"""README's `make demo` for every `DATA=` it advertises, on tiny data, in a copy of the project: the
same Makefile targets (train, train-rec, build-repo, serve) into the default `model_repository/`,
one after the other, as a newcomer would run them. The server answers the example queries and stops
(SERVE_ARGS=--exit-after-ready); the tiny recipes stand in for the full ones.

A search-only build (Home Depot) laid out where a search + recommendations build (the synthetic
shop) was before must hold only its own models and serve: it once left the recommendation models
behind and the server refused to start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from shopsearch.data.schema import write_jsonl_dataset
from shopsearch.ops.server import free_port
from tests.dataset_files import write_esci, write_homedepot

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration

SEARCH_MODELS = ["tokenizer", "embedder", "ranker", "postprocess", "search"]
REC_MODELS = ["item_lookup", "user_encoder", "item_embedding", "rec_ranker", "rec_postprocess", "recommend", "similar_items"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The project's files as a clone has them (tracked and not ignored), with this venv."""
    copy = tmp_path_factory.mktemp("clone") / "shopsearch"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    # This venv is installed already: its inputs must not look newer than it (make would reinstall).
    for name in ("requirements.txt", "pyproject.toml"):
        os.utime(copy / name, (0, 0))
    return copy


@pytest.fixture(scope="module")
def data_dirs(tiny_dataset, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    write_jsonl_dataset(tiny_dataset, root / "jsonl")
    return {"homedepot": write_homedepot(tiny_dataset, root / "homedepot"), "esci": write_esci(tiny_dataset, root / "esci"),
            "jsonl": root / "jsonl"}


def make_demo(project: Path, data: str, data_dir: Path | None = None) -> subprocess.CompletedProcess:
    ports = {"HTTP_PORT": free_port(), "GRPC_PORT": free_port(), "METRICS_PORT": free_port(), "GATEWAY_PORT": free_port()}
    args = ["make", "--no-print-directory", "demo", f"DATA={data}",
            "RECIPE=training/recipes/tiny.toml", "REC_RECIPE=training/recipes/rec_tiny.toml", "SERVE_ARGS=--exit-after-ready",
            *(f"{k}={v}" for k, v in ports.items()), *([f"DATA_DIR={data_dir}"] if data_dir else [])]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    result = subprocess.run(args, cwd=project, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, f"make demo DATA={data} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def built(project: Path) -> tuple[list[str], list[str]]:
    repo = project / "model_repository"
    listed = json.loads((repo / "build_manifest.json").read_text())["models"]
    on_disk = sorted(p.name for p in repo.iterdir() if p.is_dir())
    return listed, on_disk


def test_the_default_demo_builds_and_serves_search_and_recommendations(project):
    result = make_demo(project, "synthetic")
    listed, on_disk = built(project)
    assert sorted(listed) == sorted(SEARCH_MODELS + REC_MODELS) == on_disk
    assert "tritonserver is ready" in result.stdout and "recommend after" in result.stdout
    assert "product API: http://127.0.0.1:" in result.stdout  # the example queries went through it


def test_a_search_only_build_over_it_holds_and_serves_only_its_own_models(project, data_dirs):
    result = make_demo(project, "homedepot", data_dirs["homedepot"])
    listed, on_disk = built(project)
    assert sorted(listed) == sorted(SEARCH_MODELS) == on_disk
    assert "tritonserver is ready" in result.stdout and "recommend after" not in result.stdout


@pytest.mark.parametrize("data", ["esci", "jsonl"])
def test_every_other_advertised_dataset_demo_serves(project, data_dirs, tiny_dataset, data):
    result = make_demo(project, data, data_dirs[data])
    assert "tritonserver is ready" in result.stdout
    listed, on_disk = built(project)
    assert sorted(listed) == sorted(SEARCH_MODELS) == on_disk
    catalog = json.loads((project / "model_repository" / "build_manifest.json").read_text())["catalog"]
    assert catalog["products"] == len(tiny_dataset.products)
