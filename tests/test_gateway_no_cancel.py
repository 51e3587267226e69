"""The gateway never cancels a call it made to Triton: tritonserver 2.51 segfaults when a gRPC
inference is cancelled as it completes (triton-inference-server/server#7368; the canary in
tests/test_gateway_integration.py). Against a real grpc.aio server in this process that stands in
for Triton: a call the gateway gave up on (its timeout, or its client hung up) runs to its end
on the server, uncancelled; the gateway answers 504 and counts the call until it ends; past its
limit of such calls it answers 503 without sending anything."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from shopsearch.gateway import triton_grpc
from shopsearch.gateway.backend import upstream_error


class SlowTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers ModelInfer after `delay_s`; records how each call ended on the server's side."""

    def __init__(self, delay_s: float):
        self.delay_s, self.started, self.finished, self.cancelled = delay_s, 0, 0, 0

    async def ModelInfer(self, request, context):
        self.started += 1
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:  # what a client deadline or a dropped call does to a grpc.aio handler
            self.cancelled += 1
            raise
        self.finished += 1
        return service_pb2.ModelInferResponse(model_name=request.model_name)


async def _with_server(delay_s: float, body, **client_options):
    server = grpc.aio.server()
    triton = SlowTriton(delay_s)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(triton, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = triton_grpc.TritonGrpc(f"127.0.0.1:{port}", close_grace_s=5, **client_options)
    try:
        await body(client, triton)
    finally:
        await client.close()
        await server.stop(grace=None)


def _infer(client: triton_grpc.TritonGrpc, timeout_s: float):
    return client.infer("search", [], [], timeout_s)


def test_a_timed_out_call_runs_to_its_end_on_the_server_and_is_a_504():
    async def body(client, triton):
        with pytest.raises(asyncio.TimeoutError) as timed_out:
            await _infer(client, 0.05)
        assert upstream_error(timed_out.value).status == 504
        assert len(client.abandoned) == 1  # still running on the server, counted
        await asyncio.sleep(0.6)
        assert (triton.finished, triton.cancelled) == (1, 0)
        assert client.abandoned == set()

    asyncio.run(_with_server(0.3, body))


def test_a_caller_that_hangs_up_does_not_cancel_the_call():
    async def body(client, triton):
        caller = asyncio.ensure_future(_infer(client, 10))
        await asyncio.sleep(0.1)
        caller.cancel()  # uvicorn cancels a handler whose client went away
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.sleep(0.5)
        assert (triton.started, triton.finished, triton.cancelled) == (1, 1, 0)

    asyncio.run(_with_server(0.3, body))


def test_past_its_limit_of_abandoned_calls_the_gateway_sends_nothing_and_answers_503():
    async def body(client, triton):
        for _ in range(2):
            with pytest.raises(asyncio.TimeoutError):
                await _infer(client, 0.02)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _infer(client, 1)
        assert upstream_error(refused.value).status == 503
        assert triton.started == 2
        await asyncio.sleep(0.8)
        answer = await _infer(client, 5)  # the abandoned calls ended: calls go through again
        assert answer.as_numpy("anything") is None and triton.cancelled == 0

    asyncio.run(_with_server(0.5, body, max_abandoned=2))


def test_an_answer_within_the_timeout_is_returned():
    async def body(client, triton):
        await _infer(client, 5)
        assert (triton.finished, client.abandoned) == (1, set())

    asyncio.run(_with_server(0.01, body))
