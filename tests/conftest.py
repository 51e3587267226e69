"""Session fixtures, by tier.

Unit tier (no marker): the tiny synthetic shop and models with random weights made in memory
(tests/tiny_models.py), built into a repository with the real build; nothing is trained.
Tiers `training` and `integration`: a tiny *trained* bi-encoder, re-ranker and recommender, their
INT8 repository and, for `integration`, one real tritonserver for the session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shopsearch.train.recipes import RECIPE_DIR, load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHOPSEARCH_SHARED_DATA", ROOT.parent / "shared" / "data"))
QUIET = lambda m: None  # noqa: E731 - fixtures build without printing


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
def default_shop():
    """The shop `make demo` trains on (20,000 products, generated: a few seconds, once per session)."""
    from shopsearch.data.synthetic import generate_shop

    return generate_shop()


@pytest.fixture(scope="session")
def tiny_interactions(tiny_dataset):
    """Purchase sequences over the tiny shop's catalog, some longer than the model's window."""
    from shopsearch.data.interactions import SessionConfig, generate_sessions

    return generate_sessions(tiny_dataset.products, SessionConfig(n_users=1500, min_length=3, max_length=20))


# ---- unit tier: random weights, nothing trained ----------------------------------------------

@pytest.fixture(scope="session")
def random_checkpoint(tiny_dataset, tmp_path_factory) -> Path:
    """A search checkpoint (bi-encoder + re-ranker) with random weights over the tiny shop."""
    from tests.tiny_models import random_search_checkpoint

    return random_search_checkpoint(tiny_dataset, tmp_path_factory.mktemp("random_checkpoint"))


@pytest.fixture(scope="session")
def random_rec_checkpoint(tiny_interactions, tmp_path_factory) -> Path:
    from tests.tiny_models import random_rec_checkpoint as make

    return make(tiny_interactions, tmp_path_factory.mktemp("random_rec_checkpoint"))


@pytest.fixture(scope="session")
def unit_repo(random_checkpoint, random_rec_checkpoint, tiny_dataset, tmp_path_factory) -> Path:
    """Search (hybrid ranker) + recommendations laid out by the real build from the random
    checkpoints (FP32 embedder: the INT8 chain has its own parity tests, and the integration tier serves it)."""
    from shopsearch.build.options import BuildOptions
    from shopsearch.build.search import build_repository

    root = tmp_path_factory.mktemp("unit_build")
    repo = root / "model_repository"
    build_repository(random_checkpoint, tiny_dataset, repo, root / "work", BuildOptions(precision="fp32", intra_op_threads=1),
                     log=QUIET, rec_checkpoint=random_rec_checkpoint)
    return repo


@pytest.fixture(scope="session")
def attention_fusion(random_checkpoint, tmp_path_factory) -> None:
    """Skip (with the reason) where this ONNX Runtime's optimizer cannot fuse our export's attention:
    1.32 does; 1.23.2, the newest for Python 3.10, does not (the build then quantizes the plain graph)."""
    from shopsearch.core.modeling import load_checkpoint
    from shopsearch.errors import FusionUnavailableError
    from shopsearch.export.onnx import export_onnx
    from shopsearch.export.optimize import fuse_transformer

    model, _ = load_checkpoint(random_checkpoint)
    work = tmp_path_factory.mktemp("fusion_probe")
    try:
        fuse_transformer(export_onnx(model, work / "model.onnx"), work / "fused.onnx", model.config.num_heads,
                         model.config.hidden_size)
    except FusionUnavailableError as exc:
        pytest.skip(f"attention fusion unavailable here: {exc}")


# ---- training and integration tiers: tiny trained models ---------------------------------------

@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_recipe, tiny_dataset, tmp_path_factory) -> Path:
    from shopsearch.train.biencoder import train_biencoder
    from shopsearch.train.reranker import train_reranker_stage

    out = tmp_path_factory.mktemp("checkpoint")
    train_biencoder(tiny_dataset, tiny_recipe.train_config(), out, log=QUIET)
    # The tiny recipe keeps a share of train queries for the re-ranker: the suite serves hybrid ranking.
    train_reranker_stage(out, tiny_dataset, tiny_recipe.reranker_config(), log=QUIET)
    return out


@pytest.fixture(scope="session")
def tiny_rec_checkpoint(tiny_interactions, tiny_checkpoint, tmp_path_factory) -> Path:
    from shopsearch.train.recipes import load_rec_config
    from shopsearch.train.recommender import train_to_checkpoint

    out = tmp_path_factory.mktemp("rec_checkpoint")
    config = load_rec_config(RECIPE_DIR / "rec_tiny.toml", epochs=6)
    train_to_checkpoint(tiny_interactions, config, out, tiny_checkpoint, log=QUIET)
    return out


@pytest.fixture(scope="session")
def built_repo(tiny_checkpoint, tiny_rec_checkpoint, tiny_dataset, tmp_path_factory) -> Path:
    """Search + recommendations of the trained tiny models, as `make demo` builds them (INT8)."""
    from shopsearch.build.options import BuildOptions
    from shopsearch.build.search import build_repository

    root = tmp_path_factory.mktemp("build")
    repo = root / "model_repository"
    build_repository(tiny_checkpoint, tiny_dataset, repo, root / "work",
                     BuildOptions(intra_op_threads=1), log=QUIET, rec_checkpoint=tiny_rec_checkpoint)
    return repo


@pytest.fixture(scope="session")
def triton_server(built_repo, tmp_path_factory):
    from shopsearch.ops.server import TritonServer

    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    # Profiling: the perf_analyzer and statistics tests run against this server too.
    server = TritonServer(built_repo, log_path=log, profiling=True)
    server.start(timeout=180)
    yield server
    server.stop()
    if server.process is not None:
        raise AssertionError("tritonserver did not stop")


@pytest.fixture(autouse=True)
def triton_server_survives(request):
    """The session's tritonserver is checked alive before and after every test that uses it. A test
    it dies in fails here with its exit status and log tail (a crash otherwise shows only as
    "connection refused" in every later test), and it is started again for the tests after it."""
    if "triton_server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("triton_server")
    _restart_if_dead(server, "was found dead before this test")
    yield
    _restart_if_dead(server, "died during this test")


def _restart_if_dead(server, what: str) -> None:
    if server.process is not None and server.process.poll() is None:
        return
    status = server.process.returncode if server.process is not None else None
    tail = server.log_tail(80)
    server.stop()
    server.start(timeout=180)
    pytest.fail(f"tritonserver {what} (exit status {status}; negative: the signal that ended it){tail}", pytrace=False)


def pytest_collection_modifyitems(config, items):
    """The unit tier trains nothing: a test that asks for a trained fixture must carry a tier marker."""
    trained = {"tiny_checkpoint", "tiny_rec_checkpoint", "built_repo", "triton_server"}
    tiers = {"training", "integration", "multiprocess"}
    for item in items:
        if trained & set(getattr(item, "fixturenames", ())) and not tiers & {m.name for m in item.iter_markers()}:
            raise pytest.UsageError(f"{item.nodeid} uses a trained fixture but is in the unit tier: "
                                    "mark it training or integration")
