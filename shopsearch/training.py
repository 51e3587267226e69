"""Contrastive training of the bi-encoder: query -> relevant product, in-batch negatives."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from shopsearch.data.schema import Dataset
from shopsearch.errors import ConfigError
from shopsearch.embedding import TorchEmbedder, embed_texts
from shopsearch.index import CatalogIndex
from shopsearch.metrics import evaluate_run
from shopsearch.modeling import BiEncoder, EncoderConfig, save_checkpoint
from shopsearch.tokenization import TextEncoder, pad_batches, train_wordpiece


@dataclass(frozen=True)
class TrainConfig:
    vocab_size: int = 8000
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_query_length: int = 32
    max_product_length: int = 48
    max_positions: int = 64
    batch_size: int = 64  # queries per step; each brings one positive product
    steps: int = 600
    learning_rate: float = 5e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    temperature: float = 0.05  # softmax temperature over cosine similarities
    seed: int = 0
    threads: int = 0  # 0: all cores
    amp_bf16: bool = False  # bf16 autocast (CPU); numbers stay fp32 in the checkpoint
    dropout: float = 0.1
    # Micro-batches per optimizer step. In-batch negatives come from the micro-batch (across all
    # data-parallel ranks), so accumulation saves memory but gives each query fewer negatives.
    grad_accumulation: int = 1
    eval_queries: int = 0  # 0: the whole dev split
    # Fraction of train queries kept away from the bi-encoder for the re-ranker (split "rerank").
    rerank_holdout: float = 0.0
    extra: dict = field(default_factory=dict)


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return (out.stdout.strip() or "unknown") + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _lr_lambda(cfg: TrainConfig):
    warmup = max(1, int(cfg.steps * cfg.warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup))))

    return schedule


class PairSampler:
    """Batches of (query, one relevant product), no product twice in a batch (it would be a
    false negative for the other row)."""

    def __init__(self, dataset: Dataset, seed: int):
        queries, qrels = dataset.split("train")
        self.items = [
            (queries[qid], sorted(pid for pid, g in judged.items() if g >= dataset.relevant_min_gain))
            for qid, judged in sorted(qrels.items())
        ]
        self.items = [(q, pids) for q, pids in self.items if pids]
        if not self.items:
            raise ValueError(f"dataset {dataset.name}: no training query has a relevant product")
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def batch(self, size: int) -> list[tuple[str, str]]:
        out, used = [], set()
        while len(out) < size:
            if not self.order:
                self.order = list(range(len(self.items)))
                self.rng.shuffle(self.order)
            text, pids = self.items[self.order.pop()]
            pid = self.rng.choice(pids)
            if pid not in used:
                used.add(pid)
                out.append((text, pid))
            if len(used) >= len(self.items) and len(out) < size:
                break
        return out


def distributed_context() -> tuple[int, int]:
    """(rank, world size) under torchrun (WORLD_SIZE > 1 starts the process group: gloo on CPU,
    nccl on CUDA), or (0, 1) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _gather(x: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's rows, in rank order, with gradients flowing back to each rank's own rows."""
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))


def contrastive_loss(qv: torch.Tensor, pv: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: each query picks its product, each product picks its query."""
    logits = (qv @ pv.T) / temperature
    labels = torch.arange(len(qv))
    return 0.5 * (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels))


def evaluate_model(model: BiEncoder, encoder_q: TextEncoder, encoder_p: TextEncoder, dataset: Dataset,
                   split: str = "dev", limit: int = 0) -> dict[str, float]:
    """Full-catalog retrieval metrics of a PyTorch model on one split."""
    queries, qrels = dataset.split(split)
    qids = sorted(queries)[: limit or None]
    embedder = TorchEmbedder(model)
    index = CatalogIndex(embed_texts(embedder, encoder_p, [p.search_text() for p in dataset.products]), "eval")
    q_vectors = embed_texts(embedder, encoder_q, [queries[q] for q in qids])
    top, scores = index.search(q_vectors, 100)
    ids = [p.product_id for p in dataset.products]
    run = {qid: {ids[i]: float(s) for i, s in zip(top[r], scores[r])} for r, qid in enumerate(qids)}
    return evaluate_run(run, {q: qrels.get(q, {}) for q in qids}, dataset.relevant_min_gain)


def train_biencoder(dataset: Dataset, cfg: TrainConfig, out_dir: Path, log=print, tokenizer_file: Path | None = None) -> dict:
    """`tokenizer_file`: reuse a trained tokenizer instead of training one (WordPiece training breaks
    ties between equally frequent pieces differently from process to process)."""
    started = time.time()
    fingerprint = dataset.fingerprint()  # of the data as given; the holdout is part of the config
    if cfg.rerank_holdout:
        dataset = dataset.with_holdout(cfg.rerank_holdout)
        log(f"re-ranker holdout: {len(dataset.queries['rerank'])} train queries kept out of bi-encoder training")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    rank, world = distributed_context()
    if rank != 0:
        log = lambda m: None  # noqa: E731 - one log, from rank 0
    if cfg.batch_size % (cfg.grad_accumulation * world):
        raise ConfigError("train", "batch_size", f"{cfg.batch_size} must divide into {cfg.grad_accumulation} micro-batches "
                          f"x {world} ranks")
    if tokenizer_file is not None:
        tokenizer_json = Path(tokenizer_file).read_text()
    elif rank == 0:
        corpus = [p.search_text() for p in dataset.products] + list(dataset.queries.get("train", {}).values())
        tokenizer_json = train_wordpiece(corpus, vocab_size=cfg.vocab_size).to_str()
    if world > 1 and tokenizer_file is None:  # every rank tokenizes with rank 0's tokenizer
        import torch.distributed as dist

        shared = [tokenizer_json if rank == 0 else None]
        dist.broadcast_object_list(shared, src=0)
        tokenizer_json = shared[0]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    log(f"tokenizer: {tokenizer.get_vocab_size()} wordpieces ({time.time() - started:.1f}s)")
    enc_q = TextEncoder(Tokenizer.from_str(tokenizer_json), cfg.max_query_length)
    enc_p = TextEncoder(Tokenizer.from_str(tokenizer_json), cfg.max_product_length)

    model_cfg = EncoderConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_query_length=cfg.max_query_length, max_product_length=cfg.max_product_length,
        max_positions=cfg.max_positions, dropout=cfg.dropout,
    )
    model = BiEncoder(model_cfg)  # the same seed on every rank: the same initial weights
    trainable = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    sampler = PairSampler(dataset, cfg.seed)  # the same sequence of global batches on every rank
    product_text = {p.product_id: p.search_text() for p in dataset.products}
    train_started = time.time()
    losses: list[float] = []
    model.train()
    for step in range(cfg.steps):
        pairs = sampler.batch(cfg.batch_size)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for m in range(cfg.grad_accumulation):
            micro = pairs[m :: cfg.grad_accumulation]
            micro = micro[: len(micro) - len(micro) % world]  # equal shards (a tiny dataset may run short)
            local = micro[rank::world]
            q = enc_q.encode_texts([t for t, _ in local])
            p = enc_p.encode_texts([product_text[pid] for _, pid in local])
            # Queries and products in one forward pass: DDP expects one forward per backward.
            joined, _ = pad_batches([q, p])
            last = m == cfg.grad_accumulation - 1
            with (contextlib.nullcontext() if world == 1 or last else trainable.no_sync()):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.amp_bf16):
                    vectors = trainable(torch.from_numpy(joined.input_ids), torch.from_numpy(joined.attention_mask))
                qv, pv = vectors[: len(local)], vectors[len(local) :]
                # In-batch negatives over the whole micro-batch: every rank's rows. all_gather's
                # backward sums each rank's gradient into the rows it owns and DDP averages over
                # ranks, so the update equals one process's on the same global batch.
                loss = contrastive_loss(_gather(qv, world), _gather(pv, world), cfg.temperature)
                (loss / cfg.grad_accumulation).backward()
            step_loss += loss.item() / cfg.grad_accumulation
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(step_loss)
        if (step + 1) % 50 == 0 or step == cfg.steps - 1:
            rate = (step + 1) / (time.time() - train_started)
            log(f"step {step + 1}/{cfg.steps} loss {np.mean(losses[-50:]):.4f} ({rate:.2f} steps/s)")
    if rank != 0:
        return {}  # rank 0 evaluates and writes the checkpoint
    model.eval()
    train_seconds = time.time() - train_started

    eval_started = time.time()
    metrics = evaluate_model(model, enc_q, enc_p, dataset, "dev", cfg.eval_queries) if "dev" in dataset.queries else {}
    log(f"dev metrics: {json.dumps({k: round(v, 4) for k, v in metrics.items()})} ({time.time() - eval_started:.1f}s)")
    meta = {
        "train_config": asdict(cfg),
        "dataset": {"name": dataset.name, "fingerprint": fingerprint, "stats": dataset.stats(), "source": dataset.source},
        "dev_metrics": metrics,
        "final_loss": float(np.mean(losses[-50:])),
        "loss_curve": [round(v, 6) for v in losses],
        "world_size": world,
        "code_version": git_revision(),
        "seconds": {"total": round(time.time() - started, 1), "train": round(train_seconds, 1)},
    }
    save_checkpoint(model, tokenizer_json, out_dir, meta)
    log(f"checkpoint: {out_dir}")
    return meta
