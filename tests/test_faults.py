"""Faults under load on a real tritonserver: a Python-backend stub killed, then the server killed.
Triton alone heals neither (a dead stub fails every request to its model while health endpoints
say READY); the supervisor `make serve` runs repairs both, and a client with retries sees no
failure. The repository on disk is byte-identical afterwards."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.clients.search import SearchClient
from shopsearch.ops.server import TritonServer, stub_processes
from shopsearch.ops.supervisor import Supervisor

pytestmark = pytest.mark.integration


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class Traffic:
    """One plain client (counts every failure) and one retrying client (retries transient ones),
    both checking each answer against the in-process pipeline."""

    def __init__(self, server: TritonServer, query: str, expected: list[str]):
        self.server, self.query, self.expected = server, query, expected
        self.plain: list[tuple[float, str | None]] = []
        self.retrying: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(0.0, self.plain)),
                         threading.Thread(target=self._run, args=(30.0, self.retrying))]

    def _run(self, retry_s: float, log: list) -> None:
        client = SearchClient(self.server.http_url, timeout_s=30, retry_s=retry_s)
        while not self._stop.is_set():
            started = time.time()
            try:
                ids = [h.product_id for h in client.search([self.query])[0]]
                log.append((started, None if ids == self.expected else f"wrong answer {ids[:3]}"))
            except Exception as exc:  # noqa: BLE001 - counted
                log.append((started, str(exc)[:200]))
                time.sleep(0.05)
        client.close()

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(60)

    @staticmethod
    def failures(log, since: float) -> list[str]:
        return [e for t, e in log if e and t >= since]

    @staticmethod
    def healthy_again_after(log, since: float) -> float:
        """Seconds from `since` until the first success after the last failure."""
        last_failure = max((t for t, e in log if e and t >= since), default=since)
        return min((t for t, e in log if e is None and t >= last_failure), default=float("inf")) - since


@pytest.fixture(scope="module")
def supervised(built_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("faults") / "model_repository"
    shutil.copytree(built_repo, repo)
    # No response cache: the traffic below repeats one query, which the cache would answer without
    # the models whose faults are under test (the supervisor's own probes miss it: test below).
    server = TritonServer(repo, log_path=repo.parent / "tritonserver.log", admin_key="fault-test-key",
                          response_cache=False).start()
    supervisor = Supervisor(server, interval_s=0.5, log=lambda m: None)
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,))
    thread.start()
    yield server, supervisor, repo
    stop.set()
    thread.join(60)
    server.stop()


def test_a_killed_python_stub_is_repaired_and_retrying_clients_see_no_failure(supervised):
    server, supervisor, repo = supervised
    expected = [h.product_id for h in InProcessEnsemble.from_repository(repo).search(["blue tent"])[0]]
    digest = tree_digest(repo)
    with Traffic(server, "blue tent", expected) as traffic:
        time.sleep(2)
        victim = next(pid for pid, model in stub_processes(server.process.pid).items() if "/ranker/" in model)
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 60
        while not any(t >= killed_at for t, _ in supervisor.events) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2)
    plain, retrying = Traffic.failures(traffic.plain, killed_at), Traffic.failures(traffic.retrying, killed_at)
    events = [what for t, what in supervisor.events if t >= killed_at]
    healthy = Traffic.healthy_again_after(traffic.plain, killed_at)
    print(f"\nstub kill: plain client {len(plain)} failed of {sum(t >= killed_at for t, _ in traffic.plain)} "
          f"({set(e.split(',')[-1].strip() for e in plain)}), healthy again after {healthy:.1f}s; retrying client "
          f"{len(retrying)} failed of {sum(t >= killed_at for t, _ in traffic.retrying)}; supervisor: {[w for _, w in supervisor.events]}")
    repaired = any("ranker: its Python stub had died" in what for what in events)
    # tritonserver 2.51 itself aborted (SIGABRT) once when the stub was killed mid-request (one CI run
    # of many; never locally): the supervisor then restarts the whole server, and that too must cost
    # a retrying client nothing.
    server_aborted_and_restarted = any("exited (code -6)" in what and "restarted" in what for what in events)
    assert repaired or server_aborted_and_restarted, events
    assert retrying == [] and healthy < 30
    assert any("/ranker/" in m for m in stub_processes(server.process.pid).values())
    assert tree_digest(repo) == digest


def test_a_killed_server_is_restarted_and_retrying_clients_see_no_failure(supervised):
    server, supervisor, repo = supervised
    expected = [h.product_id for h in InProcessEnsemble.from_repository(repo).search(["blue tent"])[0]]
    digest = tree_digest(repo)
    with Traffic(server, "blue tent", expected) as traffic:
        time.sleep(2)
        killed_at = time.time()
        os.killpg(server.process.pid, signal.SIGKILL)
        deadline = time.time() + 120
        while not any("restarted" in what for t, what in supervisor.events if t >= killed_at) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2)
    plain, retrying = Traffic.failures(traffic.plain, killed_at), Traffic.failures(traffic.retrying, killed_at)
    healthy = Traffic.healthy_again_after(traffic.plain, killed_at)
    print(f"\nserver kill: plain client {len(plain)} failed, healthy again after {healthy:.1f}s; retrying client "
          f"{len(retrying)} failed of {sum(t >= killed_at for t, _ in traffic.retrying)}; supervisor: {[w for _, w in supervisor.events][-1:]}")
    assert any("restarted" in what for _, what in supervisor.events)
    assert retrying == [] and healthy < 60
    assert tree_digest(repo) == digest
