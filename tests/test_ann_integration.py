"""An approximate index served by a real tritonserver: the ranker's Python backend loads the
memory-mapped faiss index, and the served answers equal the in-process pipeline's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shopsearch.clients.search import SearchClient
from shopsearch.core.ann import ANN_FILE, IndexSpec
from shopsearch.serving.pipeline import InProcessEnsemble

pytestmark = pytest.mark.integration


# rescore 2: candidates rescored exactly from the float32 vectors; 0: the 8-bit scores as they are.
@pytest.fixture(scope="module", params=[2, 0], ids=["rescored", "8-bit"])
def ivf_repo(request, tiny_checkpoint, tiny_dataset, tmp_path_factory):
    from shopsearch.build.options import BuildOptions
    from shopsearch.build.search import build_repository

    root = tmp_path_factory.mktemp("ivf_build")
    repo = root / "model_repository"
    # nprobe 0: the build picks the fewest cells reaching the recall gate on dev.
    spec = IndexSpec(kind="ivf", nprobe=0, min_recall=0.98, rescore=request.param)
    report = build_repository(tiny_checkpoint, tiny_dataset, repo, root / "work",
                              BuildOptions(intra_op_threads=1, index=spec), log=lambda m: None)
    return repo, report


@pytest.fixture(scope="module")
def ivf_server(ivf_repo, tmp_path_factory):
    from shopsearch.ops.server import TritonServer

    with TritonServer(ivf_repo[0], log_path=tmp_path_factory.mktemp("ivf_triton") / "tritonserver.log") as server:
        yield server


def test_the_build_records_the_index_it_tuned_and_gated(ivf_repo):
    repo, report = ivf_repo
    index = report["index"]
    assert index["kind"] == "ivf" and index["recall@100_vs_exact"] >= 0.98 and index["spec"]["nprobe"] > 0
    assert index["tuning"][-1]["nprobe"] == index["spec"]["nprobe"]
    saved = json.loads((repo / "ranker" / "1" / "index.json").read_text())
    assert saved["index"] == index["spec"] and (repo / "ranker" / "1" / ANN_FILE).stat().st_size == saved["ann_bytes"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_answers_through_the_ivf_index_equal_the_in_process_pipeline(protocol, ivf_repo, ivf_server, tiny_dataset):
    repo, _ = ivf_repo
    pipeline = InProcessEnsemble.from_repository(repo)
    queries = sorted(tiny_dataset.queries["dev"].values())[:40]
    expected = pipeline.search(queries)
    client = SearchClient(ivf_server.http_url if protocol == "http" else ivf_server.grpc_url, protocol)
    try:
        served = client.search(queries)
    finally:
        client.close()
    for query, want, got in zip(queries, expected, served):
        assert [h.product_id for h in got] == [h.product_id for h in want], query
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
