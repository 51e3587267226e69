"""Why the tokenizer executes one request at a time, and that it does.

On tritonserver 2.51 the Python backend validates each request's BYTES framing in its C++ side
(the backend library, before the Python stub sees anything) and fails the *whole execution* when
one request's string length prefix runs past its buffer, which Triton's core lets through. So a
model that reads the client's raw strings and batches would let one bad client fail every
request batched with it. The first test is a canary on that upstream behaviour: if a Triton
upgrade makes it fail, the tokenizer may batch again (search_models.tokenizer_config)."""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from shopsearch.ops.server import TritonServer
from shopsearch.triton.tuning import ModelSettings, Tuning, variant_repository

pytestmark = pytest.mark.integration

MALFORMED = struct.pack("<I", 10 ** 9) + b"tent"  # length prefix past the end of the buffer


def _framed(text: str) -> bytes:
    return struct.pack("<I", len(text.encode())) + text.encode()


def _search_request(raw: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="search")
    request.inputs.add(name="QUERY", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(raw)
    return request


def _send_together(grpc_url: str, raws: list[bytes]) -> list[str]:
    """All requests in flight at once; '' for an answer, the error's details for a failure."""
    with grpc.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ModelInfer.future(_search_request(raw), timeout=60) for raw in raws]
        outcomes = []
        for future in futures:
            try:
                future.result()
                outcomes.append("")
            except grpc.RpcError as exc:
                outcomes.append(exc.details() or "error")
    return outcomes


def _counts(grpc_url: str, model: str) -> tuple[int, int]:
    client = grpcclient.InferenceServerClient(grpc_url)
    stats = client.get_inference_statistics(model).model_stats[0]
    client.close()
    return stats.execution_count, stats.inference_count


def test_triton_fails_a_whole_python_backend_batch_on_one_malformed_string(built_repo, tmp_path):
    # The tokenizer made to batch: it waits (up to 2 s) until four requests are queued.
    batching = variant_repository(built_repo, tmp_path / "repo", Tuning({"tokenizer": ModelSettings(1, 2_000_000, (4,))}),
                                  batch_isolated=True)
    with TritonServer(batching, log_path=tmp_path / "tritonserver.log") as server:
        outcomes = _send_together(server.grpc_url, [_framed("blue tent"), MALFORMED, _framed("red lamp"), _framed("oak desk")])
    assert all("incomplete string data for inference input 'QUERY'" in o for o in outcomes), (
        f"Triton no longer fails the malformed request's batch-mates ({outcomes}): the tokenizer may batch again")


def test_the_built_tokenizer_runs_each_request_alone_so_bad_bytes_fail_only_their_sender(triton_server):
    # Every valid query is new to the server: the search ensemble's response cache would answer a
    # repeated one without running the tokenizer (seen in CI: 38 of 42 counted).
    bursts_raws = [[MALFORMED if i % 8 == 5 else _framed(f"isolation burst {b} query {i} tent") for i in range(16)]
                   for b in range(3)]
    tokenizer, embedder = _counts(triton_server.grpc_url, "tokenizer"), _counts(triton_server.grpc_url, "embedder")
    # Three bursts of 16 in flight at once: concurrent, and within the inner models' queue limit (64).
    with ThreadPoolExecutor(3) as pool:
        bursts = list(pool.map(lambda raws: _send_together(triton_server.grpc_url, raws), bursts_raws))
    for raws, outcomes in zip(bursts_raws, bursts):
        assert [bool(o) for o in outcomes] == [raw is MALFORMED for raw in raws], outcomes
        assert all("incomplete string data" in o for o in outcomes if o)
    executions, inferences = (a - b for a, b in zip(_counts(triton_server.grpc_url, "tokenizer"), tokenizer))
    assert inferences == 3 * 14 and executions == inferences  # one valid request per tokenizer execution
    executions, inferences = (a - b for a, b in zip(_counts(triton_server.grpc_url, "embedder"), embedder))
    assert inferences == 3 * 14 and executions < inferences  # the burst was concurrent: the embedder batched it
