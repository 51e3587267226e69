"""KServe-v2 inference over asyncio gRPC, in the few calls the gateway makes per request.

The gateway's request builders (`shopsearch.clients.search.search_request`, `...recs.rec_request`)
take any tritonclient flavour as `module`; this module is one more flavour: `InferInput`,
`InferRequestedOutput` and a result with `as_numpy`, the subset those builders use, written
straight into Triton's own protobuf messages (`tritonclient.grpc.service_pb2`) with tritonclient's
(de)serialisers. `tritonclient.grpc.aio` spent 0.66-0.74 ms of gateway CPU per search against
0.47-0.56 ms for the same call made this way (16 calls in flight, one run on the 2-core CI
machine): its general request assembly (copying each input's message, checks for options the
gateway never sets) is a fifth of what a search costs the gateway.

No call the gateway makes is ever cancelled. tritonserver 2.51 segfaults when a gRPC inference is
cancelled as it completes, which is what a client deadline does now and then
(triton-inference-server/server#7368, fixed in r24.12 by #7840; `tests/test_gateway_integration.py`
keeps a canary that kills a throwaway server with deadlines). So calls carry no gRPC deadline; the
gateway's timeout waits on a shielded call, which runs to its end and whose answer is dropped. Such
abandoned calls are counted, and past `max_abandoned` the gateway answers UNAVAILABLE (503) at once
rather than pile more onto a server that is not answering.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor, triton_to_np_dtype

# As tritonclient's channels: a request or answer is never refused for its size by gRPC itself
# (the gateway's own limits are far smaller).
MAX_MESSAGE_BYTES = 2**31 - 1


class InferInput:
    def __init__(self, name: str, shape: list[int], datatype: str):
        # Checked against Python's own copies: reading a protobuf field back costs more than it seems.
        self.name, self.shape, self.datatype = name, tuple(shape), datatype
        self.tensor = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
        self.raw = b""

    def set_data_from_numpy(self, array: np.ndarray) -> None:
        if array.shape != self.shape:
            raise ValueError(f"input {self.name}: shape {list(array.shape)}, declared {list(self.shape)}")
        if self.datatype == "BYTES":
            self.raw = serialize_byte_tensor(array).item() if array.size else b""
        else:
            self.raw = np.ascontiguousarray(array, dtype=triton_to_np_dtype(self.datatype)).tobytes()


class InferRequestedOutput:
    def __init__(self, name: str):
        self.name = name


class InferResult:
    def __init__(self, response: service_pb2.ModelInferResponse):
        self._outputs = {output.name: (output, raw) for output, raw in zip(response.outputs, response.raw_output_contents)}

    def as_numpy(self, name: str) -> np.ndarray | None:
        if name not in self._outputs:
            return None
        output, raw = self._outputs[name]
        shape = list(output.shape)
        if output.datatype == "BYTES":
            values = deserialize_bytes_tensor(raw) if raw else np.empty(0, dtype=object)
            return values.reshape(shape)
        return np.frombuffer(raw, dtype=triton_to_np_dtype(output.datatype)).reshape(shape)


class TritonGrpc:
    """One channel to Triton; make it on the event loop that will await its calls."""

    def __init__(self, url: str, max_abandoned: int = 256, close_grace_s: float = 30.0):
        self.channel = grpc.aio.insecure_channel(url, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.max_abandoned, self.close_grace_s = max_abandoned, close_grace_s
        self.abandoned: set[asyncio.Future] = set()

    async def _uncancelled(self, start_call, timeout_s: float):
        """Start one RPC (`start_call()`, made without a deadline) and await it for at most `timeout_s`.
        On timeout (asyncio.TimeoutError) or when the caller is cancelled (a client that hung up),
        the RPC runs on to its end, counted in `abandoned` until then."""
        if len(self.abandoned) >= self.max_abandoned:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                       f"{len(self.abandoned)} earlier calls to Triton have not answered yet")
        future = asyncio.ensure_future(start_call())  # a grpc.aio call runs from the moment it is made
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            if not future.done():
                self.abandoned.add(future)
                future.add_done_callback(self._forget)
            raise

    def _forget(self, future: asyncio.Future) -> None:
        self.abandoned.discard(future)
        if not future.cancelled():
            future.exception()  # its answer or error is nobody's now; retrieved so asyncio does not log it

    async def infer(self, model: str, inputs: list[InferInput], outputs: list[InferRequestedOutput],
                    timeout_s: float) -> InferResult:
        request = service_pb2.ModelInferRequest(
            model_name=model, inputs=[i.tensor for i in inputs],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=o.name) for o in outputs],
            raw_input_contents=[i.raw for i in inputs])
        return InferResult(await self._uncancelled(lambda: self.stub.ModelInfer(request), timeout_s))

    async def ready(self, model: str, timeout_s: float) -> bool:
        server = await self._uncancelled(lambda: self.stub.ServerReady(service_pb2.ServerReadyRequest()), timeout_s)
        return server.ready and (await self._uncancelled(
            lambda: self.stub.ModelReady(service_pb2.ModelReadyRequest(name=model)), timeout_s)).ready

    async def close(self) -> None:
        # A grace period, not an immediate close: closing cancels the calls still running.
        await self.channel.close(grace=self.close_grace_s)
