"""`make bench-gateway`: what the product API costs in front of Triton, measured in one run.

The same harness drives both paths: N client threads, each sending one query at a time for a
fixed time, (a) straight to Triton over gRPC and (b) as JSON to the gateway, which validates it and
calls Triton over gRPC. The gateway runs as its own process (`shopsearch gateway`, as in
production), so its CPU time per request is read from /proc, apart from the clients'. Rounds
alternate direct / gateway so drift on a shared machine hits both alike; medians are reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from shopsearch.clients.gateway import GatewayClient
from shopsearch.clients.search import SearchClient
from shopsearch.ops.server import TritonServer, free_port, process_cpu_seconds, stub_processes

GOAL_THROUGHPUT_RATIO = 0.85  # the gateway may cost at most 15% of direct gRPC's q/s


def drive(make_client, queries: list[str], concurrency: int, seconds: float) -> dict:
    """q/s, p50/p99 ms and failures of `concurrency` threads each sending one query at a time."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency
    stop = time.perf_counter() + seconds

    def worker(slot: int) -> None:
        client = make_client()
        i = slot
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                client.search([queries[i % len(queries)]])
                latencies[slot].append(time.perf_counter() - started)
            except Exception:  # noqa: BLE001 - counted
                failures[slot] += 1
            i += concurrency
        client.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(concurrency)]
    cpu_before = time.process_time()  # this process: the clients (and, in-process, nothing else)
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    client_cpu = time.process_time() - cpu_before
    flat = np.array([x for row in latencies for x in row]) * 1000
    return {"queries_per_s": len(flat) / elapsed, "p50_ms": float(np.percentile(flat, 50)),
            "p99_ms": float(np.percentile(flat, 99)), "answered": int(len(flat)), "failures": int(sum(failures)),
            "client_cpu_ms_per_request": 1000 * client_cpu / max(len(flat), 1)}


def triton_cpu_seconds(server: TritonServer) -> float:
    """CPU time so far of tritonserver and its Python-backend stubs (where a search's work is done)."""
    pids = [server.process.pid, *stub_processes(server.process.pid)]
    return sum(process_cpu_seconds(pid) for pid in pids)


def start_gateway_process(grpc_url: str, port: int, timeout: float = 60.0) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "shopsearch.cli", "gateway", "--triton-grpc", grpc_url,
                                "--port", str(port), "--rate", "1000000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = GatewayClient(f"http://127.0.0.1:{port}", timeout_s=5)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            client.search(["warm up"])
            client.close()
            return process
        except Exception:  # noqa: BLE001 - not up yet
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited: {process.stderr.read().decode()[-500:]}") from None
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("gateway did not answer in time")


def bench_gateway(repo: Path, queries: list[str], concurrency: int = 16, seconds: float = 20.0, rounds: int = 3,
                  log=print) -> dict:
    rows: dict[str, list[dict]] = {"direct_grpc": [], "gateway": []}
    with TritonServer(repo, response_cache=False) as server:  # repeated queries: measure the path, not the cache
        port = free_port()
        gateway = start_gateway_process(server.grpc_url, port)
        try:
            for r in range(rounds):
                triton_before = triton_cpu_seconds(server)
                row = drive(lambda: SearchClient(server.grpc_url, "grpc"), queries, concurrency, seconds)
                row["triton_cpu_ms_per_request"] = 1000 * (triton_cpu_seconds(server) - triton_before) / max(row["answered"], 1)
                rows["direct_grpc"].append(row)
                triton_before, gateway_before = triton_cpu_seconds(server), process_cpu_seconds(gateway.pid)
                row = drive(lambda: GatewayClient(f"http://127.0.0.1:{port}"), queries, concurrency, seconds)
                row["triton_cpu_ms_per_request"] = 1000 * (triton_cpu_seconds(server) - triton_before) / max(row["answered"], 1)
                row["gateway_cpu_ms_per_request"] = 1000 * (process_cpu_seconds(gateway.pid) - gateway_before) / max(row["answered"], 1)
                rows["gateway"].append(row)
                log(f"round {r + 1}/{rounds}: direct gRPC {rows['direct_grpc'][-1]['queries_per_s']:.1f} q/s, "
                    f"gateway {row['queries_per_s']:.1f} q/s (gateway CPU {row['gateway_cpu_ms_per_request']:.2f} ms/request)")
        finally:
            gateway.terminate()
            gateway.wait(10)
    median = {path: {k: float(np.median([r[k] for r in runs])) for k in runs[0]} for path, runs in rows.items()}
    ratio = median["gateway"]["queries_per_s"] / median["direct_grpc"]["queries_per_s"]
    # With the clients on other machines (as in production) and the server's cores saturated, the
    # gateway's share of the server-side CPU per request is the throughput it costs.
    serving_ms = median["gateway"]["triton_cpu_ms_per_request"] + median["gateway"]["gateway_cpu_ms_per_request"]
    from shopsearch.core.provenance import utc_timestamp
    from shopsearch.perf.tune import machine_description

    return {"repository": str(repo), "machine": machine_description(), "measured_at": utc_timestamp(),
            "concurrency": concurrency, "seconds_per_round": seconds, "rounds": rows, "median": median,
            "throughput_ratio": ratio, "p99_ratio": median["gateway"]["p99_ms"] / median["direct_grpc"]["p99_ms"],
            "goal": f"gateway q/s >= {GOAL_THROUGHPUT_RATIO} x direct gRPC", "goal_met": ratio >= GOAL_THROUGHPUT_RATIO,
            "latency_added_ms_p50": median["gateway"]["p50_ms"] - median["direct_grpc"]["p50_ms"],
            "server_side_throughput_cost": median["gateway"]["gateway_cpu_ms_per_request"] / serving_ms}


def report_markdown(report: dict) -> str:
    m = report["median"]
    machine = report.get("machine") or {}
    where = f"{machine.get('cpus', '?')} CPUs, {machine.get('system', '?')}" if isinstance(machine, dict) else str(machine)
    lines = ["# The product API vs direct Triton gRPC (`make bench-gateway`)", "",
             f"{report.get('repository', '?')} on {where}, {report.get('measured_at', '?')}: "
             f"{report['concurrency']} client threads, one query at a time, {report.get('seconds_per_round', '?')} s per "
             "round, rounds alternating.", "",
             f"| path (concurrency {report['concurrency']}) | q/s | p50 ms | p99 ms | failures |", "|---|---|---|---|---|"]
    for path in ("direct_grpc", "gateway"):
        lines.append(f"| {path} | {m[path]['queries_per_s']:.1f} | {m[path]['p50_ms']:.2f} | {m[path]['p99_ms']:.2f} | "
                     f"{m[path]['failures']:.0f} |")
    lines += ["", f"gateway / direct: {report['throughput_ratio']:.3f}x q/s, {report['p99_ratio']:.2f}x p99; "
              f"+{report['latency_added_ms_p50']:.2f} ms at p50; gateway CPU "
              f"{m['gateway']['gateway_cpu_ms_per_request']:.2f} ms per request; the load generator's own CPU per "
              f"request {m['direct_grpc']['client_cpu_ms_per_request']:.2f} ms (gRPC client) vs "
              f"{m['gateway']['client_cpu_ms_per_request']:.2f} ms (HTTP/JSON client), on the same cores; Triton's own CPU "
              f"per request {m['direct_grpc'].get('triton_cpu_ms_per_request', float('nan')):.2f} ms direct, "
              f"{m['gateway'].get('triton_cpu_ms_per_request', float('nan')):.2f} ms behind the gateway, so with the "
              f"clients elsewhere the gateway would take {100 * report.get('server_side_throughput_cost', float('nan')):.1f}% "
              f"of a saturated server's throughput; goal ({report['goal']}) "
              f"{'met' if report['goal_met'] else 'not met'}. Medians of {len(report['rounds']['gateway'])} alternating rounds."]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gateway.json").write_text(json.dumps(report, indent=2))
    (out / "bench_gateway.md").write_text(report_markdown(report) + "\n")
    return [out / "bench_gateway.json", out / "bench_gateway.md"]
