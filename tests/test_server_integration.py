"""Against a real tritonserver (started once per session): HTTP and gRPC, parity with the
in-process pipeline, and bad input that must fail alone and leave the server healthy."""

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.clients.search import SearchClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(triton_server):
    client = SearchClient(triton_server.http_url, "http")
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(triton_server):
    client = SearchClient(triton_server.grpc_url, "grpc")
    yield client
    client.close()


def assert_healthy(server):
    client = SearchClient(server.http_url, "http")
    try:
        assert client.is_ready()
        hits = client.search(["blue tent"])[0]
        assert len(hits) == 10 and all(h.product_id for h in hits)
    finally:
        client.close()


def test_every_model_of_the_search_ensemble_is_ready(triton_server):
    client = httpclient.InferenceServerClient(triton_server.http_url)
    for model in ("tokenizer", "embedder", "ranker", "postprocess", "search"):
        assert client.is_model_ready(model), model
    config = client.get_model_config("embedder")
    assert "dynamic_batching" in config and config["backend"] == "python"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_search_over_both_protocols_returns_ranked_products(protocol, http, grpc):
    client = http if protocol == "http" else grpc
    hits = client.search(["blue tent", "frying pan"])
    assert [len(h) for h in hits] == [10, 10]
    assert all(h.title for row in hits for h in row)
    assert [h.score for h in hits[0]] == sorted((h.score for h in hits[0]), reverse=True)


def test_served_top10_equals_the_in_process_pipeline(built_repo, tiny_dataset, http, grpc):
    pipeline = InProcessEnsemble.from_repository(built_repo)
    queries = sorted(tiny_dataset.queries["dev"].values())[:40]
    expected = pipeline.search(queries)
    for client in (http, grpc):
        served = client.search(queries)
        for query, want, got in zip(queries, expected, served):
            assert [h.product_id for h in got] == [h.product_id for h in want], query
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)


def test_a_cached_answer_equals_the_computed_one_and_errors_are_never_cached(triton_server, built_repo, http, grpc):
    """The search ensemble's answers come from Triton's response cache on a repeat (its statistics
    count the hit), equal to the computed answer and the in-process pipeline's; TOPK is part of the key."""
    stats = httpclient.InferenceServerClient(triton_server.http_url)

    def counts() -> tuple[int, int]:
        inference = stats.get_inference_statistics("search")["model_stats"][0]["inference_stats"]
        return int(inference["cache_hit"]["count"]), int(inference["cache_miss"]["count"])

    query = "waterproof hiking boots size 9 (cache probe)"
    expected = InProcessEnsemble.from_repository(built_repo).search([query], top_k=7)[0]
    hits0, misses0 = counts()
    first = http.search([query], top_k=7)[0]
    assert counts() == (hits0, misses0 + 1)
    for client in (http, grpc):
        again = client.search([query], top_k=7)[0]
        assert [(h.product_id, h.title) for h in again] == [(h.product_id, h.title) for h in first]
        np.testing.assert_allclose([h.score for h in again], [h.score for h in expected], atol=1e-5)
    assert counts() == (hits0 + 2, misses0 + 1)
    assert [h.product_id for h in first] == [h.product_id for h in expected]
    assert len(http.search([query], top_k=3)[0]) == 3 and counts()[1] == misses0 + 2  # another TOPK: another key
    # A refused request is not cached: the same bad request is refused again, never answered.
    for _ in range(2):
        with pytest.raises(InferenceServerException, match="TOPK"):
            http.search([query], top_k=100_000)
    stats.close()


def test_filtered_answers_served_equal_the_in_process_pipeline_and_impossible_filters_are_refused(
        triton_server, built_repo, tiny_dataset, http, grpc):
    from shopsearch.core.filters import SearchFilters

    pipeline = InProcessEnsemble.from_repository(built_repo)
    category = tiny_dataset.products[0].category
    by_id = {p.product_id: p for p in tiny_dataset.products}
    filters = SearchFilters(category=category, price_max=200.0, in_stock=True)
    queries = sorted(tiny_dataset.queries["dev"].values())[:10]
    expected = pipeline.search(queries, filters=filters)
    for client in (http, grpc):
        served = client.search(queries, filters=filters)
        assert [[h.product_id for h in row] for row in served] == [[h.product_id for h in row] for row in expected]
        assert all(by_id[h.product_id].category == category and by_id[h.product_id].price <= 200 and by_id[h.product_id].in_stock
                   for row in served for h in row)
        with pytest.raises(InferenceServerException, match="CATEGORY: unknown category 'Spaceships'"):
            client.search(["tent"], filters=SearchFilters(category="Spaceships"))
        with pytest.raises(InferenceServerException, match="PRICE_MIN"):
            client.search(["tent"], filters=SearchFilters(price_min=90.0, price_max=10.0))
    assert_healthy(triton_server)


def test_topk_input_changes_the_number_of_results(http, grpc):
    assert len(http.search(["tent"], top_k=100)[0]) == 100
    assert len(grpc.search(["tent"], top_k=3)[0]) == 3


# ---- bad input: a clear error or a sane answer, and the server stays healthy ----


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_empty_query_gets_a_clear_error(protocol, http, grpc, triton_server):
    client = http if protocol == "http" else grpc
    with pytest.raises(InferenceServerException, match="query is empty or whitespace-only") as info:
        client.search([""])
    # A client fault, not a server one: HTTP 400 / gRPC INVALID_ARGUMENT (clients must not retry it).
    assert info.value.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
    with pytest.raises(InferenceServerException, match="query is empty"):
        client.search(["   \t"])
    assert_healthy(triton_server)


def test_ten_thousand_character_query_is_truncated_and_answered(http, triton_server):
    hits = http.search(["blue tent " * 1000])[0]
    assert len(hits) == 10
    assert_healthy(triton_server)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_non_utf8_query_is_answered_with_replacement_characters(protocol, http, grpc, triton_server):
    client = http if protocol == "http" else grpc
    hits = client.search([b"blue t\xe9nt \xff\xfe"])[0]
    assert len(hits) == 10
    assert_healthy(triton_server)


def test_batch_of_256_queries_is_answered_and_257_is_refused(http, tiny_dataset, triton_server):
    queries = (sorted(tiny_dataset.queries["train"].values()) * 2)[:256]
    results = http.search(queries)
    assert len(results) == 256 and all(len(r) == 10 for r in results)
    with pytest.raises(InferenceServerException, match="batch"):
        http.search(queries + ["one more"])
    assert_healthy(triton_server)


def test_wrong_dtype_wrong_shape_and_unknown_input_get_clear_errors(triton_server):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    wrong_dtype = grpcclient.InferInput("QUERY", [1, 1], "FP32")
    wrong_dtype.set_data_from_numpy(np.ones((1, 1), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="(?i)data-type|datatype|expected"):
        client.infer("search", [wrong_dtype])
    wrong_shape = grpcclient.InferInput("QUERY", [1, 3], "BYTES")
    wrong_shape.set_data_from_numpy(np.array([[b"a", b"b", b"c"]], dtype=object))
    with pytest.raises(InferenceServerException, match="(?i)shape"):
        client.infer("search", [wrong_shape])
    unknown = grpcclient.InferInput("QUERIES", [1, 1], "BYTES")
    unknown.set_data_from_numpy(np.array([[b"tent"]], dtype=object))
    with pytest.raises(InferenceServerException, match="(?i)unexpected inference input|QUERY"):
        client.infer("search", [unknown])
    bad_topk = grpcclient.InferInput("TOPK", [1, 1], "INT32")
    bad_topk.set_data_from_numpy(np.array([[0]], dtype=np.int32))
    query = grpcclient.InferInput("QUERY", [1, 1], "BYTES")
    query.set_data_from_numpy(np.array([[b"tent"]], dtype=object))
    with pytest.raises(InferenceServerException, match="TOPK: must be between 1 and 100"):
        client.infer("search", [query, bad_topk])
    client.close()
    assert_healthy(triton_server)


def test_hostile_json_and_out_of_range_ids_sent_to_inner_models_are_refused(triton_server):
    url = f"http://{triton_server.http_url}/v2/models/search/infer"
    for body in (b"{not json", b'{"inputs": [{"name": "QUERY", "shape": [1, 1], "datatype": "BYTES", "data": [[1, 2]]}]}'):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        # tritonserver 2.51 answers malformed JSON with 500 (its choice, not ours) and a short message.
        assert info.value.code in (400, 500)
        error = json.loads(info.value.read().decode())["error"]
        assert "parse" in error and "Traceback" not in error
    client = httpclient.InferenceServerClient(triton_server.http_url)
    ids = httpclient.InferInput("input_ids", [1, 3], "INT64")
    ids.set_data_from_numpy(np.array([[2, 10 ** 9, 3]], dtype=np.int64))
    mask = httpclient.InferInput("attention_mask", [1, 3], "INT64")
    mask.set_data_from_numpy(np.ones((1, 3), dtype=np.int64))
    with pytest.raises(InferenceServerException, match="embedder: input_ids: token ids must lie in") as info:
        client.infer("embedder", [ids, mask])
    assert "Traceback" not in str(info.value)
    client.close()
    assert_healthy(triton_server)


def test_metrics_endpoint_counts_successes_and_failures(triton_server, http):
    http.search(["tent"])
    with pytest.raises(InferenceServerException):
        http.search([" "])
    with urllib.request.urlopen(f"http://{triton_server.host}:{triton_server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'nv_inference_request_success{model="search"' in text
    failures = [line for line in text.splitlines() if line.startswith('nv_inference_request_failure{model="search"')]
    assert failures and any(float(line.rsplit(" ", 1)[1]) > 0 for line in failures)


def test_served_dev_metrics_equal_the_in_process_pipeline_next_to_bm25(built_repo, tiny_checkpoint, tiny_dataset,
                                                                       triton_server, tmp_path):
    from shopsearch.evaluation.search import evaluate_repository, write_report

    report = evaluate_repository(built_repo, tiny_dataset, "dev", served_url=triton_server.http_url, limit=60, bm25=True,
                                 ablation={"shipped": tiny_checkpoint}, log=lambda m: None)
    for metric in ("ndcg@10", "recall@100", "mrr@10"):
        assert report["served"][metric] == pytest.approx(report["in_process"][metric], abs=1e-9)
    assert report["in_process"]["ndcg@10"] > 0.3  # a trained model, not noise
    assert 0 < report["bm25"]["ndcg@10"] < 1 and report["bm25"]["queries"] == report["served"]["queries"]
    comparisons = report["comparisons"]
    assert comparisons["ndcg@10_vs_bm25"] == pytest.approx(report["served"]["ndcg@10"] / report["bm25"]["ndcg@10"], abs=1e-4)
    assert comparisons["max_abs_served_minus_in_process"] == pytest.approx(0, abs=1e-9)
    # The ablation row of the checkpoint the repository was built from: its PyTorch FP32 pipeline
    # in this process, within INT8 quantization's reach of what is served.
    shipped = report["ablation"]["shipped"]
    assert set(shipped) >= {"dense", "rrf", "hybrid", "training"} and shipped["hybrid"]["queries"] == report["served"]["queries"]
    assert shipped["hybrid"]["ndcg@10"] == pytest.approx(report["served"]["ndcg@10"], abs=0.03)
    assert shipped["training"]["steps"] == 150 and shipped["training"]["distillation"] is None
    json_path, md_path, png_path, ablation_png = write_report(report, tmp_path / "eval")
    assert "| bm25 |" in md_path.read_text() and png_path.stat().st_size > 5000
    assert "| shipped | 150 steps" in md_path.read_text() and ablation_png.stat().st_size > 5000
