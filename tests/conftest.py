"""Session fixtures: a tiny trained model, its built repository, and one real tritonserver."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shopsearch.build import BuildOptions, build_repository
from shopsearch.recipes import RECIPE_DIR, load_recipe
from shopsearch.recs.data import SessionConfig, generate_sessions
from shopsearch.recs.recipe import train_to_checkpoint
from shopsearch.recs.training import RecTrainConfig
from shopsearch.rerank_training import train_reranker_stage
from shopsearch.training import train_biencoder

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHOPSEARCH_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_dataset_dir(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set SHOPSEARCH_SHARED_DATA to its parent)")
    return path


@pytest.fixture(scope="session")
def tiny_recipe():
    return load_recipe(RECIPE_DIR / "tiny.toml")


@pytest.fixture(scope="session")
def tiny_dataset(tiny_recipe):
    return tiny_recipe.dataset()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_recipe, tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("checkpoint")
    train_biencoder(tiny_dataset, tiny_recipe.train_config(), out, log=lambda m: None)
    # The tiny recipe keeps a share of train queries for the re-ranker: the suite serves hybrid ranking.
    train_reranker_stage(out, tiny_dataset, tiny_recipe.reranker_config(), log=lambda m: None)
    return out


TINY_REC_CONFIG = RecTrainConfig(hidden_size=32, num_heads=2, max_length=12, epochs=6, negatives=512,
                                 learning_rate=3e-3, batch_size=64)


@pytest.fixture(scope="session")
def tiny_interactions(tiny_dataset):
    """Purchase sequences over the tiny shop's catalog, some longer than the model's window."""
    return generate_sessions(tiny_dataset.products, SessionConfig(n_users=1500, min_length=3, max_length=20))


@pytest.fixture(scope="session")
def tiny_rec_checkpoint(tiny_interactions, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec_checkpoint")
    train_to_checkpoint(tiny_interactions, TINY_REC_CONFIG, out, tiny_checkpoint, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def built_repo(tiny_checkpoint, tiny_rec_checkpoint, tiny_dataset, tmp_path_factory) -> Path:
    """Search + recommendations, as `make demo` builds them."""
    root = tmp_path_factory.mktemp("build")
    repo = root / "model_repository"
    build_repository(tiny_checkpoint, tiny_dataset, repo, root / "work",
                     BuildOptions(intra_op_threads=1), log=lambda m: None, rec_checkpoint=tiny_rec_checkpoint)
    return repo


@pytest.fixture(scope="session")
def triton_server(built_repo, tmp_path_factory):
    from shopsearch.serving.server import TritonServer

    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer(built_repo, log_path=log)
    server.start(timeout=180)
    yield server
    server.stop()
    if server.process is not None:
        raise AssertionError("tritonserver did not stop")
