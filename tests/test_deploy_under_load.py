"""Versioned hot swaps on a real tritonserver in explicit model-control mode: a new catalog and a new
embedder published under steady HTTP + gRPC load, then rolled back, with zero failed requests and
every response equal to what its own generation computes in-process (never a mixed pair)."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shopsearch.build.options import BuildOptions
from shopsearch.build.search import build_repository
from shopsearch.errors import DeployError
from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.train.reranker import train_reranker_stage
from shopsearch.clients.search import SearchClient
from shopsearch.ops.deploy import (
    DeployState, ModelControl, loaded_generations, publish, rollback, serving_generation,
)
from shopsearch.ops.server import TritonServer
from shopsearch.serving.steps import PRODUCT_IDS, SCORES
from shopsearch.train.biencoder import train_biencoder

pytestmark = pytest.mark.integration

ADMIN_KEY = "test-admin-key"


@pytest.fixture(scope="module")
def ops_repo(built_repo, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("ops") / "model_repository"
    shutil.copytree(built_repo, repo)
    return repo


@pytest.fixture(scope="module")
def ops_server(ops_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("ops_triton") / "tritonserver.log"
    server = TritonServer(ops_repo, log_path=log, admin_key=ADMIN_KEY).start(timeout=180)
    yield server
    server.stop()


def _build(tiny_recipe, dataset, seed: int, root: Path) -> Path:
    checkpoint = root / "checkpoint"
    train_biencoder(dataset, tiny_recipe.train_config(seed=seed), checkpoint, log=lambda m: None)
    train_reranker_stage(checkpoint, dataset, tiny_recipe.reranker_config(), log=lambda m: None)
    build_repository(checkpoint, dataset, root / "repo", root / "work", BuildOptions(intra_op_threads=1), log=lambda m: None)
    return root / "repo"


@pytest.fixture(scope="module")
def next_generation(tiny_recipe, tiny_dataset, tmp_path_factory) -> Path:
    """Tomorrow's build: a retrained embedder (another seed) over an updated catalog (10% of the
    products gone, some titles changed), as `make build-repo` stages it."""
    products = [dataclasses.replace(p, title=f"{p.title} (new)") if i % 7 == 0 else p
                for i, p in enumerate(tiny_dataset.products) if i % 10]
    return _build(tiny_recipe, tiny_dataset.with_catalog(products), 1, tmp_path_factory.mktemp("generation2"))


class SteadyLoad:
    """Client threads (HTTP and gRPC) sending a query mix until stopped; every response is kept with
    the ensemble version Triton reports for it, every failure is counted."""

    def __init__(self, server: TritonServer, queries: list[str], threads_per_protocol: int = 2):
        self.queries = queries
        self.responses: list[tuple[float, str, str, list[str], np.ndarray]] = []  # (t, version, query, ids, scores)
        self.failures: list[str] = []
        self.latencies: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(url, protocol, i), daemon=True)
                         for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url))
                         for i in range(threads_per_protocol)]

    def _run(self, url: str, protocol: str, seed: int) -> None:
        client = SearchClient(url, protocol, timeout_s=30)
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            query = self.queries[rng.integers(len(self.queries))]
            started = time.perf_counter()
            try:
                result = client.infer_raw(np.array([[query.encode()]], dtype=object))
            except Exception as exc:  # noqa: BLE001 - every failure is what this test counts
                with self._lock:
                    self.failures.append(f"{protocol}: {exc}")
                continue
            response = result.get_response()
            version = response["model_version"] if protocol == "http" else response.model_version
            ids = [i.decode() for i in result.as_numpy(PRODUCT_IDS)[0]]
            with self._lock:
                self.latencies.append((started, time.perf_counter() - started))
                self.responses.append((started, version, query, ids, result.as_numpy(SCORES)[0]))
        client.close()

    def __enter__(self) -> "SteadyLoad":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def p99_ms(self, start: float, end: float) -> float:
        window = [lat for t, lat in self.latencies if start <= t < end]
        return float(np.percentile(window, 99) * 1000) if window else float("nan")


def search_cache_hits(server: TritonServer) -> int:
    """Response-cache hits of every loaded version of the search ensemble (statistics need the key)."""
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics("search", headers={"admin-key": ADMIN_KEY})["model_stats"]
    finally:
        client.close()
    return sum(int(s["inference_stats"]["cache_hit"]["count"]) for s in stats)


def _expected(repo: Path, generation: int, queries: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    hits = InProcessEnsemble.from_repository(repo, generation=generation).search(queries)
    return {q: ([h.product_id for h in row], np.array([h.score for h in row], dtype=np.float32)) for q, row in zip(queries, hits)}


def test_model_control_without_the_admin_key_is_refused(ops_server):
    http = httpclient.InferenceServerClient(ops_server.http_url)
    grpc = grpcclient.InferenceServerClient(ops_server.grpc_url)
    for call in (lambda: http.load_model("search"), lambda: http.unload_model("search"),
                 lambda: http.load_model("search", headers={"admin-key": "wrong"}),
                 lambda: grpc.load_model("search"), lambda: grpc.unload_model("ranker"),
                 lambda: grpc.load_model("search", headers={"admin-key": "wrong"})):
        with pytest.raises(InferenceServerException, match="restricted"):
            call()
    assert http.is_model_ready("search") and http.is_model_ready("ranker")
    # With the key the same call is accepted (a reload of what is loaded changes nothing).
    http.load_model("search", headers={"admin-key": ADMIN_KEY})
    assert http.is_model_ready("search")
    http.close()
    grpc.close()


def test_catalog_and_embedder_swap_and_rollback_under_load_fail_no_request(ops_server, ops_repo, next_generation, tiny_dataset):
    queries = sorted(tiny_dataset.queries["dev"].values())[:30]
    control = ModelControl(ops_server.http_url, ADMIN_KEY)
    assert serving_generation(ops_repo) == 1
    with SteadyLoad(ops_server, queries) as load:
        time.sleep(3)
        t_publish = time.perf_counter()
        generation = publish(ops_repo, next_generation, control, log=lambda m: None)
        t_published = time.perf_counter()
        time.sleep(3)
        # Counted since the publish reloaded `search` (a reload starts its statistics afresh).
        hits_after_publish = search_cache_hits(ops_server)
        t_rollback = time.perf_counter()
        rolled_to = rollback(ops_repo, control, log=lambda m: None)
        t_rolled = time.perf_counter()
        time.sleep(3)
        t_end = time.perf_counter()
    control.close()
    assert (generation, rolled_to) == (2, 1)
    assert serving_generation(ops_repo) == 1 and loaded_generations(ops_repo) == [1, 2]
    expected = {1: _expected(ops_repo, 1, queries), 2: _expected(ops_repo, 2, queries)}

    versions = Counter(version for _, version, *_ in load.responses)
    print(f"\nswap under load: {len(load.responses)} answered, {len(load.failures)} failed, by generation {dict(versions)}; "
          f"p99 ms before {load.p99_ms(0, t_publish):.0f}, during publish {load.p99_ms(t_publish, t_published):.0f} "
          f"({t_published - t_publish:.1f}s), after {load.p99_ms(t_published, t_rollback):.0f}, "
          f"rollback {1000 * (t_rolled - t_rollback):.0f} ms, after rollback {load.p99_ms(t_rolled, t_end):.0f}")
    assert load.failures == []
    assert versions["1"] > 50 and versions["2"] > 50
    # 30 queries repeated: after the publish most answers came from Triton's response cache, and
    # still every one below matches its own generation: the new generation never served an answer
    # the previous one had cached (the key holds the ensemble's version).
    after_publish = sum(t_published <= started < t_rollback for started, *_ in load.responses)
    assert hits_after_publish > after_publish // 2, (hits_after_publish, after_publish)
    mismatched = []
    for started, version, query, ids, scores in load.responses:
        want_ids, want_scores = expected[int(version)][query]
        if ids[: len(want_ids)] != want_ids or not np.allclose(scores[: len(want_ids)], want_scores, atol=1e-4):
            mismatched.append((round(started - t_publish, 2), version, query, ids[:3], want_ids[:3]))
    assert mismatched == [], f"{len(mismatched)} responses differ from their generation's results: {mismatched[:3]}"
    # The check has teeth: one generation's embedder with the other's index ranks differently.
    gen1, gen2 = (InProcessEnsemble.from_repository(ops_repo, generation=g) for g in (1, 2))
    mixed = InProcessEnsemble(gen1.steps[:2] + gen2.steps[2:]).search(queries)
    assert sum([h.product_id for h in row] != expected[2][q][0] for q, row in zip(queries, mixed)) > len(queries) // 2
    history = [g["generation"] for g in DeployState.load(ops_repo).generations]
    assert history == [1, 2]


def test_a_broken_generation_is_refused_before_the_server_is_touched(ops_server, ops_repo, next_generation, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(next_generation, broken)
    (broken / "ranker" / "1" / "index.npy").write_bytes(b"not an index")
    before = serving_generation(ops_repo)
    configs = {p: p.read_text() for p in ops_repo.glob("*/config.pbtxt")}
    versions = sorted(p.relative_to(ops_repo).as_posix() for p in ops_repo.glob("*/[0-9]*"))
    index = httpclient.InferenceServerClient(ops_server.http_url).get_model_repository_index(headers={"admin-key": ADMIN_KEY})
    loaded = sorted((m["name"], m.get("version")) for m in index if m.get("state") == "READY")
    control = ModelControl(ops_server.http_url, ADMIN_KEY)
    with pytest.raises(DeployError, match="preflight: .* does not load"):
        publish(ops_repo, broken, control, log=lambda m: None)
    control.close()
    assert serving_generation(ops_repo) == before
    # Everything as before: configs, version directories, and what Triton has loaded.
    assert {p: p.read_text() for p in ops_repo.glob("*/config.pbtxt")} == configs
    assert sorted(p.relative_to(ops_repo).as_posix() for p in ops_repo.glob("*/[0-9]*")) == versions
    index = httpclient.InferenceServerClient(ops_server.http_url).get_model_repository_index(headers={"admin-key": ADMIN_KEY})
    assert sorted((m["name"], m.get("version")) for m in index if m.get("state") == "READY") == loaded
    client = SearchClient(ops_server.http_url)
    assert client.is_ready() and len(client.search(["blue tent"])[0]) == 10
    client.close()


def test_an_incompatible_generation_is_refused_before_anything_is_copied(ops_repo, next_generation, tmp_path):
    from google.protobuf import text_format

    from shopsearch.triton.repository import read_config

    staged = tmp_path / "staged"
    shutil.copytree(next_generation, staged)
    config = read_config(staged / "ranker")
    config.output[0].dims[0] = 50
    (staged / "ranker" / "config.pbtxt").write_text(text_format.MessageToString(config))
    listing = sorted(str(p) for p in ops_repo.rglob("*"))
    with pytest.raises(DeployError, match="ranker: output"):
        publish(ops_repo, staged, ModelControl("127.0.0.1:1", ADMIN_KEY), log=lambda m: None)
    assert sorted(str(p) for p in ops_repo.rglob("*")) == listing


def test_when_triton_refuses_a_generation_the_deploy_is_undone(ops_server, ops_repo, next_generation, tmp_path, monkeypatch):
    """Past preflight (bypassed here), a load Triton refuses undoes the deploy: configs and version
    directories as before, the served ensemble answering throughout. (Runs last: Triton keeps the
    refused version listed, so its strict server readiness stays false, see deploy.preflight.)"""
    import shopsearch.ops.deploy as deploy

    broken = tmp_path / "broken"
    shutil.copytree(next_generation, broken)
    (broken / "ranker" / "1" / "index.npy").write_bytes(b"not an index")
    configs = {p: p.read_text() for p in ops_repo.glob("*/config.pbtxt")}
    versions = sorted(p.relative_to(ops_repo).as_posix() for p in ops_repo.glob("*/[0-9]*"))
    monkeypatch.setattr(deploy, "preflight", lambda staged: None)
    control = ModelControl(ops_server.http_url, ADMIN_KEY)
    with pytest.raises(DeployError, match="ranker: load failed"):
        publish(ops_repo, broken, control, log=lambda m: None)
    control.close()
    assert {p: p.read_text() for p in ops_repo.glob("*/config.pbtxt")} == configs
    assert sorted(p.relative_to(ops_repo).as_posix() for p in ops_repo.glob("*/[0-9]*")) == versions
    client = SearchClient(ops_server.http_url)
    assert client._client.is_model_ready("search") and len(client.search(["blue tent"])[0]) == 10
    client.close()
