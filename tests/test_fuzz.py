"""Fuzz: over 500 malformed requests over HTTP and gRPC (wrong names, dtypes, shapes, huge payloads,
invalid UTF-8, empty batches, hostile JSON, bad binary framing, inner models) sent concurrently
with valid ones against the real tritonserver. No crash, no stuck model, every valid request in
the mix answered exactly as the in-process pipeline answers it, every error short and free of
tracebacks and file paths."""

from __future__ import annotations

import http.client
import json
import random
import struct
import threading
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.clients.search import SearchClient

pytestmark = pytest.mark.integration

MALFORMED_PER_PROTOCOL = 300
VALID_EVERY = 3  # one valid request after every three malformed ones
MODELS = ("search", "tokenizer", "embedder", "ranker", "postprocess")


@dataclass
class Case:
    protocol: str
    kind: str
    send: object  # callable(connection) -> (ok: bool, message: str, payload)
    may_succeed: bool = False  # e.g. invalid UTF-8 is answered with replacement characters


# ---------------------------------------------------------------- HTTP (raw bodies)

def _http_post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict | None = None):
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    if response.status == 200:
        return True, "", data
    try:
        message = json.loads(data.decode("utf-8", errors="replace")).get("error", "")
    except (json.JSONDecodeError, AttributeError):
        message = data.decode("utf-8", errors="replace")
    return False, message, data


def _infer_body(inputs: list[dict], **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _q(data, shape=None, datatype="BYTES", name="QUERY") -> dict:
    return {"name": name, "shape": shape if shape is not None else [len(data), 1], "datatype": datatype, "data": data}


def http_cases(rng: random.Random) -> list[Case]:
    junk = lambda n: bytes(rng.getrandbits(8) for _ in range(n))  # noqa: E731
    text = lambda n: "".join(rng.choice("abc xyz<>{}\"'\\\u00e9\u4e2d") for _ in range(n))  # noqa: E731
    path = lambda model="search": f"/v2/models/{urllib.parse.quote(model, safe='')}/infer"  # noqa: E731
    bodies: list[tuple[str, str, bytes, dict, bool]] = [
        ("not json", path(), junk(rng.randint(1, 300)), {}, False),
        ("truncated json", path(), _infer_body([_q(["tent"])])[: rng.randint(1, 40)], {}, False),
        ("json scalar", path(), rng.choice([b"null", b"[]", b"123", b'"x"', b"true"]), {}, False),
        ("no inputs", path(), json.dumps({"outputs": []}).encode(), {}, False),
        ("inputs not a list", path(), json.dumps({"inputs": {"name": "QUERY"}}).encode(), {}, False),
        ("input without shape", path(), json.dumps({"inputs": [{"name": "QUERY", "datatype": "BYTES", "data": ["a"]}]}).encode(), {}, False),
        ("unknown input name", path(), _infer_body([_q(["tent"], name=text(8) or "Q")]), {}, False),
        ("wrong datatype", path(), _infer_body([_q([[1.5]], [1, 1], rng.choice(["FP32", "INT64", "BOOL"]))]), {}, False),
        ("invalid datatype", path(), _infer_body([_q([["tent"]], [1, 1], rng.choice(["INT128", "", "STRING", "bytes"]))]), {}, False),
        ("shape/data mismatch", path(), _infer_body([_q(["a", "b", "c"], [rng.randint(4, 9), 1])]), {}, False),
        ("negative shape", path(), _infer_body([_q(["a"], [-rng.randint(1, 9), 1])]), {}, False),
        ("huge shape", path(), _infer_body([_q(["a"], [1, 10 ** rng.randint(9, 15)])]), {}, False),
        ("wrong rank", path(), _infer_body([_q(["a", "b"], [1, 1, 2])]), {}, False),
        ("empty batch", path(), _infer_body([_q([], [0, 1])]), {}, False),
        ("empty query", path(), _infer_body([_q([[rng.choice(["", " ", "\t\n"])]], [1, 1])]), {}, False),
        ("numbers as BYTES", path(), _infer_body([_q([[rng.randint(0, 9)]], [1, 1])]), {}, False),
        ("deeply nested json", path(), b'{"inputs": ' + b"[" * 20000 + b"]" * 20000 + b"}", {}, False),
        ("unknown model", path(text(6).replace("/", "") or "nope"), _infer_body([_q([["tent"]], [1, 1])]), {}, False),
        ("duplicate input", path(), _infer_body([_q([["a"]], [1, 1]), _q([["b"]], [1, 1])]), {}, False),
        ("TOPK out of range", path(), _infer_body([_q([["tent"]], [1, 1]), _q([[rng.choice([0, -5, 10 ** 6])]], [1, 1], "INT32", "TOPK")]), {}, False),
        ("TOPK wrong dtype", path(), _infer_body([_q([["tent"]], [1, 1]), _q([[3.5]], [1, 1], "FP32", "TOPK")]), {}, False),
        ("bad binary header length", path(), _infer_body([_q([["tent"]], [1, 1])]),
         {"Inference-Header-Content-Length": str(rng.randint(100000, 10 ** 9))}, False),
        ("binary data without bytes", path(), json.dumps({"inputs": [{"name": "QUERY", "shape": [1, 1], "datatype": "BYTES",
                                                                      "parameters": {"binary_data_size": rng.randint(5, 10 ** 6)}}]}).encode(),
         {"Inference-Header-Content-Length": "0"}, False),
        ("embedder: float token ids", path("embedder"), _infer_body([_q([[0.5, 1.5]], [1, 2], "FP32", "input_ids"),
                                                                     _q([[1, 1]], [1, 2], "INT64", "attention_mask")]), {}, False),
        ("embedder: ids out of range", path("embedder"), _infer_body([_q([[rng.randint(10 ** 6, 10 ** 9), -1]], [1, 2], "INT64", "input_ids"),
                                                                      _q([[1, 1]], [1, 2], "INT64", "attention_mask")]), {}, False),
        ("ranker: wrong width", path("ranker"), _infer_body([_q([[0.1] * rng.randint(1, 7)], None, "FP32", "embedding"),
                                                             _q([["tent"]], [1, 1])]), {}, False),
        ("postprocess: shape mismatch", path("postprocess"), _infer_body([_q([[1, 2]], [1, 2], "INT64", "CANDIDATE_INDICES"),
                                                                          _q([[0.5]], [1, 1], "FP32", "CANDIDATE_SCORES")]), {}, False),
        # Not errors by necessity: Triton reads these as text and the tokenizer copes.
        ("invalid utf-8 in json", path(), b'{"inputs": [{"name": "QUERY", "shape": [1, 1], "datatype": "BYTES", "data": [["\xff\xfe tent \xc3"]]}]}', {}, True),
        ("huge query", path(), _infer_body([_q([["tent " * rng.randint(200_000, 400_000)]], [1, 1])]), {}, True),
    ]
    cases = []
    for kind, target, body, headers, may_succeed in bodies:
        cases.append(Case("http", kind, lambda conn, t=target, b=body, h=headers: _http_post(conn, t, b, h), may_succeed))
    return cases


# ---------------------------------------------------------------- gRPC (raw protobuf requests)

def _bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def _grpc_request(model: str, inputs: list[tuple[str, str, list[int]]], raw: list[bytes]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw)
    return request


def _grpc_call(stub, request):
    try:
        response = stub.ModelInfer(request, timeout=60)
        return True, "", response
    except grpc.RpcError as exc:
        return False, exc.details() or "", None


def grpc_cases(rng: random.Random) -> list[Case]:
    text = lambda n: "".join(rng.choice("abcxyz_") for _ in range(n))  # noqa: E731
    good = _bytes_tensor(b"blue tent")
    requests: list[tuple[str, service_pb2.ModelInferRequest, bool]] = [
        ("unknown input name", _grpc_request("search", [(text(7) or "X", "BYTES", [1, 1])], [good]), False),
        ("wrong datatype", _grpc_request("search", [("QUERY", rng.choice(["FP32", "INT32", "UINT8"]), [1, 1])], [struct.pack("<f", 1.0)]), False),
        ("invalid datatype", _grpc_request("search", [("QUERY", rng.choice(["INT128", "", "STRING"]), [1, 1])], [good]), False),
        ("shape/data mismatch", _grpc_request("search", [("QUERY", "BYTES", [rng.randint(2, 9), 1])], [good]), False),
        ("negative shape", _grpc_request("search", [("QUERY", "BYTES", [-rng.randint(1, 5), 1])], [good]), False),
        ("huge shape", _grpc_request("search", [("QUERY", "BYTES", [1, 2 ** rng.randint(31, 62)])], [good]), False),
        ("length prefix past the end", _grpc_request("search", [("QUERY", "BYTES", [1, 1])],
                                                     [struct.pack("<I", rng.randint(100, 2 ** 31)) + b"tent"]), False),
        ("truncated length prefix", _grpc_request("search", [("QUERY", "BYTES", [1, 1])], [b"\x05\x00"]), False),
        ("no raw contents", _grpc_request("search", [("QUERY", "BYTES", [1, 1])], []), False),
        # tritonserver 2.51 reads the buffer of each named input and ignores a surplus one (its choice).
        ("extra raw contents", _grpc_request("search", [("QUERY", "BYTES", [1, 1])], [good, good]), True),
        ("empty batch", _grpc_request("search", [("QUERY", "BYTES", [0, 1])], [b""]), False),
        ("empty query", _grpc_request("search", [("QUERY", "BYTES", [1, 1])], [_bytes_tensor(rng.choice([b"", b"   "]))]), False),
        ("unknown model", _grpc_request(text(5) or "nope", [("QUERY", "BYTES", [1, 1])], [good]), False),
        ("unknown version", service_pb2.ModelInferRequest(model_name="search", model_version=str(rng.randint(2, 99)),
                                                          inputs=[service_pb2.ModelInferRequest.InferInputTensor(
                                                              name="QUERY", datatype="BYTES", shape=[1, 1])],
                                                          raw_input_contents=[good]), False),
        ("TOPK out of range", _grpc_request("search", [("QUERY", "BYTES", [1, 1]), ("TOPK", "INT32", [1, 1])],
                                            [good, struct.pack("<i", rng.choice([0, -1, 100000]))]), False),
        ("embedder: ids out of range", _grpc_request("embedder", [("input_ids", "INT64", [1, 2]), ("attention_mask", "INT64", [1, 2])],
                                                     [struct.pack("<qq", 2 ** 40, -3), struct.pack("<qq", 1, 1)]), False),
        ("embedder: mask shape", _grpc_request("embedder", [("input_ids", "INT64", [1, 2]), ("attention_mask", "INT64", [1, 3])],
                                               [struct.pack("<qq", 1, 2), struct.pack("<qqq", 1, 1, 1)]), False),
        ("ranker: wrong width", _grpc_request("ranker", [("embedding", "FP32", [1, 3]), ("QUERY", "BYTES", [1, 1])],
                                              [struct.pack("<fff", 1, 2, 3), good]), False),
        # The hybrid ranker reads the query text as fixed-size UINT8: a wrong byte count is refused
        # per request by Triton (malformed BYTES here would fail every request batched with it).
        ("ranker: short query text", _grpc_request("ranker", [("embedding", "FP32", [1, 64]), ("QUERY_TEXT", "UINT8", [1, 512])],
                                                   [bytes(256), bytes(rng.randint(0, 511))]), False),
        ("ranker: malformed BYTES text", _grpc_request("ranker", [("embedding", "FP32", [1, 64]), ("QUERY", "BYTES", [1, 1])],
                                                       [bytes(256), struct.pack("<I", 10 ** 9) + b"tent"]), False),
        ("invalid utf-8", _grpc_request("search", [("QUERY", "BYTES", [1, 1])], [_bytes_tensor(b"\xff\xfe\xc3 tent")]), True),
        ("huge query", _grpc_request("search", [("QUERY", "BYTES", [1, 1])], [_bytes_tensor(b"tent " * rng.randint(200_000, 400_000))]), True),
    ]
    return [Case("grpc", kind, lambda stub, r=request: _grpc_call(stub, r), ok) for kind, request, ok in requests]


# ---------------------------------------------------------------- the run

def _leaks(message: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f for f in forbidden if f in message]


def test_five_hundred_malformed_requests_hurt_no_valid_one(triton_server, built_repo, tiny_dataset):
    queries = sorted(tiny_dataset.queries["dev"].values())[:40]
    expected = {q: [h.product_id for h in hits] for q, hits in zip(queries, InProcessEnsemble.from_repository(built_repo).search(queries))}
    forbidden = ("Traceback", 'File "', "site-packages", str(built_repo), "/shopsearch/", "/tmp/")
    outcomes: Counter = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def worker(protocol: str, seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(triton_server.host, triton_server.http_port, timeout=60)
        channel = grpc.insecure_channel(triton_server.grpc_url, options=[("grpc.max_send_message_length", 64 << 20)])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        valid_client = SearchClient(triton_server.http_url if protocol == "http" else triton_server.grpc_url, protocol)
        for i in range(MALFORMED_PER_PROTOCOL // 2):
            pool = http_cases(rng) if protocol == "http" else grpc_cases(rng)
            case = pool[i % len(pool)]
            try:
                ok, message, _ = case.send(conn if protocol == "http" else stub)
            except (http.client.HTTPException, ConnectionError, OSError) as exc:
                conn.close()
                conn = http.client.HTTPConnection(triton_server.host, triton_server.http_port, timeout=60)
                ok, message = False, f"connection closed: {exc}"
            with lock:
                outcomes[(protocol, "answered" if ok else "refused")] += 1
                if ok and not case.may_succeed:
                    problems.append(f"{protocol} {case.kind}: answered, expected an error")
                if not ok:
                    if not message or len(message) > 500 or _leaks(message, forbidden):
                        problems.append(f"{protocol} {case.kind}: bad error message {message[:300]!r}")
            if i % VALID_EVERY == VALID_EVERY - 1:
                query = queries[rng.randrange(len(queries))]
                try:
                    got = [h.product_id for h in valid_client.search([query])[0]]
                except Exception as exc:  # noqa: BLE001 - a failed valid request is what this test looks for
                    got = [f"failed: {exc}"]
                with lock:
                    outcomes[(protocol, "valid")] += 1
                    if got != expected[query]:
                        problems.append(f"{protocol} valid {query!r}: {got[:3]} != {expected[query][:3]}")
        conn.close()
        channel.close()
        valid_client.close()

    def guarded(protocol: str, seed: int) -> None:
        try:
            worker(protocol, seed)
        except Exception as exc:  # noqa: BLE001 - a crashed worker must fail the test, not warn
            with lock:
                problems.append(f"{protocol} worker {seed} crashed: {exc!r}")

    threads = [threading.Thread(target=guarded, args=(p, s)) for p in ("http", "grpc") for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    malformed = sum(n for (_, what), n in outcomes.items() if what != "valid")
    print(f"\nfuzz: {dict(outcomes)}; {len(problems)} problems")
    for problem in sorted(set(problems)):
        print("  ", problem[:300])
    assert malformed >= 500 and outcomes[("http", "valid")] > 50 and outcomes[("grpc", "valid")] > 50
    assert problems == [], problems[:10]
    # Nothing stuck: every model is ready and answers at once.
    client = SearchClient(triton_server.http_url)
    assert client.is_ready() and [h.product_id for h in client.search([queries[0]])[0]] == expected[queries[0]]
    client.close()
    with urllib.request.urlopen(f"http://{triton_server.http_url}/v2/health/ready", timeout=10) as response:
        assert response.status == 200
