"""The repository a build lays out holds exactly the models it built, and the server loads exactly those."""

from __future__ import annotations

import json
import shutil

import pytest

from shopsearch.build.options import BuildOptions
from shopsearch.build.search import build_repository
from shopsearch.errors import ArtifactError
from shopsearch.ops.server import TritonServer
from shopsearch.triton.repository import BUILD_MANIFEST, built_models, version_numbers

SEARCH = ["tokenizer", "embedder", "ranker", "postprocess", "search"]
RECS = ["item_lookup", "user_encoder", "item_embedding", "rec_ranker", "rec_postprocess", "recommend", "similar_items"]


def test_a_full_build_lists_every_model_it_laid_out(unit_repo):
    assert sorted(built_models(unit_repo)) == sorted(SEARCH + RECS)
    assert sorted(p.name for p in unit_repo.iterdir() if p.is_dir()) == sorted(SEARCH + RECS)
    assert all(version_numbers(unit_repo / m) == [1] for m in SEARCH + RECS)


def test_a_search_only_build_over_a_full_one_removes_the_models_it_did_not_build(unit_repo, random_checkpoint,
                                                                                  tiny_dataset, tmp_path):
    repo = tmp_path / "model_repository"
    shutil.copytree(unit_repo, repo)
    (repo / "README.md").write_text("kept: not a model")
    (repo / "notes").mkdir()  # not a model: never listed by a build
    (repo / "theirs" / "1").mkdir(parents=True)  # someone's own model: not laid out by a build
    (repo / "theirs" / "config.pbtxt").write_text('name: "theirs"')
    # A build from before the manifest listed its models: its own version manifests mark them.
    manifest = json.loads((repo / BUILD_MANIFEST).read_text())
    del manifest["models"]
    (repo / BUILD_MANIFEST).write_text(json.dumps(manifest))
    report = build_repository(random_checkpoint, tiny_dataset, repo, tmp_path / "work",
                              BuildOptions(precision="fp32", intra_op_threads=1), log=lambda m: None)
    assert report["models"] == SEARCH and built_models(repo) == SEARCH
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(SEARCH + ["notes", "theirs"])
    assert (repo / "README.md").exists() and (repo / "theirs" / "config.pbtxt").exists()


def test_the_server_loads_exactly_the_models_the_build_lists(unit_repo):
    command = TritonServer(unit_repo, admin_key="k").command()
    assert "--model-control-mode=explicit" in command
    assert sorted(arg.split("=", 1)[1] for arg in command if arg.startswith("--load-model=")) == sorted(SEARCH + RECS)
    # Without an admin key the model-control API is still locked: with a key nobody is given.
    locked = TritonServer(unit_repo).command()
    assert [a for a in locked if a.startswith("--http-restricted-api=model-repository,model-config,logging,trace,"
                                              "shared-memory,statistics:admin-key=")]
    # A server started for profiling leaves what perf_analyzer reads over gRPC open, nothing else.
    profiling = TritonServer(unit_repo, profiling=True).command()
    assert [a for a in profiling if a.startswith("--grpc-restricted-protocol=model-repository,logging,trace,shared-memory:")]


def test_the_search_answers_are_cached_where_the_build_asked_and_the_server_gets_the_size(unit_repo, tmp_path):
    from shopsearch.ops.server import find_triton
    from shopsearch.triton.repository import read_config

    assert read_config(unit_repo / "search").response_cache.enable
    for ensemble in ("recommend", "similar_items"):  # answers follow live histories: never cached
        assert not read_config(unit_repo / ensemble).response_cache.enable
    command = TritonServer(unit_repo).command()
    caches = find_triton().caches
    assert (caches / "local" / "libtritoncache_local.so").exists()
    assert f"--cache-directory={caches}" in command and f"--cache-config=local,size={64 << 20}" in command
    # A build without the cache asks the server for none.
    repo = tmp_path / "repo"
    shutil.copytree(unit_repo, repo)
    manifest = json.loads((repo / BUILD_MANIFEST).read_text())
    manifest["response_cache"] = None
    (repo / BUILD_MANIFEST).write_text(json.dumps(manifest))
    assert not [a for a in TritonServer(repo).command() if a.startswith("--cache")]


def test_a_repository_whose_manifest_lists_no_models_is_refused_with_what_to_do(unit_repo, tmp_path):
    repo = tmp_path / "old"
    shutil.copytree(unit_repo, repo)
    manifest = json.loads((repo / BUILD_MANIFEST).read_text())
    del manifest["models"]
    (repo / BUILD_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="lists no models.*make build-repo"):
        TritonServer(repo).command()
