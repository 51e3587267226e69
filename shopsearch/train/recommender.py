"""Training of the sequential recommender: next-item prediction at every position of every history.

Loss: sampled softmax. Each step draws one set of negatives shared by the whole batch (uniform
over the catalog, so no logQ correction is needed); a negative that happens to be a row's own
target is masked out. Data-parallel under torchrun like search training (each rank takes a shard
of every batch, gradients averaged by DDP); bf16 autocast on CPU, fp16 with a gradient scaler on
CUDA.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from shopsearch.errors import ConfigError
from shopsearch.data.interactions import Interactions
from shopsearch.core.recommender import RecConfig, SequentialRecommender, pack, save_rec_checkpoint
from shopsearch.core.provenance import git_revision
from shopsearch.train.distributed import distributed_context, global_mean, seed_everything, training_device
from shopsearch.train.schedule import warmup_cosine


@dataclass(frozen=True)
class RecTrainConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    max_length: int = 50
    dropout: float = 0.2
    id_dropout: float = 0.1
    use_titles: bool = True  # item vectors include the search embedder's title vectors
    batch_size: int = 128  # users per step
    epochs: int = 20
    negatives: int = 2048  # shared sampled negatives per step; >= the catalog size: full softmax
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    seed: int = 0
    threads: int = 0
    mixed_precision: bool = False  # bf16 autocast on CPU; on CUDA `cuda_amp`
    cuda_amp: str = "fp16"  # on CUDA: "fp16" (with gradient scaling) or "bf16" (needs none)
    device: str = ""  # "": CUDA where there is one, else the CPU; "cpu" / "cuda" to choose
    extra: dict = field(default_factory=dict)


def training_batches(histories: list[list[int]], batch_size: int, max_length: int, rng: random.Random) -> list[list[int]]:
    """Users grouped into batches of similar history length (little padding), in random order."""
    users = [u for u, h in enumerate(histories) if len(h) >= 2]
    rng.shuffle(users)
    users.sort(key=lambda u: min(len(histories[u]), max_length + 1))
    batches = [users[i : i + batch_size] for i in range(0, len(users), batch_size)]
    rng.shuffle(batches)
    return batches


def sampled_softmax_loss(hidden: torch.Tensor, targets: torch.Tensor, item_vectors, n_items: int,
                         negatives: int, generator: torch.Generator) -> torch.Tensor:
    """Summed (not averaged) cross-entropy of n positions: hidden [n, d], targets [n];
    `item_vectors(rows)` gives item vectors (all items for None)."""
    if negatives >= n_items:  # full softmax over the catalog
        logits = hidden @ item_vectors(None).T
        return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    sampled = torch.randint(0, n_items, (negatives,), generator=generator).to(targets.device)
    positive = (hidden * item_vectors(targets)).sum(-1, keepdim=True)
    negative = hidden @ item_vectors(sampled).T
    negative = negative.masked_fill(sampled.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([positive, negative], dim=1).float()
    zeros = torch.zeros(len(targets), dtype=torch.long, device=logits.device)
    return torch.nn.functional.cross_entropy(logits, zeros, reduction="sum")


def train_recommender(data: Interactions, cfg: RecTrainConfig, title_vectors: np.ndarray | None = None,
                      log=print) -> tuple[SequentialRecommender, dict]:
    started = time.time()
    seed_everything(cfg.seed, cfg.threads)
    rank, world = distributed_context()
    if rank != 0:
        log = lambda m: None  # noqa: E731
    if cfg.batch_size % world:
        raise ConfigError("train-rec", "batch_size", f"{cfg.batch_size} must divide among {world} ranks")
    if cfg.cuda_amp not in ("fp16", "bf16"):
        raise ConfigError("train-rec", "cuda_amp", f"'{cfg.cuda_amp}' is not fp16 or bf16")
    device = training_device(rank, cfg.device)  # this host's GPU of this rank (LOCAL_RANK), not the global rank's
    use_titles = cfg.use_titles and title_vectors is not None
    if cfg.use_titles and title_vectors is None:
        log("recommender: no title vectors for this data: id embeddings only (no cold-start vectors)")
    counts = data.item_counts()
    model_cfg = RecConfig(n_items=data.n_items, text_dim=title_vectors.shape[1] if use_titles else 0,
                          hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                          max_length=cfg.max_length, dropout=cfg.dropout, id_dropout=cfg.id_dropout)
    model = SequentialRecommender(model_cfg, title_vectors if use_titles else None, trained_items=counts > 0).to(device)
    trainable = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                 if world > 1 else model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)  # the same batches on every rank
    steps_per_epoch = len(training_batches(data.histories, cfg.batch_size, cfg.max_length, random.Random(0)))
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, cfg.warmup_fraction))
    fp16 = device.type == "cuda" and cfg.cuda_amp == "fp16"
    amp_dtype = torch.float16 if fp16 else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.mixed_precision and fp16)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    padding = model_cfg.padding_item
    losses: list[float] = []
    model.train()
    for epoch in range(cfg.epochs):
        epoch_started, epoch_losses = time.time(), []
        for batch in training_batches(data.histories, cfg.batch_size, cfg.max_length, rng):
            if len(batch) < world:
                continue  # a rank would get no user
            windows = [data.histories[u][-(cfg.max_length + 1) :] for u in batch]
            positions = sum(len(w) - 1 for w in windows)  # of the global batch: the same on every rank
            local = windows[rank::world]
            inputs = torch.from_numpy(pack([w[:-1] for w in local], padding)).to(device)
            labels = torch.from_numpy(pack([w[1:] for w in local], padding)).to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.mixed_precision):
                # Through the DDP wrapper's forward, so DDP sees one forward per backward.
                hidden = trainable(inputs, all_positions=True)
                valid = labels != padding
                # This rank's share of the global mean; DDP averages gradients over ranks, hence * world.
                loss = sampled_softmax_loss(hidden[valid], labels[valid], model.item_vectors, data.n_items,
                                            cfg.negatives, generator) * (world / positions)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            epoch_losses.append(global_mean(loss.detach(), world))
        losses.append(float(np.mean(epoch_losses)))
        log(f"epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f} ({time.time() - epoch_started:.1f}s)")
    model.eval()
    if rank != 0:
        return model.cpu(), {}  # rank 0 writes the checkpoint
    card = {
        "train_config": asdict(cfg),
        "dataset": {"name": data.name, "fingerprint": data.fingerprint(), "stats": data.stats(), "source": data.source},
        "loss_curve": [round(v, 5) for v in losses],
        "world_size": world,
        "device": device.type,
        "code_version": git_revision(),
        "seconds": round(time.time() - started, 1),
    }
    return model.cpu(), card


PROBES = 512  # real histories kept in the checkpoint: the build's parity gate runs the exported encoder on them


def train_to_checkpoint(data: Interactions, cfg: RecTrainConfig, out: Path, search_checkpoint: Path | None,
                        log=print) -> dict:
    """Title vectors (when the items have titles and a search checkpoint is given), training, and a
    checkpoint that carries its config, catalog and parity probes."""
    vectors, text_source = None, None
    if cfg.use_titles and data.has_titles and search_checkpoint is not None:
        from shopsearch.train.title_vectors import title_vectors

        vectors, text_source = title_vectors(search_checkpoint, data.titles)
        log(f"title vectors: {vectors.shape[0]} items x {vectors.shape[1]} from {search_checkpoint}")
    model, card = train_recommender(data, cfg, vectors, log=log)
    if not card:
        return {}  # a data-parallel rank other than 0
    card["title_vectors"] = text_source
    probes = random.Random(cfg.seed).sample(data.histories, min(PROBES, len(data.histories)))
    save_rec_checkpoint(model, out, card, data.item_ids, data.titles, data.item_counts(), probes)
    log(f"recommender checkpoint: {out}")
    return card
