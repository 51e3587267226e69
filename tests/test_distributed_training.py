"""Data-parallel training (torchrun, gloo on CPU) takes the same steps as one process on the same
global batch: two processes on this machine against one, compared step by step and weight by weight."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shopsearch.train.recipes import load_recipe
from shopsearch.ops.server import free_port
from shopsearch.train.biencoder import train_biencoder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.multiprocess

# Small and dropout-free: dropout masks are per process, so equal updates need none.
RECIPE = """
[data]
name = "synthetic"
n_products = 600
n_queries = 400

[train]
vocab_size = 800
hidden_size = 32
num_layers = 1
num_heads = 2
intermediate_size = 64
max_query_length = 16
max_product_length = 24
max_positions = 32
batch_size = 16
steps = 6
learning_rate = 1e-3
dropout = 0.0
eval_queries = 20
"""


def _weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "encoder.pt", weights_only=True)["state_dict"]


def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path):
    recipe_path = tmp_path / "ddp.toml"
    recipe_path.write_text(RECIPE)
    recipe = load_recipe(recipe_path)
    single = train_biencoder(recipe.dataset(), recipe.train_config(), tmp_path / "single", log=lambda m: None)

    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "training/train_search.py", "--recipe", str(recipe_path), "--out", str(tmp_path / "ddp"),
         # The same tokenizer: WordPiece training breaks frequency ties differently per process.
         "--tokenizer", str(tmp_path / "single" / "tokenizer.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "checkpoint.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["loss_curve"] == pytest.approx(single["loss_curve"], abs=1e-4)
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"largest weight difference {worst}"
    # The weights moved: the comparison is between two trained models, not two initializations.
    assert single["loss_curve"][0] != single["loss_curve"][-1]


def test_gradient_accumulation_trains_and_batch_must_divide_into_micro_batches(tmp_path):
    from shopsearch.errors import ConfigError

    recipe_path = tmp_path / "accum.toml"
    recipe_path.write_text(RECIPE)
    recipe = load_recipe(recipe_path)
    meta = train_biencoder(recipe.dataset(), recipe.train_config(grad_accumulation=2, steps=3), tmp_path / "acc", log=lambda m: None)
    assert len(meta["loss_curve"]) == 3 and all(0 < v < 10 for v in meta["loss_curve"])
    with pytest.raises(ConfigError, match="train: batch_size: 16 must divide into 3 micro-batches"):
        train_biencoder(recipe.dataset(), recipe.train_config(grad_accumulation=3), tmp_path / "bad", log=lambda m: None)


REC_WORKER = """
import json, sys
import numpy as np
import torch
from shopsearch.data.interactions import Interactions
from shopsearch.train.recommender import RecTrainConfig, train_recommender

rng = np.random.default_rng(0)
histories = [[int(x) for x in (rng.integers(30) + np.arange(rng.integers(3, 9))) % 30] for _ in range(96)]
data = Interactions("ddp", [f"i{i}" for i in range(30)], [""] * 30, histories, [0] * len(histories))
cfg = RecTrainConfig(hidden_size=16, max_length=8, epochs=2, batch_size=16, negatives=12, dropout=0.0, id_dropout=0.0)
model, card = train_recommender(data, cfg, None, log=lambda m: None)
if card:
    torch.save(model.state_dict(), sys.argv[1] + ".pt")
    json.dump(card, open(sys.argv[1] + ".json", "w"))
"""


def test_recommender_ddp_matches_one_process_on_the_same_global_batch(tmp_path):
    """The recommender trains data-parallel exactly as search does: each rank encodes a shard, the
    loss is weighted by the global batch's positions, so the update equals one process's."""
    worker = tmp_path / "rec_worker.py"
    worker.write_text(REC_WORKER)
    single = subprocess.run([sys.executable, str(worker), str(tmp_path / "single")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(worker), str(tmp_path / "ddp")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("single", "ddp"))
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["loss_curve"] == pytest.approx(one["loss_curve"], abs=1e-4)
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("single", "ddp"))
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, f"largest weight difference {worst}"
    assert one["loss_curve"][0] != one["loss_curve"][-1]
