import numpy as np
import pytest
import torch

from shopsearch.errors import ExportParityError
from shopsearch.export import INPUT_NAMES, OUTPUT_NAME, check_parity, export_onnx, read_signature
from shopsearch.modeling import TOKENIZER_FILE, load_checkpoint
from shopsearch.tokenization import TextEncoder

PROBES = ["red running shoes", "x", "stainless steel frying pan 12 inch " * 8, "cordless drill 20v"]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    model, _ = load_checkpoint(tiny_checkpoint)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")
    encoder = TextEncoder.from_file(tiny_checkpoint / TOKENIZER_FILE, model.config.max_query_length)
    return model, path, encoder


def test_onnx_export_has_dynamic_batch_and_sequence_axes(exported):
    model, path, _ = exported
    signature = read_signature(path)
    assert [i.name for i in signature.inputs] == list(INPUT_NAMES)
    assert all(isinstance(d, str) for i in signature.inputs for d in i.shape)
    assert signature.outputs[0].name == OUTPUT_NAME
    assert signature.outputs[0].shape[1] == model.config.hidden_size


def test_onnx_export_matches_pytorch_within_fp32_tolerance(exported):
    model, path, encoder = exported
    numbers = check_parity(model, path, encoder, PROBES)
    assert numbers["max_abs_diff"] < 1e-4 and numbers["min_cosine"] > 0.9999


def test_parity_check_fails_the_build_listing_each_number_when_the_export_drifts(exported):
    model, path, encoder = exported
    drifted = type(model)(model.config)
    drifted.load_state_dict(model.state_dict())
    with torch.no_grad():
        drifted.bert.encoder.layer[0].output.dense.weight.mul_(1.5)  # the ONNX file still has the old weights
    drifted.eval()
    with pytest.raises(ExportParityError) as info:
        check_parity(drifted, path, encoder, PROBES)
    message = str(info.value)
    assert "embedding.max_abs_diff" in message and "limit" in message
    assert info.value.diffs["embedding.max_abs_diff"] > 1e-4


def test_checkpoint_carries_its_config_and_provenance(tiny_checkpoint):
    model, card = load_checkpoint(tiny_checkpoint)
    assert card["encoder_config"]["hidden_size"] == model.config.hidden_size
    assert card["dataset"]["fingerprint"] and card["train_config"]["steps"] > 0
    assert set(card["dev_metrics"]) >= {"ndcg@10", "recall@100"}
    vectors = model(torch.tensor([[2, 7, 3]]), torch.tensor([[1, 1, 1]])).detach().numpy()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
