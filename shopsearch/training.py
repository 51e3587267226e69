"""Contrastive training of the bi-encoder: query -> relevant product, in-batch negatives."""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import random
import shutil
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
    amp_bf16: bool = False  # bf16 autocast (CPU or CUDA); numbers stay fp32 in the checkpoint
    amp_fp16: bool = False  # fp16 autocast + gradient scaling (CUDA only)
    # > 0: each query also brings one product from BM25's top N that is not judged relevant to it
    # (a hard negative), scored against every query of the batch.
    hard_negatives: int = 0
    save_every: int = 0  # steps between resumable training states (0: none); see `--resume`
    # > 0: masked-LM pre-training on the catalog's product texts for this many steps first
    mlm_steps: int = 0
    mlm_batch_size: int = 64
    mlm_learning_rate: float = 5e-4
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
        self.negatives: dict[str, list[str]] = {}  # query text -> hard negative product ids

    def mine_hard_negatives(self, dataset: Dataset, depth: int) -> int:
        """BM25's top `depth` products per training query, minus the ones judged relevant to it."""
        from shopsearch.lexical import Bm25Index

        relevant = {text: set(pids) for text, pids in self.items}
        texts = sorted(relevant)
        index = Bm25Index(dataset.products)
        for start in range(0, len(texts), 512):
            chunk = texts[start : start + 512]
            rows, scores = index.search(chunk, depth)
            for text, row, score in zip(chunk, rows, scores):
                pool = [index.product_ids[r] for r, v in zip(row, score) if v > 0 and index.product_ids[r] not in relevant[text]]
                if pool:
                    self.negatives[text] = pool
        return len(self.negatives)

    def hard_negative(self, text: str, taken: set[str]) -> str | None:
        pool = [p for p in self.negatives.get(text, ()) if p not in taken]
        return self.rng.choice(pool) if pool else None

    def state(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def restore(self, state: dict) -> None:
        self.rng.setstate(_as_rng_state(state["rng"]))
        self.order = list(state["order"])

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


def _as_rng_state(state) -> tuple:
    """random.Random state back from a torch.save round trip (tuples may come back as lists)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


RESUME_DIR = "resume"


def save_training_state(out_dir: Path, rank: int, step: int, model, optimizer, scheduler, scaler, sampler,
                        losses: list[float], tokenizer_json: str) -> None:
    """Everything that decides the next step, so a resumed run continues as if never stopped.
    Each rank keeps its own random state (dropout masks differ per rank); rank 0 the rest."""
    directory = out_dir / RESUME_DIR
    directory.mkdir(parents=True, exist_ok=True)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    _atomic_torch_save(rng, directory / f"rng_rank{rank}.pt")
    if rank == 0:
        _atomic_torch_save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "sampler": sampler.state(),
                            "losses": losses, "tokenizer_json": tokenizer_json}, directory / "state.pt")


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_training_state(out_dir: Path, rank: int) -> tuple[dict, dict] | None:
    directory = out_dir / RESUME_DIR
    if not (directory / "state.pt").exists():
        return None
    state = torch.load(directory / "state.pt", weights_only=False)
    rng = torch.load(directory / f"rng_rank{rank}.pt", weights_only=False)
    return state, rng


def training_device(rank: int) -> torch.device:
    """CUDA (one device per local rank) where there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")


def distributed_context() -> tuple[int, int]:
    """(rank, world size) under torchrun (WORLD_SIZE > 1 starts the process group: gloo on CPU,
    nccl on CUDA), or (0, 1) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # Tear the group down before the interpreter does: left to exit, gloo's threads were
        # destroyed while joinable and a rank aborted ("terminate called without an active
        # exception", exit -6) after its work was done, once in ~5 test runs.
        atexit.register(_destroy_process_group)
    return dist.get_rank(), dist.get_world_size()


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _gather(x: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's rows, in rank order, with gradients flowing back to each rank's own rows."""
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))


def contrastive_loss(qv: torch.Tensor, pv: torch.Tensor, temperature: float, nv: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: each query picks its product among the batch's products (and the hard
    negatives `nv`, when given), each product picks its query."""
    logits = (qv @ pv.T) / temperature
    labels = torch.arange(len(qv), device=qv.device)
    query_side = logits if nv is None or not len(nv) else torch.cat([logits, (qv @ nv.T) / temperature], dim=1)
    return 0.5 * (torch.nn.functional.cross_entropy(query_side, labels) + torch.nn.functional.cross_entropy(logits.T, labels))


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


def train_biencoder(dataset: Dataset, cfg: TrainConfig, out_dir: Path, log=print, tokenizer_file: Path | None = None,
                    resume: bool = False, stop_after: int = 0) -> dict:
    """`tokenizer_file`: reuse a trained tokenizer instead of training one (WordPiece training breaks
    ties between equally frequent pieces differently from process to process). `resume`: continue
    from the last state `save_every` wrote in `out_dir` (same config, same data); the result equals
    an uninterrupted run's. `stop_after`: stop after that many steps (simulates an interruption)."""
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
    saved = load_training_state(Path(out_dir), rank) if resume else None
    if resume and saved is None:
        log(f"no training state in {Path(out_dir) / RESUME_DIR}: starting from step 0")
    if saved is not None:
        tokenizer_json = saved[0]["tokenizer_json"]  # the run's own tokenizer, not a retrained one
    elif tokenizer_file is not None:
        tokenizer_json = Path(tokenizer_file).read_text()
    elif rank == 0:
        corpus = [p.search_text() for p in dataset.products] + list(dataset.queries.get("train", {}).values())
        tokenizer_json = train_wordpiece(corpus, vocab_size=cfg.vocab_size).to_str()
    if world > 1 and tokenizer_file is None and saved is None:  # every rank tokenizes with rank 0's tokenizer
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
    mlm_losses: list[float] = []
    if cfg.mlm_steps and saved is None:
        from shopsearch.pretraining import pretrain_mlm

        # Every rank pre-trains the same way (same seed, same texts), so all start fine-tuning equal.
        pre = BiEncoder(model_cfg)
        mlm_losses = pretrain_mlm(pre, enc_p, [p.search_text() for p in dataset.products], cfg.mlm_steps,
                                  cfg.mlm_batch_size, cfg.mlm_learning_rate, cfg.seed, log)
        torch.manual_seed(cfg.seed)  # fine-tuning draws the same dropout masks as without pre-training
    device = training_device(rank)
    if cfg.amp_fp16 and device.type != "cuda":
        raise ConfigError("train", "amp_fp16", "fp16 autocast needs CUDA; use amp_bf16 on CPU")
    model = BiEncoder(model_cfg)  # the same seed on every rank: the same initial weights
    if mlm_losses:
        model.bert.load_state_dict(pre.bert.state_dict())
    model = model.to(device)
    trainable = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                 if world > 1 else model)
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp_fp16)
    sampler = PairSampler(dataset, cfg.seed)  # the same sequence of global batches on every rank
    if cfg.hard_negatives:
        mined = sampler.mine_hard_negatives(dataset, cfg.hard_negatives)
        log(f"hard negatives: BM25 top {cfg.hard_negatives} for {mined} training queries")
    product_text = {p.product_id: p.search_text() for p in dataset.products}
    train_started = time.time()
    losses: list[float] = []
    first_step = 0
    if saved is not None:
        state, rng_state = saved
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.restore(state["sampler"])
        losses, first_step = list(state["losses"]), state["step"]
        random.setstate(_as_rng_state(rng_state["python"]))
        np.random.set_state(rng_state["numpy"])
        torch.set_rng_state(rng_state["torch"])
        if rng_state["cuda"]:
            torch.cuda.set_rng_state_all(rng_state["cuda"])
        log(f"resumed at step {first_step} from {Path(out_dir) / RESUME_DIR}")
    amp_dtype = torch.float16 if cfg.amp_fp16 else torch.bfloat16
    model.train()
    for step in range(first_step, cfg.steps):
        if stop_after and step >= stop_after:
            log(f"stopped after step {step} (stop_after)")
            return {"stopped_at": step}
        pairs = sampler.batch(cfg.batch_size)
        negatives: list[str] = []
        if cfg.hard_negatives:
            taken = {pid for _, pid in pairs}
            for text, _ in pairs:
                negative = sampler.hard_negative(text, taken)
                if negative is not None:
                    taken.add(negative)  # a product appears once per batch: no duplicate columns
                    negatives.append(negative)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for m in range(cfg.grad_accumulation):
            micro = pairs[m :: cfg.grad_accumulation]
            micro = micro[: len(micro) - len(micro) % world]  # equal shards (a tiny dataset may run short)
            local = micro[rank::world]
            hard = negatives[m :: cfg.grad_accumulation]
            hard = hard[: len(hard) - len(hard) % world][rank::world]
            q = enc_q.encode_texts([t for t, _ in local])
            p = enc_p.encode_texts([product_text[pid] for _, pid in local] + [product_text[pid] for pid in hard])
            # Queries and products in one forward pass: DDP expects one forward per backward.
            joined, _ = pad_batches([q, p])
            last = m == cfg.grad_accumulation - 1
            with (contextlib.nullcontext() if world == 1 or last else trainable.no_sync()):
                with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp_bf16 or cfg.amp_fp16):
                    vectors = trainable(torch.from_numpy(joined.input_ids).to(device),
                                        torch.from_numpy(joined.attention_mask).to(device))
                vectors = vectors.float()
                qv, pv = vectors[: len(local)], vectors[len(local) : 2 * len(local)]
                nv = vectors[2 * len(local) :]
                # In-batch negatives over the whole micro-batch: every rank's rows. all_gather's
                # backward sums each rank's gradient into the rows it owns and DDP averages over
                # ranks, so the update equals one process's on the same global batch.
                loss = contrastive_loss(_gather(qv, world), _gather(pv, world), cfg.temperature,
                                        _gather(nv, world) if cfg.hard_negatives else None)
                scaler.scale(loss / cfg.grad_accumulation).backward()
            step_loss += loss.item() / cfg.grad_accumulation
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses.append(step_loss)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_training_state(Path(out_dir), rank, step + 1, model, optimizer, scheduler, scaler, sampler, losses, tokenizer_json)
        if (step + 1) % 50 == 0 or step == cfg.steps - 1:
            rate = (step + 1) / (time.time() - train_started)
            log(f"step {step + 1}/{cfg.steps} loss {np.mean(losses[-50:]):.4f} ({rate:.2f} steps/s)")
    if rank != 0:
        return {}  # rank 0 evaluates and writes the checkpoint
    model = model.cpu().eval()
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
        "resumed_from_step": first_step,
        "mlm_loss_curve": [round(v, 5) for v in mlm_losses[:: max(1, len(mlm_losses) // 100)]],
        "device": device.type,
    }
    save_checkpoint(model, tokenizer_json, out_dir, meta)
    shutil.rmtree(Path(out_dir) / RESUME_DIR, ignore_errors=True)  # finished: nothing left to resume
    log(f"checkpoint: {out_dir}")
    return meta
