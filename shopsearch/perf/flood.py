"""Open-loop bursts against the served ensemble: how a server behaves beyond its capacity.

Locust and perf_analyzer measure closed loops (a fixed number of users waiting for answers); an
overload is the opposite: requests keep arriving whatever the latency. `flood` sends `n` requests
as fast as gRPC's async client can issue them and records each one's latency and error. Each
request's text is distinct (the query and its number): Triton's response cache would answer a
repeated one without running the models, and an overload is what the cache cannot absorb.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from shopsearch.serving.steps import QUERY


@dataclass
class FloodResult:
    sent: int
    accepted_ms: list[float]
    rejected_ms: list[float]
    errors: Counter
    wall_s: float

    @property
    def rejected(self) -> int:
        return len(self.rejected_ms)

    def percentile(self, which: str, q: float) -> float:
        values = self.accepted_ms if which == "accepted" else self.rejected_ms
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> str:
        return (f"{self.sent} sent in {self.wall_s:.1f}s: {len(self.accepted_ms)} answered "
                f"(p50 {self.percentile('accepted', 50):.0f} ms, p99 {self.percentile('accepted', 99):.0f} ms), "
                f"{self.rejected} refused (p50 {self.percentile('rejected', 50):.0f} ms, p99 {self.percentile('rejected', 99):.0f} ms)")


def short_error(error) -> str:
    """The reason without request ids, so equal reasons count together."""
    text = str(error)
    for reason in ("Exceeds maximum queue size", "Request timeout expired", "Deadline Exceeded"):
        if reason in text:
            return reason
    return text[:120]


def flood(grpc_url: str, n: int, query: str = "red running shoes", model: str = "search", timeout_s: float = 60.0) -> FloodResult:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    accepted: list[float] = []
    rejected: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    finished = threading.Event()

    def callback(result, error, sent_at: float) -> None:
        elapsed = (time.perf_counter() - sent_at) * 1000
        with lock:
            if error is None:
                accepted.append(elapsed)
            else:
                rejected.append(elapsed)
                errors[short_error(error)] += 1
            if len(accepted) + len(rejected) == n:
                finished.set()

    started = time.perf_counter()
    for i in range(n):
        tensor = grpcclient.InferInput(QUERY, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[f"{query} {i}".encode()]], dtype=object))
        sent_at = time.perf_counter()
        # tritonclient calls back with keywords: callback(result=..., error=...).
        client.async_infer(model, [tensor], lambda result, error, s=sent_at: callback(result, error, s),
                           client_timeout=timeout_s)
    finished.wait(timeout_s + 30)
    wall = time.perf_counter() - started
    client.close()
    return FloodResult(n, accepted, rejected, errors, wall)
