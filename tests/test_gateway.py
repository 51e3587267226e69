"""The product API in process, over a fake backend that records what would reach Triton: every
client fault is a 4xx naming the field, and nothing malformed is ever passed on."""

import json

import pytest
from fastapi.testclient import TestClient

from shopsearch.core.filters import SearchFilters
from shopsearch.core.results import Hit, Recommendation
from shopsearch.gateway.app import create_app
from shopsearch.gateway.backend import UpstreamError, upstream_error
from shopsearch.gateway.guard import RateLimiter, json_depth_exceeds
from shopsearch.gateway.schema import GatewayLimits


class RecordingBackend:
    def __init__(self, fail: UpstreamError | None = None):
        self.calls, self.fail = [], fail

    def _called(self, *call):
        self.calls.append(call)
        if self.fail:
            raise self.fail

    async def search(self, queries, k, collapse=True, filters=None):
        self._called("search", queries, k, collapse, filters)
        return [[Hit(f"P{i}", f"{q} {i}", 1.0 - i / 10) for i in range(k)] for q in queries]

    async def recommend(self, history, k, exclude):
        self._called("recommend", history, k, exclude)
        return Recommendation(["P9"], ["nine"], [0.9], ["unknown-1"], "model")

    async def similar(self, item_id, k, exclude):
        self._called("similar", item_id, k, exclude)
        return Recommendation(["P8"], ["eight"], [0.8], [], "model")

    async def ready(self):
        return True


@pytest.fixture
def api():
    backend = RecordingBackend()
    return TestClient(create_app(backend)), backend


def post_raw(client, path, body: bytes, **headers):
    return client.post(path, content=body, headers={"content-type": "application/json", **headers})


def test_valid_requests_get_typed_answers(api):
    client, backend = api
    one = client.post("/v1/search", json={"query": "  cordless drill ", "k": 3}).json()
    assert one["results"][0]["query"] == "cordless drill" and len(one["results"][0]["hits"]) == 3
    many = client.post("/v1/search", json={"queries": ["tent", "lamp"], "collapse": False}).json()
    assert [r["query"] for r in many["results"]] == ["tent", "lamp"] and len(many["results"][1]["hits"]) == 10
    rec = client.post("/v1/recommend", json={"history": ["P1", "P2"], "k": 5, "exclude": ["P3"]}).json()
    assert rec == {"items": [{"product_id": "P9", "title": "nine", "score": 0.9}], "strategy": "model", "unknown_ids": ["unknown-1"]}
    assert client.post("/v1/similar", json={"item_id": "P1"}).status_code == 200
    assert client.post("/v1/search", json={"query": "tent", "collapse": "no"}).status_code == 400  # strict: a bool
    filtered = {"query": "tent", "category": "Tents", "price_min": 20.0, "price_max": 80.5, "in_stock": True}
    assert client.post("/v1/search", json=filtered).status_code == 200
    inverted = client.post("/v1/search", json={**filtered, "price_min": 90.0})
    assert inverted.status_code == 400 and "price_min" in inverted.text
    assert client.post("/v1/search", json={**filtered, "price_max": -1.0}).status_code == 400
    assert backend.calls == [("search", ["cordless drill"], 3, True, SearchFilters()),
                             ("search", ["tent", "lamp"], 10, False, SearchFilters()),
                             ("recommend", ["P1", "P2"], 5, ["P3"]), ("similar", "P1", 10, []),
                             ("search", ["tent"], 10, True, SearchFilters("Tents", 20.0, 80.5, True))]


# (what was sent, expected status, the field the error names)
CLIENT_FAULTS = [
    # the three requests that kill tritonserver 2.51 when sent to it directly, as JSON to the gateway
    (json.dumps({"inputs": [{"name": "QUERY", "datatype": "BYTES", "shape": [1, 1], "data": ["led light bulbs"]}],
                 "outputs": [{"name": "PRODUCT_IDS", "parameters": {"classification": 1000000000}}]}).encode(), 400, "body.inputs"),
    (json.dumps({"query": "led light bulbs", "outputs": [{"name": "PRODUCT_IDS", "parameters": {"classification": 10**9}}]}).encode(),
     400, "body.outputs"),
    (b'{"query": ' + b"[" * 100_000 + b'"x"' + b"]" * 100_000 + b"}", 413, "body"),
    (b'{"query": ' + b"[" * 2_000 + b'"x"' + b"]" * 2_000 + b"}", 400, "body"),
    # malformed JSON and wrong shapes
    (b'{"query": "tent"', 400, "body"), (b"", 400, "body"), (b"null", 400, "body"), (b'["tent"]', 400, "body"),
    (b'{"query": 5}', 400, "body.query"), (b'{"query": "tent", "k": "5"}', 400, "body.k"),
    (b'{"query": "tent", "k": 5.0}', 400, "body.k"), (b'{"query": "tent", "k": true}', 400, "body.k"),
    (b'{"query": "tent", "k": 0}', 400, "body.k"), (b'{"query": "tent", "k": 101}', 400, "body.k"),
    (b'{"query": "   "}', 400, "body.query"), (json.dumps({"query": "x" * 513}).encode(), 400, "body.query"),
    (b'{"query": "tent", "queries": ["a"]}', 400, "body"), (b"{}", 400, "body"),
    (json.dumps({"queries": ["q"] * 17}).encode(), 400, "body.queries"), (b'{"queries": []}', 400, "body.queries"),
    (b'{"queries": ["ok", ""]}', 400, "body.queries.1"), (b'{"query": "\\ud800"}', 400, "body.query"),
    (b'{"query": "\xff\xfe"}', 400, "body"),
]


@pytest.mark.parametrize("body,status,field", CLIENT_FAULTS, ids=[f"fault{i}" for i in range(len(CLIENT_FAULTS))])
def test_every_search_client_fault_is_a_4xx_naming_the_field_and_reaches_nothing(api, body, status, field):
    client, backend = api
    response = post_raw(client, "/v1/search", body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field
    assert backend.calls == []


@pytest.mark.parametrize("path,body,field", [
    ("/v1/recommend", {"history": ["P1", "has space"]}, "body.history.1"),
    ("/v1/recommend", {"history": ["P1"] * 257}, "body.history"),
    ("/v1/recommend", {"history": "P1"}, "body.history"),
    ("/v1/recommend", {"history": ["P1"], "exclude": [1]}, "body.exclude.0"),
    ("/v1/similar", {}, "body.item_id"),
    ("/v1/similar", {"item_id": "x" * 65}, "body.item_id"),
    ("/v1/similar", {"item_id": "P1", "k": -1}, "body.k"),
])
def test_every_recommendation_client_fault_is_a_400(api, path, body, field):
    client, backend = api
    response = client.post(path, json=body)
    assert response.status_code == 400 and response.json()["error"]["field"] == field
    assert backend.calls == []


def test_transport_faults_are_4xx(api):
    client, backend = api
    assert post_raw(client, "/v1/search", b'{"query": "tent"}', **{"content-encoding": "gzip"}).status_code == 415
    assert post_raw(client, "/v1/search", b'{"query": "tent"}', **{"content-length": "abc"}).status_code == 400
    assert client.post("/v1/search", content=b'{"query": "tent"}', headers={"content-type": "text/plain"}).status_code == 400
    assert client.get("/v1/search").status_code == 405
    assert client.get("/v2/models/search/infer").status_code == 404  # Triton's API is not here
    assert backend.calls == []


def test_a_client_over_its_rate_gets_429_with_retry_after():
    backend = RecordingBackend()
    client = TestClient(create_app(backend, GatewayLimits(rate_per_s=1.0, burst=3)))
    statuses = [client.post("/v1/search", json={"query": "tent"}).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = client.post("/v1/search", json={"query": "tent"})
    assert refused.headers["retry-after"] == "1" and refused.json()["error"]["field"] == "client"
    assert len(backend.calls) == 3


def test_rate_limiter_refills_per_client():
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=1, clock=lambda: now[0])
    assert limiter.allow("a") == 0 and limiter.allow("a") == pytest.approx(0.5) and limiter.allow("b") == 0
    now[0] = 0.5
    assert limiter.allow("a") == 0


@pytest.mark.parametrize("failure,status", [(UpstreamError(400, "request", "search: TOPK must be >= 1"), 400),
                                            (UpstreamError(503, "server", "overloaded"), 503),
                                            (UpstreamError(504, "server", "slow"), 504),
                                            (UpstreamError(502, "server", "failed"), 502)])
def test_triton_failures_keep_their_class(failure, status):
    client = TestClient(create_app(RecordingBackend(fail=failure)))
    response = client.post("/v1/search", json={"query": "tent"})
    assert response.status_code == status and response.json()["error"]["message"] == failure.message
    assert ("retry-after" in response.headers) == (status == 503)


def test_tritons_statuses_map_to_the_clients():
    from tritonclient.utils import InferenceServerException

    def mapped(status, message="m"):
        return upstream_error(InferenceServerException(message, status=status)).status
    assert mapped("StatusCode.INVALID_ARGUMENT") == 400
    assert mapped("StatusCode.UNAVAILABLE") == 503
    assert mapped("StatusCode.INTERNAL", "Exceeds maximum queue size") == 503
    assert mapped("StatusCode.DEADLINE_EXCEEDED") == 504
    internal = upstream_error(InferenceServerException("Traceback (most recent call last): /srv/x.py", status="StatusCode.INTERNAL"))
    assert internal.status == 502 and "Traceback" not in internal.message  # no internals shown
    assert upstream_error(ConnectionRefusedError("refused")).status == 502


def test_grpc_statuses_map_to_the_clients():
    """The gateway calls Triton with grpc.aio itself: its errors carry code() and details()."""
    import grpc
    from grpc.aio import AioRpcError, Metadata

    def mapped(code, details="d"):
        return upstream_error(AioRpcError(code, Metadata(), Metadata(), details))
    invalid = mapped(grpc.StatusCode.INVALID_ARGUMENT, "in ensemble 'search', unexpected inference input 'X'")
    assert invalid.status == 400 and "unexpected inference input 'X'" in invalid.message
    assert mapped(grpc.StatusCode.UNAVAILABLE).status == 503
    assert mapped(grpc.StatusCode.INTERNAL, "Exceeds maximum queue size").status == 503
    assert mapped(grpc.StatusCode.DEADLINE_EXCEEDED).status == 504
    internal = mapped(grpc.StatusCode.INTERNAL, "Traceback (most recent call last): /srv/x.py")
    assert internal.status == 502 and "Traceback" not in internal.message


def test_json_depth_counts_brackets_outside_strings_only():
    assert not json_depth_exceeds(b'{"query": "[[[[[[[[[[[[{{{{{{"}', 3)
    assert not json_depth_exceeds(b'{"query": "a\\"[[[[[["}', 3)
    assert json_depth_exceeds(b'{"a": [[[1]]]}', 3)
    assert not json_depth_exceeds(b'{"a": [[1]]}', 3)


def test_the_openapi_document_comes_from_the_schema(api):
    client, _ = api
    document = client.get("/openapi.json").json()
    assert set(document["paths"]) == {"/v1/search", "/v1/recommend", "/v1/similar", "/v1/ready"}
    search = document["components"]["schemas"]["SearchRequest"]
    assert search["additionalProperties"] is False and set(search["properties"]) == {
        "query", "queries", "k", "collapse", "category", "price_min", "price_max", "in_stock"}
    assert "400" in document["paths"]["/v1/search"]["post"]["responses"]


def test_the_adapter_finds_each_request_missing_a_required_input():
    import numpy as np

    from shopsearch.serving.backend import missing_inputs

    full = {"CANDIDATE_INDICES": np.zeros(1), "CANDIDATE_SCORES": np.zeros(1)}
    requests = [full, {"CANDIDATE_SCORES": np.zeros(1), "TOPK": np.ones(1)}, {}]
    assert missing_inputs(requests, ["CANDIDATE_INDICES", "CANDIDATE_SCORES"]) == {1: "CANDIDATE_INDICES", 2: "CANDIDATE_INDICES"}


def test_the_gateway_benchmark_harness_counts_answers_and_failures():
    from shopsearch.perf.bench_gateway import drive, report_markdown

    class Client:
        calls = 0

        def search(self, queries):
            Client.calls += 1
            if Client.calls % 10 == 0:
                raise RuntimeError("refused")
            return [[]]

        def close(self):
            pass

    row = drive(Client, ["a", "b"], concurrency=4, seconds=0.2)
    assert row["answered"] > 0 and row["failures"] == Client.calls // 10 and row["p99_ms"] >= row["p50_ms"]
    assert row["client_cpu_ms_per_request"] >= 0
    median = {"direct_grpc": row, "gateway": {**row, "gateway_cpu_ms_per_request": 0.5}}
    text = report_markdown({"concurrency": 4, "median": median, "throughput_ratio": 0.9, "p99_ratio": 1.1,
                            "latency_added_ms_p50": 0.3, "goal": "x", "goal_met": True, "rounds": {"gateway": [row]}})
    assert "| gateway |" in text and "0.900x q/s" in text


def test_the_gateway_server_runs_under_uvicorn_and_refuses_a_taken_port():
    import socket

    import httpx

    from shopsearch.errors import ServerError
    from shopsearch.gateway.server import GatewayServer
    from shopsearch.ops.server import free_port

    with GatewayServer("unused:0", port=free_port(), backend=RecordingBackend()) as gateway:
        answer = httpx.post(f"{gateway.url}/v1/search", json={"query": "tent", "k": 2}, timeout=10)
        assert answer.status_code == 200 and len(answer.json()["results"][0]["hits"]) == 2
        deep = httpx.post(f"{gateway.url}/v1/search", content=b"[" * 100_000, timeout=10,
                          headers={"content-type": "application/json"})
        assert deep.status_code == 413
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ServerError, match="did not start"):
            GatewayServer("unused:0", port=taken.getsockname()[1], backend=RecordingBackend()).start(timeout=10)
