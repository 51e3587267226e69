"""A short headless Locust run (HTTP and gRPC users) against the session's real tritonserver."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCUST = ROOT / ".venv-load" / "bin" / "locust"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not LOCUST.exists(), reason="Locust's environment .venv-load is missing (make test creates it)"),
]


def run_check(stats: Path, slo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "loadtests/check_slo.py", str(stats), "--slo", str(slo)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_short_locust_run_over_http_and_grpc_meets_the_slo(triton_server, tmp_path):
    prefix = tmp_path / "locust"
    result = subprocess.run(
        [str(LOCUST), "-f", "loadtests/locustfile.py", "--headless", "-u", "4", "-r", "4", "-t", "6s", "--stop-timeout", "5",
         "--host", f"http://{triton_server.http_url}", "--csv", str(prefix), "--only-summary"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "SHOPSEARCH_GRPC_URL": triton_server.grpc_url},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    stats = (prefix.parent / "locust_stats.csv").read_text()
    assert "http search" in stats and "grpc search" in stats
    check = run_check(prefix.parent / "locust_stats.csv", ROOT / "loadtests" / "slo.toml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "failures 0 " in check.stdout

    strict = tmp_path / "strict.toml"
    strict.write_text("p99_ms = 0.001\nmax_error_rate = 0.0\nmin_requests = 1\n")
    broken = run_check(prefix.parent / "locust_stats.csv", strict)
    assert broken.returncode == 1 and "SLO broken: p99" in broken.stderr


def test_locust_marks_failures_for_a_broken_model(triton_server, tmp_path):
    # HTTP users only: what is tested is how failures are counted. Twice now tritonserver 2.51
    # segfaulted (in its front end, pthread_mutex_lock) while a Locust run with the direct gRPC user
    # ended, not reproduced in 25 replays here; the run above keeps one gRPC Locust run per session.
    prefix = tmp_path / "locust"
    subprocess.run(
        [str(LOCUST), "-f", "loadtests/locustfile.py", "SearchHttpUser", "--headless", "-u", "2", "-r", "2", "-t", "3s", "--stop-timeout", "5",
         "--host", f"http://{triton_server.http_url}", "--csv", str(prefix), "--only-summary"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "SHOPSEARCH_GRPC_URL": triton_server.grpc_url, "SHOPSEARCH_MODEL": "no_such_model"},
    )
    check = run_check(prefix.parent / "locust_stats.csv", ROOT / "loadtests" / "slo.toml")
    assert check.returncode == 1 and "error rate 100.00%" in check.stderr
