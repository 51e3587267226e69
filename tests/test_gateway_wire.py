"""The gateway's own gRPC flavour (`shopsearch.gateway.triton_grpc`) against tritonclient's: the
request it builds is the message tritonclient would send, and it reads Triton's answers as
tritonclient does. The HTTP client the CLI and `make bench-gateway` use survives a server that
closed its kept-alive connection."""

import http.server
import json
import threading

import numpy as np
import pytest

from shopsearch.core.filters import SearchFilters
from shopsearch.gateway import triton_grpc


def _tritonclient_request(inputs, outputs, model):
    from tritonclient.grpc._utils import _get_inference_request

    return _get_inference_request(model_name=model, inputs=inputs, model_version="", request_id="", outputs=outputs,
                                  sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                  parameters=None)


def _ours(inputs, outputs, model):
    from tritonclient.grpc import service_pb2

    return service_pb2.ModelInferRequest(
        model_name=model, inputs=[i.tensor for i in inputs], raw_input_contents=[i.raw for i in inputs],
        outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=o.name) for o in outputs])


@pytest.mark.parametrize("filters", [None, SearchFilters("Tents", 10.0, 99.5, True), SearchFilters(price_max=20.0)])
def test_search_requests_are_the_messages_tritonclient_sends(filters):
    import tritonclient.grpc as reference

    from shopsearch.clients.search import query_batch, search_request

    queries = query_batch(["blue tent", "ünïcode drill", ""])
    ours = _ours(*search_request(triton_grpc, queries, 7, False, filters), "search")
    theirs = _tritonclient_request(*search_request(reference, queries, 7, False, filters), "search")
    assert ours == theirs  # protobuf equality: every input, shape, datatype, raw byte and output


def test_recommendation_requests_are_the_messages_tritonclient_sends():
    import tritonclient.grpc as reference

    from shopsearch.clients.recs import rec_request

    rows, exclude = [["A1", "B22", "C333"]], [[]]
    ours = _ours(*rec_request(triton_grpc, "HISTORY", rows, 5, exclude), "recommend")
    theirs = _tritonclient_request(*rec_request(reference, "HISTORY", rows, 5, exclude), "recommend")
    assert ours == theirs


def test_a_wrong_shape_is_refused_before_anything_is_sent():
    tensor = triton_grpc.InferInput("TOPK", [2, 1], "INT32")
    with pytest.raises(ValueError, match="TOPK"):
        tensor.set_data_from_numpy(np.ones((1, 1), dtype=np.int32))


def test_answers_read_as_tritonclient_reads_them():
    from tritonclient.grpc import InferResult as ReferenceResult
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    ids = np.array([[b"P1", b"P22"], [b"", b"P3"]], dtype=object)
    scores = np.array([[0.5, -1.25], [np.inf, 3.0]], dtype=np.float32)
    flags = np.array([[True], [False]])
    response = service_pb2.ModelInferResponse(model_name="search")
    for name, datatype, array, raw in (("PRODUCT_IDS", "BYTES", ids, serialize_byte_tensor(ids).item()),
                                       ("SCORES", "FP32", scores, scores.tobytes()),
                                       ("FLAGS", "BOOL", flags, flags.tobytes()),
                                       ("EMPTY", "BYTES", np.empty((0, 3), dtype=object), b"")):
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(raw)
    ours, theirs = triton_grpc.InferResult(response), ReferenceResult(response)
    for name in ("PRODUCT_IDS", "SCORES", "FLAGS"):
        got, want = ours.as_numpy(name), theirs.as_numpy(name)
        assert got.dtype == want.dtype and got.shape == want.shape and (got == want).all(), name
    assert ours.as_numpy("EMPTY").shape == (0, 3)
    assert ours.as_numpy("NOT_SENT") is None


class _ClosesAfterEachAnswer(http.server.BaseHTTPRequestHandler):
    """Answers keep-alive HTTP/1.1 but closes the connection after each answer, without saying so:
    what a server does to an idle kept-alive connection (uvicorn after a few seconds)."""

    protocol_version = "HTTP/1.1"
    answered = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).answered += 1
        payload = json.dumps({"results": [{"query": q, "hits": [{"product_id": "P1", "title": q, "score": 1.0}]}
                                          for q in body["queries"]]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_the_gateway_client_reconnects_when_the_server_closed_its_connection():
    from shopsearch.clients.gateway import GatewayClient

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ClosesAfterEachAnswer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with GatewayClient(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=5) as client:
            answers = [client.search([f"query {i}"]) for i in range(3)]
        assert [a[0][0].title for a in answers] == ["query 0", "query 1", "query 2"]
        assert _ClosesAfterEachAnswer.answered == 3  # each sent once: the stale connection never got it
    finally:
        server.shutdown()
        server.server_close()


def test_the_gateway_client_does_not_retry_a_server_that_is_not_there():
    from shopsearch.clients.gateway import GatewayClient
    from shopsearch.ops.server import free_port

    with GatewayClient(f"http://127.0.0.1:{free_port()}", timeout_s=2) as client:
        with pytest.raises(ConnectionRefusedError):
            client.search(["tent"])
    with pytest.raises(ValueError, match="gateway url"):
        GatewayClient("ftp://example")
