"""Contrastive training of the bi-encoder: query -> relevant product, in-batch negatives."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from shopsearch.core.embedding import TorchEmbedder, embed_texts
from shopsearch.core.index import CatalogIndex
from shopsearch.core.metrics import evaluate_run
from shopsearch.core.modeling import BiEncoder, EncoderConfig, save_checkpoint
from shopsearch.core.pretrained import PretrainedEncoder, read_pretrained
from shopsearch.core.provenance import git_revision
from shopsearch.core.tokenization import TextEncoder, pad_batches, train_wordpiece
from shopsearch.data.schema import Dataset
from shopsearch.errors import ConfigError
from shopsearch.train.distributed import (
    broadcast_from_rank0, distributed_context, gather_rows, seed_everything, training_device,
)
from shopsearch.train.resume import (
    RESUME_DIR, as_rng_state, load_training_state, restore_random_state, save_training_state,
)
from shopsearch.train.progress import pace
from shopsearch.train.schedule import warmup_cosine


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
    # A pretrained encoder directory (Hugging Face layout, e.g. `make pretrained`'s): training starts
    # from its weights with its own tokenizer, and its config sets the architecture (the vocab_size,
    # hidden_size, num_layers, num_heads, intermediate_size and max_positions above are not used).
    init_from: str = ""
    device: str = ""  # "": CUDA where there is one, else the CPU; "cpu" / "cuda" to choose
    extra: dict = field(default_factory=dict)


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
        from shopsearch.lexical.bm25 import Bm25Index

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

    def batch_negatives(self, pairs: list[tuple[str, str]]) -> list[str]:
        """One mined negative per query of `pairs` (where it has one) that no other row of the
        batch holds: a product appears once per batch, so no column is a duplicate."""
        taken = {pid for _, pid in pairs}
        negatives = []
        for text, _ in pairs:
            negative = self.hard_negative(text, taken)
            if negative is not None:
                taken.add(negative)
                negatives.append(negative)
        return negatives

    def state(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def restore(self, state: dict) -> None:
        self.rng.setstate(as_rng_state(state["rng"]))
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
                    resume: bool = False, evaluate: bool = True) -> dict:
    """Stage 1 of search training: tokenizer, (optional) MLM pre-training, contrastive fine-tuning,
    dev evaluation and the checkpoint. Data-parallel under torchrun (each rank takes a shard of
    every global batch; rank 0 evaluates and writes). Returns the checkpoint's card ({} on other ranks).

    `tokenizer_file`: reuse a trained tokenizer instead of training one (WordPiece training breaks
    ties between equally frequent pieces differently from process to process). `resume`: continue
    from the last state `save_every` wrote in `out_dir` (same config, same data); the result equals
    an uninterrupted run's. `evaluate=False`: no dev evaluation here, for when the re-ranker stage
    follows, which embeds the catalog anyway and writes the same dense metrics into the card."""
    started = time.time()
    out_dir = Path(out_dir)
    fingerprint = dataset.fingerprint()  # of the data as given; the holdout is part of the config
    if cfg.rerank_holdout:
        dataset = dataset.with_holdout(cfg.rerank_holdout)
        log(f"re-ranker holdout: {len(dataset.queries['rerank'])} train queries kept out of bi-encoder training")
    seed_everything(cfg.seed, cfg.threads)
    rank, world = distributed_context()
    if rank != 0:
        log = lambda m: None  # noqa: E731 - one log, from rank 0
    if cfg.batch_size % (cfg.grad_accumulation * world):
        raise ConfigError("train", "batch_size", f"{cfg.batch_size} must divide into {cfg.grad_accumulation} micro-batches "
                          f"x {world} ranks")
    saved = load_training_state(out_dir, rank) if resume else None
    if resume and saved is None:
        log(f"no training state in {out_dir / RESUME_DIR}: starting from step 0")

    init = read_pretrained(Path(cfg.init_from), cfg.max_query_length, cfg.max_product_length, cfg.dropout) if cfg.init_from else None
    if init is not None and tokenizer_file is not None:
        raise ConfigError("train", "init_from", "a pretrained encoder brings its own tokenizer: give no --tokenizer")
    tokenizer_json = _tokenizer_json(dataset, cfg, rank, world, tokenizer_file, saved, init)
    enc_q, enc_p = _encoders(tokenizer_json, cfg)
    log(f"tokenizer: {enc_q.tokenizer.get_vocab_size()} wordpieces ({time.time() - started:.1f}s)"
        + (f", from {init.source['name']}" if init else ""))
    model_cfg = init.config if init is not None else _encoder_config(cfg, enc_q.tokenizer.get_vocab_size())
    pretrained, mlm_losses = _mlm_pretraining(model_cfg, cfg, enc_p, dataset, saved, init, log)
    run = ContrastiveRun.start(model_cfg, cfg, dataset, rank, world, pretrained, log, init=init)
    first_step, losses = run.restore(saved) if saved is not None else (0, [])
    if saved is not None:
        log(f"resumed at step {first_step} from {out_dir / RESUME_DIR}")
    train_seconds = _contrastive_steps(run, enc_q, enc_p, first_step, losses, out_dir, tokenizer_json, log)
    if rank != 0:
        return {}  # rank 0 evaluates and writes the checkpoint

    model = run.model.cpu().eval()
    metrics = {}
    if evaluate and "dev" in dataset.queries:
        eval_started = time.time()
        metrics = evaluate_model(model, enc_q, enc_p, dataset, "dev", cfg.eval_queries)
        log(f"dev metrics: {json.dumps({k: round(v, 4) for k, v in metrics.items()})} ({time.time() - eval_started:.1f}s)")
    elif "dev" in dataset.queries:
        log("dev metrics: measured by the re-ranker stage that follows (dense), on the catalog it embeds anyway")
    meta = {
        "train_config": asdict(cfg),
        "dataset": {"name": dataset.name, "fingerprint": fingerprint, "stats": dataset.stats(), "source": dataset.source},
        "dev_metrics": metrics,
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
        "loss_curve": [round(v, 6) for v in losses],
        "world_size": world,
        "code_version": git_revision(),
        "seconds": {"total": round(time.time() - started, 1), "train": round(train_seconds, 1)},
        "resumed_from_step": first_step,
        "mlm_loss_curve": [round(v, 5) for v in mlm_losses[:: max(1, len(mlm_losses) // 100)]],
        "device": run.device.type,
        **({"init_from": init.source} if init is not None else {}),
    }
    save_checkpoint(model, tokenizer_json, out_dir, meta)
    shutil.rmtree(out_dir / RESUME_DIR, ignore_errors=True)  # finished: nothing left to resume
    log(f"checkpoint: {out_dir}")
    return meta


def _contrastive_steps(run: "ContrastiveRun", enc_q: TextEncoder, enc_p: TextEncoder, first_step: int, losses: list[float],
                       out_dir: Path, tokenizer_json: str, log) -> float:
    """Steps `first_step` .. the end, appending each step's loss to `losses` and writing the resume
    state every `save_every` steps; returns the seconds spent."""
    cfg = run.cfg
    started = time.time()
    for step in range(first_step, cfg.steps):
        losses.append(run.step(enc_q, enc_p))
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            run.save(out_dir, step + 1, losses, tokenizer_json)
        if (step + 1) % 50 == 0 or step == cfg.steps - 1:
            log(f"step {step + 1}/{cfg.steps} loss {np.mean(losses[-50:]):.4f} "
                f"({pace(step + 1 - first_step, cfg.steps - first_step, started)})")
    return time.time() - started


def _encoder_config(cfg: TrainConfig, vocab_size: int) -> EncoderConfig:
    return EncoderConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, max_query_length=cfg.max_query_length,
        max_product_length=cfg.max_product_length, max_positions=cfg.max_positions, dropout=cfg.dropout,
    )


def _tokenizer_json(dataset: Dataset, cfg: TrainConfig, rank: int, world: int, tokenizer_file: Path | None,
                    saved: tuple[dict, dict] | None, init: PretrainedEncoder | None = None) -> str:
    """The run's own tokenizer when resuming, the pretrained encoder's, the given one, or one trained
    on the catalog and the train queries by rank 0 and sent to every other rank."""
    if saved is not None:
        return saved[0]["tokenizer_json"]
    if init is not None:
        return init.tokenizer_json
    if tokenizer_file is not None:
        return Path(tokenizer_file).read_text()
    trained = None
    if rank == 0:
        corpus = [p.search_text() for p in dataset.products] + list(dataset.queries.get("train", {}).values())
        trained = train_wordpiece(corpus, vocab_size=cfg.vocab_size).to_str()
    return broadcast_from_rank0(trained, world)


def _encoders(tokenizer_json: str, cfg: TrainConfig) -> tuple[TextEncoder, TextEncoder]:
    from tokenizers import Tokenizer

    return (TextEncoder(Tokenizer.from_str(tokenizer_json), cfg.max_query_length),
            TextEncoder(Tokenizer.from_str(tokenizer_json), cfg.max_product_length))


def _mlm_pretraining(model_cfg: EncoderConfig, cfg: TrainConfig, enc_p: TextEncoder, dataset: Dataset,
                     saved: tuple[dict, dict] | None, init: PretrainedEncoder | None, log) -> tuple[BiEncoder | None, list[float]]:
    """The BERT pre-trained with masked LM on every product's text (`mlm_steps` > 0; from the
    pretrained weights when there are some), or None. Every rank pre-trains the same way (same seed,
    same texts), so all start fine-tuning equal."""
    if not cfg.mlm_steps or saved is not None:
        return None, []
    from shopsearch.train.mlm import pretrain_mlm

    pre = BiEncoder(model_cfg)
    if init is not None:
        init.load_into(pre)
    losses = pretrain_mlm(pre, enc_p, [p.search_text() for p in dataset.products], cfg.mlm_steps,
                          cfg.mlm_batch_size, cfg.mlm_learning_rate, cfg.seed, log)
    torch.manual_seed(cfg.seed)  # fine-tuning draws the same dropout masks as without pre-training
    return pre, losses


@dataclass
class ContrastiveRun:
    """One rank's contrastive fine-tuning: model, optimizer, schedule, gradient scaler and sampler."""

    cfg: TrainConfig
    model: BiEncoder
    trainable: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    sampler: PairSampler
    product_text: dict[str, str]
    device: torch.device
    rank: int
    world: int

    @classmethod
    def start(cls, model_cfg: EncoderConfig, cfg: TrainConfig, dataset: Dataset, rank: int, world: int,
              pretrained: BiEncoder | None, log, init: PretrainedEncoder | None = None) -> "ContrastiveRun":
        """`pretrained`: an MLM-pre-trained BERT to start from; `init`: a pretrained checkpoint's weights."""
        device = training_device(rank, cfg.device)
        if cfg.amp_fp16 and device.type != "cuda":
            raise ConfigError("train", "amp_fp16", "fp16 autocast needs CUDA; use amp_bf16 on CPU")
        model = BiEncoder(model_cfg)  # the same seed on every rank: the same initial weights
        if init is not None and pretrained is None:
            init.load_into(model)
        if pretrained is not None:
            model.bert.load_state_dict(pretrained.bert.state_dict())
        model = model.to(device)
        trainable = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                     if world > 1 else model)
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.learning_rate,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.steps, cfg.warmup_fraction))
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp_fp16)
        sampler = PairSampler(dataset, cfg.seed)  # the same sequence of global batches on every rank
        if cfg.hard_negatives:
            mined = sampler.mine_hard_negatives(dataset, cfg.hard_negatives)
            log(f"hard negatives: BM25 top {cfg.hard_negatives} for {mined} training queries")
        product_text = {p.product_id: p.search_text() for p in dataset.products}
        return cls(cfg, model, trainable, optimizer, scheduler, scaler, sampler, product_text, device, rank, world)

    def restore(self, saved: tuple[dict, dict]) -> tuple[int, list[float]]:
        """Continue from a saved state: returns the step to start at and the losses so far."""
        state, rng_state = saved
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.restore(state["sampler"])
        restore_random_state(rng_state)
        return state["step"], list(state["losses"])

    def save(self, out_dir: Path, step: int, losses: list[float], tokenizer_json: str) -> None:
        save_training_state(out_dir, self.rank, step, self.model, self.optimizer, self.scheduler, self.scaler,
                            self.sampler, losses, tokenizer_json)

    def _batch(self) -> tuple[list[tuple[str, str]], list[str]]:
        """The global batch: (query, relevant product) pairs and, with hard negatives, one BM25
        negative per query that no other row of the batch holds."""
        pairs = self.sampler.batch(self.cfg.batch_size)
        return pairs, self.sampler.batch_negatives(pairs) if self.cfg.hard_negatives else []

    def step(self, enc_q: TextEncoder, enc_p: TextEncoder) -> float:
        """One optimizer step over one global batch (in `grad_accumulation` micro-batches); its loss."""
        cfg, world, rank = self.cfg, self.world, self.rank
        pairs, negatives = self._batch()
        self.optimizer.zero_grad(set_to_none=True)
        amp_dtype = torch.float16 if cfg.amp_fp16 else torch.bfloat16
        step_loss = 0.0
        for m in range(cfg.grad_accumulation):
            micro = pairs[m :: cfg.grad_accumulation]
            micro = micro[: len(micro) - len(micro) % world]  # equal shards (a tiny dataset may run short)
            local = micro[rank::world]
            hard = negatives[m :: cfg.grad_accumulation]
            hard = hard[: len(hard) - len(hard) % world][rank::world]
            q = enc_q.encode_texts([t for t, _ in local])
            p = enc_p.encode_texts([self.product_text[pid] for _, pid in local] + [self.product_text[pid] for pid in hard])
            # Queries and products in one forward pass: DDP expects one forward per backward.
            joined, _ = pad_batches([q, p])
            last = m == cfg.grad_accumulation - 1
            with (contextlib.nullcontext() if world == 1 or last else self.trainable.no_sync()):
                with torch.autocast(self.device.type, dtype=amp_dtype, enabled=cfg.amp_bf16 or cfg.amp_fp16):
                    vectors = self.trainable(torch.from_numpy(joined.input_ids).to(self.device),
                                             torch.from_numpy(joined.attention_mask).to(self.device))
                vectors = vectors.float()
                qv, pv = vectors[: len(local)], vectors[len(local) : 2 * len(local)]
                nv = vectors[2 * len(local) :]
                # In-batch negatives over the whole micro-batch: every rank's rows. all_gather's
                # backward sums each rank's gradient into the rows it owns and DDP averages over
                # ranks, so the update equals one process's on the same global batch.
                loss = contrastive_loss(gather_rows(qv, world), gather_rows(pv, world), cfg.temperature,
                                        gather_rows(nv, world) if cfg.hard_negatives else None)
                self.scaler.scale(loss / cfg.grad_accumulation).backward()
            step_loss += loss.item() / cfg.grad_accumulation
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return step_loss
