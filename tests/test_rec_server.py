"""recommend and similar_items on a real tritonserver (the session's server; search is served beside)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.clients.recs import RecClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request, triton_server):
    url = triton_server.grpc_url if request.param == "grpc" else triton_server.http_url
    c = RecClient(url, request.param)
    yield c
    c.close()


def test_recommendation_models_are_ready_and_batch_dynamically(triton_server):
    c = httpclient.InferenceServerClient(triton_server.http_url)
    for model in ("item_lookup", "user_encoder", "item_embedding", "rec_ranker", "rec_postprocess", "recommend", "similar_items"):
        assert c.is_model_ready(model), model
    for model in ("user_encoder", "rec_ranker", "rec_postprocess"):
        assert "dynamic_batching" in c.get_model_config(model), model


def test_served_recommendations_equal_the_in_process_ensemble(client, built_repo, tiny_interactions):
    ids = tiny_interactions.item_ids
    histories = [[ids[i] for i in h] for h in tiny_interactions.histories[:24]]
    served = client.recommend(histories, top_k=10)
    local = InProcessEnsemble.from_repository(built_repo, "recommend").recommend(histories, top_k=10)
    assert [r.product_ids for r in served] == [r.product_ids for r in local]
    assert np.allclose([r.scores for r in served], [r.scores for r in local], atol=1e-4)


def test_unknown_ids_are_ignored_and_reported(client, tiny_interactions):
    ids = tiny_interactions.item_ids
    rec = client.recommend([["NOT-A-PRODUCT", ids[5], "ALSO-MISSING"]], top_k=5)[0]
    assert rec.unknown_ids == ["NOT-A-PRODUCT", "ALSO-MISSING"]
    assert rec.strategy == "model" and len(rec.product_ids) == 5 and ids[5] not in rec.product_ids
    only_unknown = client.recommend([["NOT-A-PRODUCT"]], top_k=5)[0]
    assert only_unknown.strategy == "popularity" and only_unknown.unknown_ids == ["NOT-A-PRODUCT"]


def test_empty_history_falls_back_to_popularity(client, tiny_interactions):
    rec = client.recommend([[]], top_k=5)[0]
    counts = tiny_interactions.item_counts()
    expected = [tiny_interactions.item_ids[i] for i in np.lexsort((np.arange(len(counts)), -counts))[:5]]
    assert rec.strategy == "popularity" and rec.product_ids == expected


def test_a_history_longer_than_the_window_keeps_its_newest_items(client, tiny_interactions):
    ids = tiny_interactions.item_ids
    window = 12
    older = [ids[i] for i in range(100, 400)]  # 300 ids: beyond the window and the 256 left out
    newest = [ids[i] for i in range(10, 10 + window)]
    long_rec = client.recommend([older + newest], top_k=10)[0]
    assert long_rec.strategy == "model" and len(long_rec.product_ids) == 10
    assert not set(long_rec.product_ids) & set(newest)  # what the shopper has is never shown
    # The encoder read the same newest items: where nothing else is left out, scores agree.
    short_rec = client.recommend([newest], top_k=40)[0]
    scores = dict(zip(short_rec.product_ids, short_rec.scores))
    shared = [p for p in long_rec.product_ids if p in scores]
    assert shared and all(abs(scores[p] - s) < 1e-4 for p, s in zip(long_rec.product_ids, long_rec.scores) if p in scores)


def test_exclude_and_topk_apply_per_request(client, tiny_interactions):
    ids = tiny_interactions.item_ids
    first = client.recommend([[ids[1], ids[2]]], top_k=3)[0]
    again = client.recommend([[ids[1], ids[2]]], top_k=3, exclude=[[first.product_ids[0]]])[0]
    assert first.product_ids[0] not in again.product_ids and again.product_ids[:2] == first.product_ids[1:]


def test_similar_items_never_returns_the_anchor(client, tiny_interactions):
    ids = tiny_interactions.item_ids
    recs = client.similar_items([[ids[0]], [ids[7]], ["NOPE"]], top_k=5)
    assert ids[0] not in recs[0].product_ids and ids[7] not in recs[1].product_ids
    assert recs[0].strategy == "model" and recs[2].strategy == "popularity" and recs[2].unknown_ids == ["NOPE"]


def test_bad_requests_fail_alone_with_a_clear_error_and_the_server_keeps_answering(triton_server, tiny_interactions):
    c = grpcclient.InferenceServerClient(triton_server.grpc_url)
    history = grpcclient.InferInput("HISTORY", [1, 1], "BYTES")
    history.set_data_from_numpy(np.array([[tiny_interactions.item_ids[3].encode()]], dtype=object))
    topk = grpcclient.InferInput("TOPK", [1, 1], "INT32")
    topk.set_data_from_numpy(np.array([[0]], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="rec_postprocess: TOPK: must be between 1 and"):
        c.infer("recommend", [history, topk])
    wrong_type = grpcclient.InferInput("HISTORY", [1, 1], "INT64")
    wrong_type.set_data_from_numpy(np.array([[3]], dtype=np.int64))
    with pytest.raises(InferenceServerException, match="HISTORY"):
        c.infer("recommend", [wrong_type])
    c.close()
    ok = RecClient(triton_server.grpc_url)
    assert len(ok.recommend([[tiny_interactions.item_ids[3]]], top_k=4)[0].product_ids) == 4
    ok.close()


def test_malformed_requests_among_valid_ones_hurt_no_valid_one(triton_server, built_repo, tiny_interactions):
    """Bad id framing, wrong dtypes and shapes, huge id lists and direct calls to inner models, sent
    by two threads while a third sends valid requests: every valid answer equals the in-process
    one, every refusal is short and leaks nothing, and the server keeps answering."""
    import random
    import struct
    import threading

    import grpc
    from tritonclient.grpc import service_pb2_grpc

    from tests.test_fuzz import _bytes_tensor, _grpc_call, _grpc_request

    ids = tiny_interactions.item_ids
    histories = [[ids[i] for i in h] for h in tiny_interactions.histories[:30]]
    expected = [r.product_ids for r in InProcessEnsemble.from_repository(built_repo, "recommend").recommend(histories)]
    good = _bytes_tensor(ids[1].encode(), ids[2].encode())

    def malformed(rng: random.Random):
        return rng.choice([
            _grpc_request("recommend", [("HISTORY", "BYTES", [1, 2])], [struct.pack("<I", 10 ** 9) + b"P0"]),
            _grpc_request("recommend", [("HISTORY", "BYTES", [1, 2])], [good[:-3]]),
            _grpc_request("recommend", [("HISTORY", "FP32", [1, 1])], [struct.pack("<f", 1.0)]),
            _grpc_request("recommend", [("HISTORY", "BYTES", [1, 10_001])], [_bytes_tensor(*([b"x"] * 10_001))]),
            _grpc_request("recommend", [("HISTORY", "BYTES", [1, 2]), ("TOPK", "INT32", [1, 1])], [good, struct.pack("<i", -4)]),
            _grpc_request("similar_items", [("ITEM_IDS", "BYTES", [1, 1]), ("EXCLUDE", "BYTES", [2, 1])],
                          [_bytes_tensor(b"P1"), _bytes_tensor(b"a", b"b")]),
            _grpc_request("user_encoder", [("item_rows", "INT64", [1, 12])], [struct.pack("<12q", *([10 ** 6] * 12))]),
            _grpc_request("item_embedding", [("item_rows", "INT64", [1, 12])], [struct.pack("<12q", *([-5] * 12))]),
        ])

    problems: list[str] = []
    refused = [0]

    def attacker(seed: int) -> None:
        rng = random.Random(seed)
        channel = grpc.insecure_channel(triton_server.grpc_url, options=[("grpc.max_send_message_length", 64 << 20)])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(60):
            ok, message, _ = _grpc_call(stub, malformed(rng))
            if ok:
                problems.append("a malformed request was answered")
            elif not message or len(message) > 500 or "Traceback" in message or "/shopsearch/" in message:
                problems.append(f"bad error message {message[:200]!r}")
            else:
                refused[0] += 1
        channel.close()

    threads = [threading.Thread(target=attacker, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    client = RecClient(triton_server.grpc_url)
    answered = 0
    while any(t.is_alive() for t in threads) or answered < 30:
        i = answered % len(histories)
        got = client.recommend([histories[i]], top_k=10)[0].product_ids
        if got != expected[i]:
            problems.append(f"valid request {i}: {got[:3]} != {expected[i][:3]}")
        answered += 1
    for t in threads:
        t.join()
    client.close()
    assert not problems, problems[:5]
    assert refused[0] == 120 and answered >= 30
