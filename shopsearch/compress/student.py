"""A small fast student from a fine-tuned teacher bi-encoder: prune, then distill.

1. Layers: keep `layers` of the teacher's, chosen greedily by measured dev quality (nDCG@10 on a
   fixed sample of dev queries against their judged products plus a fixed sample of the catalog;
   see `pruning.choose_layers`).
2. Heads and feed-forward units (optional): the least important by first-order importance on
   training batches go, the same number in every layer (`pruning.unit_importance`).
3. Distillation: the student trains on the teacher's training pairs with three terms: its own
   in-batch contrastive loss, the KL divergence from the teacher's softmax over each query's
   candidates to its own, and the squared distance to the teacher's vectors (both are unit vectors of
   the same width, so the student can take the teacher's place beside an index the teacher embedded).
   A query's candidates are the batch's products and, with `hard_negatives`, one BM25-mined product
   per query not judged relevant to it. Random in-batch products are easy to tell apart; the near
   misses are where a teacher trained on hard negatives knows an order worth copying.
The student is a checkpoint like any other (its card records the teacher, what was pruned and the
parameter counts), so the re-ranker stage, the build and `make eval` take it as they take the teacher.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from shopsearch.compress.pruning import choose_layers, keep_layers, most_important, prune_units, unit_importance
from shopsearch.core.embedding import TorchEmbedder, embed_texts
from shopsearch.core.index import CatalogIndex
from shopsearch.core.metrics import evaluate_run
from shopsearch.core.modeling import CHECKPOINT_WEIGHTS, BiEncoder, load_checkpoint, parameter_count, save_checkpoint
from shopsearch.core.provenance import file_sha256, git_revision
from shopsearch.core.tokenization import TOKENIZER_FILE, TextEncoder, pad_batches
from shopsearch.data.schema import Dataset
from shopsearch.errors import ConfigError
from shopsearch.train.biencoder import PairSampler, contrastive_loss, evaluate_model
from shopsearch.train.distributed import seed_everything
from shopsearch.train.progress import pace
from shopsearch.train.schedule import warmup_cosine


@dataclass(frozen=True)
class StudentConfig:
    layers: int = 3  # of the teacher's
    heads: int = 0  # attention heads kept in every layer (0: all)
    ffn: int = 0  # feed-forward units kept in every layer (0: all)
    importance_batches: int = 8  # training batches the head / unit importance is summed over
    selection_queries: int = 300  # dev queries the layer choice is measured on
    selection_catalog: int = 5000  # catalog products (besides the judged ones) they are searched in
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.1
    temperature: float = 0.05  # of the contrastive and the distillation softmax
    contrastive_weight: float = 1.0
    kd_weight: float = 1.0  # KL(teacher || student) over each query's candidates
    embedding_weight: float = 1.0  # squared distance to the teacher's vectors (x the width)
    hard_negatives: int = 0  # BM25 depth one candidate per query is drawn from (0: in-batch only)
    eval_queries: int = 0  # dev queries of the final evaluation; 0: all
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers < 1 or min(self.heads, self.ffn, self.steps, self.hard_negatives) < 0:
            raise ConfigError("student", "layers/heads/ffn/steps/hard_negatives", "layers >= 1, the rest >= 0")


def student_config(recipe) -> StudentConfig | None:
    """The recipe's [student] section, or None when the recipe has none."""
    if recipe.student is None:
        return None
    try:
        return StudentConfig(**recipe.student)
    except TypeError as exc:
        raise ConfigError(str(recipe.path), "[student]", str(exc)) from None


def distill_student(teacher_dir: Path, dataset: Dataset, cfg: StudentConfig, out_dir: Path, log=print) -> dict:
    """Prune `teacher_dir`'s bi-encoder to `cfg` and distill it; write the student checkpoint to
    `out_dir` and return its card."""
    started = time.time()
    seed_everything(cfg.seed)
    teacher, card = load_checkpoint(teacher_dir)
    train_cfg = card.get("train_config", {})
    holdout = train_cfg.get("rerank_holdout", 0.0)
    data = dataset.with_holdout(holdout) if holdout else dataset  # the teacher's training queries only
    tokenizer_json = (teacher_dir / TOKENIZER_FILE).read_text()
    enc_q = TextEncoder.from_file(teacher_dir / TOKENIZER_FILE, teacher.config.max_query_length)
    enc_p = TextEncoder.from_file(teacher_dir / TOKENIZER_FILE, teacher.config.max_product_length)
    sampler = PairSampler(data, cfg.seed)
    if cfg.hard_negatives:
        log(f"hard negatives: BM25 top {cfg.hard_negatives} for {sampler.mine_hard_negatives(data, cfg.hard_negatives)} training queries")
    text = {p.product_id: p.search_text() for p in data.products}

    selection = SelectionSet.sample(data, cfg, enc_q, enc_p)
    layers, trials = choose_layers(teacher.config.num_layers, cfg.layers,
                                   lambda kept: selection.ndcg10(keep_layers(teacher, kept).eval()), log)
    student = keep_layers(teacher, layers)
    importance = {}
    if cfg.heads or cfg.ffn:
        batches = [_encode(sampler.batch(cfg.batch_size), enc_q, enc_p, text) for _ in range(cfg.importance_batches)]
        heads, units = unit_importance(student, batches, lambda v, n: contrastive_loss(v[:n], v[n:], cfg.temperature))
        student = prune_units(student, most_important(heads, cfg.heads) if cfg.heads else None,
                              most_important(units, cfg.ffn) if cfg.ffn else None)
        importance = {"heads": [h.tolist() for h in heads], "ffn_top": [sorted(u.tolist(), reverse=True)[:5] for u in units]}
    log(f"student: layers {layers} of {teacher.config.num_layers}, {parameter_count(student) / 1e6:.1f} M parameters "
        f"(teacher {parameter_count(teacher) / 1e6:.1f} M); pruned dev sample nDCG@10 {selection.ndcg10(student.eval()):.4f}")

    losses = _distill(teacher, student, sampler, enc_q, enc_p, text, cfg, log)
    student = student.eval()
    metrics = evaluate_model(student, enc_q, enc_p, data, "dev", cfg.eval_queries) if "dev" in data.queries else {}
    log(f"student dev metrics: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}")
    meta = {
        "train_config": train_cfg,  # the re-ranker stage reads its holdout
        "dataset": card.get("dataset", {}),
        "dev_metrics": metrics,
        "loss_curve": [{k: round(v, 5) for k, v in step.items()} for step in losses],
        "compression": {
            "config": asdict(cfg), "layers": layers, "layer_selection": trials, "importance": importance,
            "parameters": parameter_count(student), "teacher_parameters": parameter_count(teacher),
        },
        "teacher": {"path": str(teacher_dir), "sha256": file_sha256(teacher_dir / CHECKPOINT_WEIGHTS),
                    "dev_metrics": card.get("dev_metrics", {})},
        **({"init_from": card["init_from"]} if "init_from" in card else {}),
        "code_version": git_revision(),
        "seconds": {"total": round(time.time() - started, 1)},
    }
    save_checkpoint(student, tokenizer_json, Path(out_dir), meta)
    log(f"student checkpoint: {out_dir} ({time.time() - started:.0f}s)")
    return meta


def _encode(pairs: list[tuple[str, str]], enc_q: TextEncoder, enc_p: TextEncoder, text: dict[str, str],
            negatives: list[str] = ()):
    """One forward pass's inputs: the queries, then their products, then the hard negatives; and
    the number of queries."""
    q = enc_q.encode_texts([t for t, _ in pairs])
    p = enc_p.encode_texts([text[pid] for _, pid in pairs] + [text[pid] for pid in negatives])
    joined, _ = pad_batches([q, p])
    return torch.from_numpy(joined.input_ids), torch.from_numpy(joined.attention_mask), len(pairs)


def student_loss(sv: torch.Tensor, tv: torch.Tensor, n: int, cfg: StudentConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The three terms on one batch: student and teacher vectors [2n + m, d]: n queries, their n
    products, then m hard negatives (candidates of every query, as the batch's products are)."""
    sq, sp, tq, tp = sv[:n], sv[n:], tv[:n], tv[n:]  # candidates: the products, then the negatives
    contrastive = contrastive_loss(sq, sp[:n], cfg.temperature, sp[n:])
    teacher_p = torch.softmax(tq @ tp.T / cfg.temperature, dim=1)
    kl = torch.nn.functional.kl_div(torch.log_softmax(sq @ sp.T / cfg.temperature, dim=1), teacher_p, reduction="batchmean")
    embedding = ((sv - tv) ** 2).sum(dim=1).mean()
    total = cfg.contrastive_weight * contrastive + cfg.kd_weight * kl + cfg.embedding_weight * embedding
    return total, {"loss": total.item(), "contrastive": contrastive.item(), "kl": kl.item(), "embedding": embedding.item()}


def _distill(teacher: BiEncoder, student: BiEncoder, sampler: PairSampler, enc_q: TextEncoder, enc_p: TextEncoder,
             text: dict[str, str], cfg: StudentConfig, log) -> list[dict[str, float]]:
    teacher.eval()
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.steps, cfg.warmup_fraction))
    losses: list[dict[str, float]] = []
    started = time.time()
    for step in range(cfg.steps):
        pairs = sampler.batch(cfg.batch_size)
        ids, mask, n = _encode(pairs, enc_q, enc_p, text, sampler.batch_negatives(pairs) if cfg.hard_negatives else [])
        with torch.no_grad():
            tv = teacher(ids, mask)
        loss, parts = student_loss(student(ids, mask), tv, n, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(parts)
        if (step + 1) % 50 == 0 or step == cfg.steps - 1:
            recent = {k: np.mean([x[k] for x in losses[-50:]]) for k in parts}
            log(f"student step {step + 1}/{cfg.steps} " + " ".join(f"{k} {v:.4f}" for k, v in recent.items())
                + f" ({pace(step + 1, cfg.steps, started)})")
    return losses


@dataclass
class SelectionSet:
    """A fixed sample of dev queries and of the catalog, to compare pruned variants quickly: each
    query is searched among its judged products and `selection_catalog` other products."""

    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    product_ids: list[str]
    product_texts: list[str]
    relevant_min_gain: int
    enc_q: TextEncoder
    enc_p: TextEncoder

    @classmethod
    def sample(cls, data: Dataset, cfg: StudentConfig, enc_q: TextEncoder, enc_p: TextEncoder) -> "SelectionSet":
        split = "dev" if data.queries.get("dev") else "train"
        queries, qrels = data.split(split)
        rng = random.Random(cfg.seed)
        qids = sorted(queries)
        qids = sorted(rng.sample(qids, min(cfg.selection_queries, len(qids))))
        judged = sorted({pid for q in qids for pid in qrels.get(q, {})})
        others = sorted(p.product_id for p in data.products if p.product_id not in set(judged))
        pids = judged + sorted(rng.sample(others, min(cfg.selection_catalog, len(others))))
        text = {p.product_id: p.search_text() for p in data.products}
        return cls([queries[q] for q in qids], {q: qrels.get(q, {}) for q in qids}, pids, [text[p] for p in pids],
                   data.relevant_min_gain, enc_q, enc_p)

    def ndcg10(self, model: BiEncoder) -> float:
        embedder = TorchEmbedder(model)
        index = CatalogIndex(embed_texts(embedder, self.enc_p, self.product_texts), "selection")
        top, scores = index.search(embed_texts(embedder, self.enc_q, self.query_texts), 10)
        qids = list(self.qrels)
        run = {q: {self.product_ids[i]: float(s) for i, s in zip(top[r], scores[r])} for r, q in enumerate(qids)}
        return evaluate_run(run, self.qrels, self.relevant_min_gain)["ndcg@10"]

