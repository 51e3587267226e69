import numpy as np
import pytest
import torch

from shopsearch.errors import ExportParityError
from shopsearch.export.onnx import INPUT_NAMES, OUTPUT_NAME, export_onnx, read_signature
from shopsearch.core.modeling import load_checkpoint
from shopsearch.core.embedding import OnnxEmbedder
from shopsearch.export.optimize import PARITY, fuse_transformer, quantize_int8
from shopsearch.export.parity import RetrievalSet, compare, gate, onnxrt_runner, polygraphy_compare, reference_outputs, run_side
from shopsearch.core.tokenization import TOKENIZER_FILE, TextEncoder


@pytest.fixture(scope="module")
def exported(random_checkpoint, tmp_path_factory):
    model, _ = load_checkpoint(random_checkpoint)
    work = tmp_path_factory.mktemp("onnx")
    path = export_onnx(model, work / "model.onnx")
    return model, path, work


@pytest.fixture(scope="module")
def encoders(random_checkpoint, exported):
    model = exported[0]
    return (TextEncoder.from_file(random_checkpoint / TOKENIZER_FILE, model.config.max_query_length),
            TextEncoder.from_file(random_checkpoint / TOKENIZER_FILE, model.config.max_product_length))


@pytest.fixture(scope="module")
def reference(exported, encoders, tiny_dataset):
    data = RetrievalSet.from_dataset(tiny_dataset, max_queries=60)
    return data, reference_outputs(exported[0], *encoders, data)


def test_onnx_export_has_dynamic_batch_and_sequence_axes_and_a_fixed_width(exported):
    model, path, _ = exported
    signature = read_signature(path)
    assert [i.name for i in signature.inputs] == list(INPUT_NAMES)
    assert all(isinstance(d, str) for i in signature.inputs for d in i.shape)
    assert signature.outputs[0].name == OUTPUT_NAME
    assert signature.outputs[0].shape[1] == model.config.hidden_size


def test_every_cpu_artifact_passes_its_parity_gate(exported, encoders, reference, attention_fusion):
    model, fp32, work = exported
    data, ref = reference
    fused, ops = fuse_transformer(fp32, work / "fused.onnx", model.config.num_heads, model.config.hidden_size)
    assert ops.get("Attention") == model.config.num_layers
    int8 = quantize_int8(fused, work / "int8.onnx")
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size
    for name, path in (("onnx_fp32", fp32), ("onnx_fused", fused), ("onnx_int8", int8)):
        report = gate(compare(name, ref, run_side(OnnxEmbedder(path), *encoders, data), PARITY[name]))
        assert report.ok and report.numbers["mean_cosine"] >= PARITY[name].min_mean_cosine
    fp32_report = compare("onnx_fp32", ref, run_side(OnnxEmbedder(fp32), *encoders, data), PARITY["onnx_fp32"])
    assert fp32_report.numbers["max_abs_diff"] < 1e-4 and abs(fp32_report.numbers["ndcg10_drop"]) < 1e-3


def test_parity_gate_fails_the_build_listing_every_number_when_an_artifact_drifts(exported, encoders, reference):
    model, fp32, work = exported
    data, ref = reference
    drifted = type(model)(model.config)
    drifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        drifted.bert.encoder.layer[0].output.dense.weight.mul_(3.0)
    drifted_path = export_onnx(drifted, work / "drifted.onnx")
    with pytest.raises(ExportParityError) as info:
        gate(compare("onnx_fp32", ref, run_side(OnnxEmbedder(drifted_path), *encoders, data), PARITY["onnx_fp32"]))
    message = str(info.value)
    for name in ("embedding.max_abs_diff", "embedding.mean_cosine", "retrieval.top10_overlap", "retrieval.ndcg10_drop"):
        assert name in message  # passing numbers are listed too
    assert "embedding.max_abs_diff" in info.value.failed and "FAIL" in message


def test_polygraphy_comparator_checks_one_runtime_against_another(exported, encoders, attention_fusion):
    model, fp32, work = exported
    fused, _ = fuse_transformer(fp32, work / "fused_pg.onnx", model.config.num_heads, model.config.hidden_size)
    batch = encoders[0].encode_texts(["red tent", "frying pan 12 inch", "x"])
    feeds = [{"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}]
    result = polygraphy_compare(onnxrt_runner(fp32, "fp32"), onnxrt_runner(fused, "fused"), feeds, atol=1e-3)
    assert result["passed"] and result["max_abs_diff_first_feed"] < 1e-3
    drifted = polygraphy_compare(onnxrt_runner(fp32, "fp32"), onnxrt_runner(quantize_int8(fused, work / "i8.onnx"), "int8"), feeds, atol=1e-7)
    assert not drifted["passed"]


def test_int8_build_quantizes_the_plain_graph_where_attention_cannot_be_fused(random_checkpoint, tiny_dataset,
                                                                             tmp_path, monkeypatch):
    """An ONNX Runtime that fuses no attention (1.23.2 on Python 3.10): INT8 still ships, from the
    unfused graph, and the manifest says why; PRECISION=fused cannot, and says so."""
    import shopsearch.build.search as build_search
    from shopsearch.build.options import BuildOptions
    from shopsearch.errors import FusionUnavailableError

    def no_fusion(fp32, out, heads, hidden):
        raise FusionUnavailableError(f"{fp32}: ONNX Runtime 1.23.2 fused no Attention node")
    monkeypatch.setattr(build_search, "fuse_transformer", no_fusion)
    report = build_search.build_repository(random_checkpoint, tiny_dataset, tmp_path / "repo", tmp_path / "work",
                                           BuildOptions(precision="int8", parity_queries=30), log=lambda m: None)
    assert report["served_embedder"] == "onnx_int8" and "onnx_fused" not in report["parity"]
    assert report["parity"]["onnx_int8"]["passed"]
    assert report["artifact_details"]["fused_operators"].startswith("none: ") and "1.23.2" in report["artifact_details"]["fused_operators"]
    with pytest.raises(FusionUnavailableError, match="1.23.2"):
        build_search.build_repository(random_checkpoint, tiny_dataset, tmp_path / "repo2", tmp_path / "work2",
                                      BuildOptions(precision="fused", parity_queries=30), log=lambda m: None)


@pytest.mark.training
def test_checkpoint_carries_its_config_and_provenance(tiny_checkpoint):
    model, card = load_checkpoint(tiny_checkpoint)
    assert card["encoder_config"]["hidden_size"] == model.config.hidden_size
    assert card["dataset"]["fingerprint"] and card["train_config"]["steps"] > 0
    assert set(card["dev_metrics"]) >= {"ndcg@10", "recall@100"}
    vectors = model(torch.tensor([[2, 7, 3]]), torch.tensor([[1, 1, 1]])).detach().numpy()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
