"""Locust users for search: the product API a shop front end calls (`shopsearch gateway`, when
SHOPSEARCH_GATEWAY_URL names one) and, for comparison, Triton directly over its HTTP/JSON protocol
and gRPC (tritonclient).

Queries are drawn from the committed dev-query mix; every response is validated (shape, non-empty
product ids) and anything else is marked a failure. gRPC calls are reported through Locust's
request event so both protocols land in the same statistics.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, between, events, task

# Once, before any gRPC channel exists (gRPC's requirement): lets gevent switch greenlets while a
# call waits. Run with --stop-timeout (the Makefile does): killing a greenlet in the middle of a
# gRPC call, which Locust does at the time limit without it, can leave the process hanging.
grpc_gevent.init_gevent()

QUERIES = [row["QUERY"]["content"][0] for row in json.loads(
    (Path(__file__).parent / "perf_data" / "search_queries.json").read_text())["data"]]
OUTPUTS = ("PRODUCT_IDS", "TITLES", "SCORES")
MODEL = os.environ.get("SHOPSEARCH_MODEL", "search")
CALL_TIMEOUT_S = 10.0  # a stuck call fails (and is counted) instead of holding its user forever
# Locust's --host names Triton's HTTP port (it overrides every user's host), so the product API's
# address comes from here, and its users are left out when it is not set.
GATEWAY_URL = os.environ.get("SHOPSEARCH_GATEWAY_URL", "").rstrip("/")


def validation_error(product_ids: list, shape: list) -> str | None:
    if shape[:1] != [1] or len(shape) != 2 or shape[1] < 1:
        return f"unexpected PRODUCT_IDS shape {shape}"
    if not product_ids or not all(product_ids):
        return "empty product ids for a known-good query"
    return None


@events.quit.add_listener
def _exit_past_grpc_threads(exit_code, **_):
    """Locust has written its reports and computed its exit code when `quit` fires; gRPC's
    background threads under gevent can still keep the interpreter from exiting (a run hung now
    and then after its time limit), so leave at once with that exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


class SearchGatewayUser(FastHttpUser):
    """A shop front end: JSON to the product API, which validates it and calls Triton over gRPC."""

    abstract = not GATEWAY_URL
    wait_time = between(0.0, 0.02)

    @task
    def search(self):
        with self.client.post(f"{GATEWAY_URL}/v1/search", json={"query": random.choice(QUERIES)}, name="gateway search",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            hits = response.json()["results"][0]["hits"]
            problem = validation_error([h["product_id"] for h in hits], [1, len(hits)])
            if problem:
                response.failure(problem)


class SearchHttpUser(FastHttpUser):
    wait_time = between(0.0, 0.02)

    @task
    def search(self):
        body = {"inputs": [{"name": "QUERY", "shape": [1, 1], "datatype": "BYTES", "data": [random.choice(QUERIES)]}],
                "outputs": [{"name": n} for n in OUTPUTS]}
        with self.client.post(f"/v2/models/{MODEL}/infer", json=body, name="http search", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            outputs = {o["name"]: o for o in response.json().get("outputs", [])}
            ids = outputs.get("PRODUCT_IDS", {})
            problem = validation_error(ids.get("data", []), ids.get("shape", []))
            if problem:
                response.failure(problem)


class SearchGrpcUser(User):
    wait_time = between(0.0, 0.02)

    def on_start(self):
        import tritonclient.grpc as grpcclient

        self.grpcclient = grpcclient
        self.client = grpcclient.InferenceServerClient(os.environ.get("SHOPSEARCH_GRPC_URL", "127.0.0.1:8001"))

    def on_stop(self):
        self.client.close()

    @task
    def search(self):
        import numpy as np

        started = time.perf_counter()
        exception, length = None, 0
        try:
            query = self.grpcclient.InferInput("QUERY", [1, 1], "BYTES")
            query.set_data_from_numpy(np.array([[random.choice(QUERIES).encode()]], dtype=object))
            result = self.client.infer(MODEL, [query], outputs=[self.grpcclient.InferRequestedOutput(n) for n in OUTPUTS],
                                     client_timeout=CALL_TIMEOUT_S)
            ids = result.as_numpy("PRODUCT_IDS")
            length = ids.size
            problem = validation_error([i for i in ids.reshape(-1).tolist() if i], list(ids.shape))
            if problem:
                raise ValueError(problem)
        except Exception as exc:  # noqa: BLE001 - every failure is reported to Locust, not raised
            exception = exc
        events.request.fire(request_type="grpc", name="grpc search", response_time=(time.perf_counter() - started) * 1000,
                            response_length=length, exception=exception, context={})
