"""Knowledge distillation from a cross-encoder teacher into the bi-encoder (training stage 1b).

The bi-encoder reads a query and a product apart and compares two vectors; a cross-encoder reads
them together, so every query token attends to every title token. That is more accurate and far
too slow to run over a catalog per query, which makes it a teacher. Ours also sees the pair's
lexical features (BM25 score and rank, term and trigram coverage, containment, lengths: what the
re-ranker sees, minus the dense score and popularity, which would leak the training queries' own
judgments), so it knows what BM25 knows plus what the joint text shows. It is fine-tuned on the
judgments (starting from the trained bi-encoder's transformer), scores a group of candidates per
training query (the judged products plus BM25-mined unjudged ones), and the bi-encoder then learns
to reproduce the teacher's distribution over each group (KL divergence) next to its usual
in-batch contrastive loss. The teacher never sees the re-ranker's held-out queries or dev.

`kd_weight = 0` is the control: the same extra student steps on the same groups, no teacher.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import BertModel

from shopsearch.data.schema import Dataset
from shopsearch.errors import ArtifactError, ConfigError
from shopsearch.core.hybrid import LexicalScorer, lexical_features
from shopsearch.core.metrics import evaluate_run
from shopsearch.core.modeling import CHECKPOINT_META, BiEncoder, EncoderConfig, load_checkpoint, save_checkpoint
from shopsearch.core.provenance import file_sha256, git_revision
from shopsearch.core.reranker import RERANKER_DIR
from shopsearch.train.reranker import listwise_loss
from shopsearch.core.tokenization import PAD_ID, TOKENIZER_FILE, TextEncoder, pad_batches
from shopsearch.train.progress import pace
from shopsearch.train.schedule import warmup_cosine

TEACHER_DIR = "teacher"  # inside the checkpoint directory
TEACHER_WEIGHTS = "cross_encoder.pt"
TEACHER_CARD = "teacher.json"


@dataclass(frozen=True)
class DistillConfig:
    group_size: int = 8  # candidates per training query: its best judged product, then BM25's top (see build_groups)
    mined_per_query: int = 3  # unjudged products from BM25's top `mined_depth` in each group (at least)
    mined_depth: int = 30
    max_query_tokens: int = 16  # the pair is [CLS] query [SEP] product [SEP] within max_positions
    teacher_steps: int = 500
    teacher_queries_per_step: int = 8
    teacher_learning_rate: float = 1e-4
    teacher_eval_queries: int = 300  # dev queries whose BM25 top `mined_depth` the teacher re-ranks
    teacher_features: bool = True  # the teacher also reads the pair's lexical features (LEXICAL_FEATURE_NAMES)
    # A pretrained encoder directory the cross-encoder starts from (the bi-encoder's tokenizer and
    # architecture, e.g. the all-MiniLM-L6-v2 a MiniLM bi-encoder was fine-tuned from); "": the
    # trained bi-encoder's own transformer.
    teacher_init_from: str = ""
    # Layers of that encoder the cross-encoder keeps (e.g. [4, 5] of MiniLM's 6, the 2-layer
    # students' choice), before fine-tuning: a pruned re-scorer, a third of the cost per pair.
    # Empty: all of them.
    teacher_keep_layers: tuple[int, ...] = ()
    # A cross-encoder trained already (`make cross-encoder`'s directory) to distill from instead of
    # training one here: how a pruned student learns from the cross-encoder of its own teacher. It
    # must read the bi-encoder's tokenizer and have been trained on the same training queries.
    teacher_from: str = ""
    student_steps: int = 300
    student_queries_per_step: int = 16
    student_learning_rate: float = 1e-4
    kd_weight: float = 1.0  # 0: the control run (same extra steps and groups, no teacher)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.group_size < 2 or not 0 <= self.mined_per_query < self.group_size:
            raise ConfigError("distill", "group_size", "needs >= 2 candidates and fewer mined ones than that")
        if self.kd_weight < 0:
            raise ConfigError("distill", "kd_weight", "must be >= 0")
        if self.teacher_from and self.teacher_init_from:
            raise ConfigError("distill", "teacher_from", "names a trained cross-encoder; teacher_init_from is then unused")
        object.__setattr__(self, "teacher_keep_layers", tuple(self.teacher_keep_layers))
        if self.teacher_from and self.teacher_keep_layers:
            raise ConfigError("distill", "teacher_keep_layers", "prunes a cross-encoder trained here; teacher_from loads one trained already")


LEXICAL_RANK_DEPTH = 150  # BM25 ranks in the teacher's features count within the query's best 150


class CrossEncoder(nn.Module):
    """One BERT over the query and product together, a linear head on the mean-pooled tokens, plus
    (with `n_features`) a small MLP over the pair's standardized lexical features."""

    def __init__(self, config: EncoderConfig, n_features: int = 0):
        super().__init__()
        self.config = config
        self.n_features = n_features
        self.bert = BertModel(config.bert_config(), add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, 1)
        if n_features:
            self.register_buffer("feature_mean", torch.zeros(n_features))
            self.register_buffer("feature_std", torch.ones(n_features))
            self.features = nn.Sequential(nn.Linear(n_features, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        score = self.head(pooled).squeeze(-1)
        if self.n_features:
            score = score + self.features((features - self.feature_mean) / self.feature_std).squeeze(-1)
        return score


class PairEncoder:
    """[CLS] query [SEP] product [SEP], token types 0 then 1, within the model's positions."""

    def __init__(self, tokenizer_json: str, max_query_tokens: int, max_product_tokens: int, max_positions: int):
        from tokenizers import Tokenizer

        if max_query_tokens + max_product_tokens - 1 > max_positions:
            raise ConfigError("distill", "max_query_tokens",
                              f"{max_query_tokens} + {max_product_tokens} product tokens exceed {max_positions} positions")
        self.query = TextEncoder(Tokenizer.from_str(tokenizer_json), max_query_tokens)
        self.product = TextEncoder(Tokenizer.from_str(tokenizer_json), max_product_tokens)

    def encode(self, queries: list[str], products: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self.query.tokenizer.encode_batch(queries)
        p = self.product.tokenizer.encode_batch(products)
        pairs = [a.ids + b.ids[1:] for a, b in zip(q, p)]  # the product's [CLS] is dropped
        seq = max(len(x) for x in pairs)
        ids = np.full((len(pairs), seq), PAD_ID, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, (pair, a) in enumerate(zip(pairs, q)):
            ids[row, : len(pair)], mask[row, : len(pair)] = pair, 1
            types[row, len(a.ids) : len(pair)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)


@dataclass
class Group:
    query: str
    product_ids: list[str]  # the first one is judged relevant
    gains: np.ndarray  # judged gain, unjudged = 0
    teacher: np.ndarray | None = None  # the teacher's scores, once scored
    features: np.ndarray | None = None  # [n, len(LEXICAL_FEATURE_NAMES)], when the teacher reads them
    retrieved: bool = True  # the first (relevant) product is in BM25's top: the teacher trains on these


def add_lexical_features(groups: list[Group], lexical: LexicalScorer, row_of: dict[str, int]) -> None:
    for g in groups:
        g.features = lexical_features(lexical, g.query, np.array([row_of[p] for p in g.product_ids]), LEXICAL_RANK_DEPTH)


def _features(groups: list[Group]) -> torch.Tensor | None:
    return torch.from_numpy(np.concatenate([g.features for g in groups])) if groups[0].features is not None else None


def build_groups(dataset: Dataset, split: str, cfg: DistillConfig) -> list[Group]:
    """One group per query with a relevant judgment, shaped like what a ranker meets: the query's
    best judged product first, then its other judged products that BM25 ranks in its top
    `mined_depth` (highest gain first), then unjudged products from that top (>= mined_per_query).
    Judged products outside BM25's top are left out past the first: otherwise "judged" and "high
    BM25 score" would separate the group on their own, and the teacher would learn the pooling of
    the judgments instead of relevance. For the same reason the teacher trains only on the groups
    whose first product BM25 retrieved (`retrieved`); the student trains on all of them."""
    from shopsearch.lexical.bm25 import Bm25Index

    queries, qrels = dataset.split(split)
    qids = sorted(q for q, judged in qrels.items() if max(judged.values(), default=0) >= dataset.relevant_min_gain)
    rng = random.Random(cfg.seed)
    index = Bm25Index(dataset.products)
    groups = []
    for start in range(0, len(qids), 512):
        chunk = qids[start : start + 512]
        rows, scores = index.search([queries[q] for q in chunk], cfg.mined_depth)
        for qid, row, score in zip(chunk, rows, scores):
            judged = qrels[qid]
            top = [index.product_ids[r] for r, s in zip(row, score) if s > 0]
            # A relevant product BM25 found where there is one: a group whose only relevant product
            # BM25 missed teaches "a low BM25 score means relevant" (such groups still train the student).
            first = max(judged, key=lambda p: (judged[p] >= dataset.relevant_min_gain, p in top, judged[p], rng.random()))
            also_judged = sorted((p for p in top if p in judged and p != first), key=lambda p: (-judged[p], rng.random()))
            also_judged = also_judged[: cfg.group_size - 1 - cfg.mined_per_query]
            pool = [p for p in top if p not in judged]
            mined = rng.sample(pool, min(len(pool), cfg.group_size - 1 - len(also_judged)))
            chosen = [first, *also_judged, *mined]
            groups.append(Group(queries[qid], chosen, np.array([judged.get(p, 0) for p in chosen], dtype=np.float32),
                                retrieved=first in top))
    return [g for g in groups if len(g.product_ids) >= 2]


def _padded_scores(flat: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-pair scores back into [groups, max size] with a mask of real entries."""
    width = max(sizes)
    out = flat.new_zeros((len(sizes), width))
    mask = flat.new_zeros((len(sizes), width))
    start = 0
    for i, n in enumerate(sizes):
        out[i, :n], mask[i, :n] = flat[start : start + n], 1.0
        start += n
    return out, mask


def _padded_gains(groups: list[Group]) -> torch.Tensor:
    width = max(len(g.gains) for g in groups)
    return torch.from_numpy(np.stack([np.pad(g.gains, (0, width - len(g.gains))) for g in groups]))


def _update(model: nn.Module, optimizer, scheduler, loss: torch.Tensor) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return loss.item()


def _group_batches(groups: list[Group], size: int, seed: int):
    """Endless batches of `size` groups: shuffled passes over all of them, no group twice in a batch."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < size:
            order = list(range(len(groups)))
            rng.shuffle(order)
        yield [groups[order.pop()] for _ in range(min(size, len(order)))]


def train_teacher(bert_state: dict, model_cfg: EncoderConfig, pairs: PairEncoder, groups: list[Group],
                  product_text: dict[str, str], cfg: DistillConfig, log=print) -> tuple[CrossEncoder, list[float]]:
    """Listwise (ListNet) fine-tuning on the groups' judged gains, from the bi-encoder's transformer,
    on the groups shaped like re-ranking BM25's top (`retrieved`)."""
    torch.manual_seed(cfg.seed)
    groups = [g for g in groups if g.retrieved] or groups
    stacked = _features(groups)
    teacher = CrossEncoder(model_cfg, 0 if stacked is None else stacked.shape[1])
    teacher.bert.load_state_dict(bert_state)
    if stacked is not None:
        teacher.feature_mean.copy_(stacked.mean(dim=0))
        teacher.feature_std.copy_(stacked.std(dim=0) + 1e-6)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=cfg.teacher_learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.teacher_steps))
    batches = _group_batches(groups, cfg.teacher_queries_per_step, cfg.seed)
    losses: list[float] = []
    started = time.time()
    teacher.train()
    for step in range(cfg.teacher_steps):
        batch = next(batches)
        flat = teacher(*pairs.encode([g.query for g in batch for _ in g.product_ids],
                                     [product_text[p] for g in batch for p in g.product_ids]), _features(batch))
        scores, mask = _padded_scores(flat, [len(g.product_ids) for g in batch])
        loss = listwise_loss(scores, _padded_gains(batch), mask)
        losses.append(_update(teacher, optimizer, scheduler, loss))
        if (step + 1) % 50 == 0 or step == cfg.teacher_steps - 1:
            log(f"teacher step {step + 1}/{cfg.teacher_steps} listwise loss {np.mean(losses[-50:]):.4f} "
                f"({pace(step + 1, cfg.teacher_steps, started)})")
    return teacher.eval(), losses


@torch.inference_mode()
def score_pairs(teacher: CrossEncoder, pairs: PairEncoder, queries: list[str], products: list[str],
                features: np.ndarray | None = None, batch: int = 256) -> np.ndarray:
    out = [teacher(*pairs.encode(queries[i : i + batch], products[i : i + batch]),
                   None if features is None else torch.from_numpy(features[i : i + batch])).numpy()
           for i in range(0, len(queries), batch)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def score_groups(teacher: CrossEncoder, pairs: PairEncoder, groups: list[Group], product_text: dict[str, str],
                 chunk: int = 4096) -> None:
    """The teacher's score for every (query, product) of every group, into `Group.teacher` (tens of
    thousands of pairs through a 6-layer cross-encoder: minutes on a CPU, so with a progress bar)."""
    from tqdm.auto import tqdm

    features = _features(groups)
    queries = [g.query for g in groups for _ in g.product_ids]
    products = [product_text[p] for g in groups for p in g.product_ids]
    parts = []
    with tqdm(total=len(queries), desc="cross-encoder scores", unit="pair", disable=None) as bar:
        for i in range(0, len(queries), chunk):
            parts.append(score_pairs(teacher, pairs, queries[i : i + chunk], products[i : i + chunk],
                                     None if features is None else features[i : i + chunk].numpy()))
            bar.update(len(parts[-1]))
    flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    start = 0
    for g in groups:
        g.teacher, start = flat[start : start + len(g.product_ids)], start + len(g.product_ids)


def evaluate_teacher(teacher: CrossEncoder, pairs: PairEncoder, dataset: Dataset, split: str, cfg: DistillConfig,
                     lexical: LexicalScorer | None = None) -> dict:
    """nDCG@10 / MRR@10 of BM25's top `mined_depth` on `split`, in BM25's order and re-ranked by
    the teacher: evidence the teacher knows more than what it teaches (judgments never seen)."""
    from shopsearch.lexical.bm25 import Bm25Index

    queries, qrels = dataset.split(split)
    qids = sorted(queries)[: cfg.teacher_eval_queries or None]
    index = Bm25Index(dataset.products)
    rows, scores = index.search([queries[q] for q in qids], cfg.mined_depth)
    text = {p.product_id: p.search_text() for p in dataset.products}
    candidates = [[index.product_ids[r] for r, s in zip(row, score) if s > 0] for row, score in zip(rows, scores)]
    features = None
    if teacher.n_features:
        row_of = {p.product_id: i for i, p in enumerate(dataset.products)}
        features = np.concatenate([lexical_features(lexical, queries[q], np.array([row_of[p] for p in c], dtype=np.int64),
                                                    LEXICAL_RANK_DEPTH) for q, c in zip(qids, candidates) if c]
                                  or [np.zeros((0, teacher.n_features), np.float32)])
    flat = score_pairs(teacher, pairs, [queries[q] for q, c in zip(qids, candidates) for _ in c],
                       [text[p] for c in candidates for p in c], features)
    bm25_run, teacher_run, start = {}, {}, 0
    for qid, c, score in zip(qids, candidates, scores):
        bm25_run[qid] = {p: float(s) for p, s in zip(c, score)}
        teacher_run[qid] = {p: float(s) for p, s in zip(c, flat[start : start + len(c)])}
        start += len(c)
    judged = {q: qrels.get(q, {}) for q in qids}
    keep = ("ndcg@10", "mrr@10")
    return {name: {k: round(v, 4) for k, v in evaluate_run(run, judged, dataset.relevant_min_gain).items() if k in keep}
            for name, run in (("bm25", bm25_run), ("teacher", teacher_run))} | {"queries": len(qids), "depth": cfg.mined_depth}


def student_loss(qv: torch.Tensor, pv: torch.Tensor, sizes: list[int], teacher: torch.Tensor | None,
                 temperature: float, kd_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(contrastive, KL) for B queries `qv` and their groups' products `pv` (flat, group after group).
    Contrastive: each query picks its group's first (relevant) product among every product of the
    batch except the rest of its own group (which may be relevant too). KL: the query's softmax
    over its own group against the teacher's softmax over the same products."""
    logits = qv @ pv.T / temperature  # [B, total]
    own = torch.zeros_like(logits, dtype=torch.bool)
    first, start = [], 0
    for i, n in enumerate(sizes):
        own[i, start + 1 : start + n] = True
        first.append(start)
        start += n
    contrastive = nn.functional.cross_entropy(logits.masked_fill(own, -1e9), torch.tensor(first, device=qv.device))
    if teacher is None or kd_weight == 0:
        return contrastive, logits.new_zeros(())
    group_logits = torch.cat([logits[i, s : s + n] for i, (s, n) in enumerate(zip(first, sizes))])
    student, mask = _padded_scores(group_logits, sizes)
    target_logits, _ = _padded_scores(teacher, sizes)
    neg = torch.finfo(student.dtype).min / 4
    log_q = torch.log_softmax(student.masked_fill(mask == 0, neg), dim=1)
    log_p = torch.log_softmax(target_logits.masked_fill(mask == 0, neg), dim=1)
    kl = torch.where(mask > 0, log_p.exp() * (log_p - log_q), 0.0).sum(dim=1).mean()
    return contrastive, kl


def train_student(model: BiEncoder, enc_q: TextEncoder, enc_p: TextEncoder, groups: list[Group],
                  product_text: dict[str, str], temperature: float, cfg: DistillConfig, log=print) -> list[float]:
    """More steps of the bi-encoder on the groups: contrastive + kd_weight x KL to the teacher."""
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.student_learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.student_steps))
    batches = _group_batches(groups, cfg.student_queries_per_step, cfg.seed + 1)
    losses: list[float] = []
    started = time.time()
    model.train()
    for step in range(cfg.student_steps):
        batch = next(batches)
        q = enc_q.encode_texts([g.query for g in batch])
        p = enc_p.encode_texts([product_text[pid] for g in batch for pid in g.product_ids])
        joined, _ = pad_batches([q, p])
        vectors = model(torch.from_numpy(joined.input_ids), torch.from_numpy(joined.attention_mask))
        teacher = (torch.from_numpy(np.concatenate([g.teacher for g in batch]))
                   if cfg.kd_weight and batch[0].teacher is not None else None)
        contrastive, kl = student_loss(vectors[: len(batch)], vectors[len(batch) :], [len(g.product_ids) for g in batch],
                                       teacher, temperature, cfg.kd_weight)
        loss = contrastive + cfg.kd_weight * kl
        losses.append(_update(model, optimizer, scheduler, loss))
        if (step + 1) % 50 == 0 or step == cfg.student_steps - 1:
            log(f"student step {step + 1}/{cfg.student_steps} loss {np.mean(losses[-50:]):.4f} "
                f"(contrastive {contrastive.item():.4f}, KL {kl.item():.4f}; {pace(step + 1, cfg.student_steps, started)})")
    return losses


def _teacher_start(model: BiEncoder, tokenizer_json: str, cfg: DistillConfig) -> tuple[dict, EncoderConfig]:
    """The transformer weights the cross-encoder teacher is fine-tuned from, and their shape
    (the bi-encoder's, less the layers `teacher_keep_layers` leaves out)."""
    from shopsearch.compress.pruning import keep_layers

    start = model
    if cfg.teacher_init_from:
        from shopsearch.core.pretrained import read_pretrained

        init = read_pretrained(Path(cfg.teacher_init_from), model.config.max_query_length, model.config.max_product_length)
        if init.tokenizer_json != tokenizer_json or dataclasses.replace(init.config, dropout=model.config.dropout) != model.config:
            raise ConfigError("distill", "teacher_init_from", f"{init.path} does not share the bi-encoder's tokenizer and "
                              "architecture (the teacher reads the bi-encoder's pairs)")
        start = init.load_into(BiEncoder(model.config))
    if cfg.teacher_keep_layers:
        try:
            start = keep_layers(start, list(cfg.teacher_keep_layers))
        except ConfigError:
            raise ConfigError("distill", "teacher_keep_layers", f"{list(cfg.teacher_keep_layers)} must be distinct layers "
                              f"of 0..{start.config.num_layers - 1}") from None
    return start.bert.state_dict(), start.config


def distill_stage(checkpoint: Path, dataset: Dataset, cfg: DistillConfig, log=print) -> dict:
    """Stage 1b on a trained bi-encoder checkpoint, in place: train the teacher (saved under
    `teacher/`), distill into the bi-encoder, re-evaluate it on dev. The re-ranker trained on the
    old bi-encoder's features no longer fits and is removed (stage 2 trains it again)."""
    from shopsearch.train.biencoder import evaluate_model

    started = time.time()
    checkpoint = Path(checkpoint)
    model, card = load_checkpoint(checkpoint)
    if "distillation" in card:
        raise ConfigError(str(checkpoint), "distillation", "this bi-encoder was distilled already; start from a stage-1 checkpoint")
    holdout = card.get("train_config", {}).get("rerank_holdout", 0.0)
    data = dataset.with_holdout(holdout) if holdout else dataset  # the re-ranker's queries stay unseen
    tokenizer_json = (checkpoint / TOKENIZER_FILE).read_text()
    model_cfg = model.config
    enc_q = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, model_cfg.max_query_length)
    enc_p = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, model_cfg.max_product_length)
    pairs = PairEncoder(tokenizer_json, cfg.max_query_tokens, model_cfg.max_product_length, model_cfg.max_positions)
    product_text = {p.product_id: p.search_text() for p in data.products}
    groups = build_groups(data, "train", cfg)
    log(f"distillation: {len(groups)} training queries ({sum(g.retrieved for g in groups)} with a relevant product in "
        f"BM25's top {cfg.mined_depth}: the teacher's), {sum(len(g.product_ids) for g in groups)} (query, product) pairs")
    report: dict = {"config": asdict(cfg), "groups": len(groups), "dev_metrics_before": card.get("dev_metrics", {})}
    if cfg.kd_weight and cfg.teacher_from:
        teacher, pairs = _trained_teacher(Path(cfg.teacher_from), tokenizer_json, holdout, groups, data, report, log)
        t = time.time()
        score_groups(teacher, pairs, groups, product_text)
        report["scoring_seconds"] = round(time.time() - t, 1)  # the teacher stays where it is: the card names it
    elif cfg.kd_weight:
        teacher, _ = _fit_teacher(model, tokenizer_json, pairs, groups, data, product_text, cfg, report, log)
        t = time.time()
        score_groups(teacher, pairs, groups, product_text)
        report["scoring_seconds"] = round(time.time() - t, 1)
        _save_teacher(teacher, checkpoint / TEACHER_DIR, {**report, "loss_curve": report.pop("teacher_loss_curve")})
    temperature = card.get("train_config", {}).get("temperature", 0.05)
    t = time.time()
    student_losses = train_student(model, enc_q, enc_p, groups, product_text, temperature, cfg, log)
    report["student_seconds"] = round(time.time() - t, 1)
    model.eval()
    metrics = evaluate_model(model, enc_q, enc_p, data, "dev") if "dev" in data.queries else {}
    log(f"dev metrics after distillation: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}")
    report["seconds"] = round(time.time() - started, 1)
    report["student_loss_curve"] = [round(v, 5) for v in student_losses]
    meta = {k: v for k, v in card.items() if k != "encoder_config"}
    meta.update(dev_metrics=metrics, distillation=report, code_version=git_revision())
    save_checkpoint(model, tokenizer_json, checkpoint, meta)
    if (checkpoint / RERANKER_DIR).exists():
        shutil.rmtree(checkpoint / RERANKER_DIR)
        log("distillation: removed the re-ranker trained on the previous bi-encoder (stage 2 retrains it)")
    return report


def _fit_teacher(model: BiEncoder, tokenizer_json: str, pairs: PairEncoder, groups: list[Group], data: Dataset,
                 product_text: dict[str, str], cfg: DistillConfig, report: dict, log) -> tuple[CrossEncoder, LexicalScorer | None]:
    """The cross-encoder trained on `groups` (their lexical features added first, when it reads
    them) and measured on dev; its seconds, dev metrics and loss curve go into `report`."""
    t = time.time()
    lexical = None
    if cfg.teacher_features:
        lexical = LexicalScorer.build(data.products)  # no popularity: the teacher does not read it
        add_lexical_features(groups, lexical, {p.product_id: i for i, p in enumerate(data.products)})
        log(f"distillation: lexical features of every pair ({time.time() - t:.1f}s)")
    bert_state, teacher_config = _teacher_start(model, tokenizer_json, cfg)
    teacher, losses = train_teacher(bert_state, teacher_config, pairs, groups, product_text, cfg, log)
    report["teacher_seconds"] = round(time.time() - t, 1)
    report["teacher_loss_curve"] = [round(v, 5) for v in losses]
    if "dev" in data.queries:
        report["teacher_dev"] = evaluate_teacher(teacher, pairs, data, "dev", cfg, lexical)
        log(f"teacher on dev: {json.dumps(report['teacher_dev'])}")
    return teacher, lexical


def _trained_teacher(directory: Path, tokenizer_json: str, holdout: float, groups: list[Group], data: Dataset,
                     report: dict, log) -> tuple[CrossEncoder, PairEncoder]:
    """The cross-encoder `train_cross_encoder` wrote to `directory`, checked against the bi-encoder
    it teaches (same tokenizer; trained with the same re-ranker holdout, so the re-ranker's queries
    stay unseen by both), and the pair encoder it was trained with. The groups get the lexical
    features it reads."""
    if not (directory / TEACHER_WEIGHTS).exists():
        raise ConfigError("distill", "teacher_from", f"{directory} holds no trained cross-encoder ({TEACHER_WEIGHTS}): "
                          "train it first (make cross-encoder CROSS_ENCODER=...)")
    teacher, card = load_cross_encoder(directory)
    theirs = directory / TOKENIZER_FILE
    if not theirs.exists() or theirs.read_text() != tokenizer_json:
        raise ConfigError("distill", "teacher_from", f"{directory} does not read the bi-encoder's tokenizer (its tokenizer.json differs)")
    theirs_holdout = _teacher_holdout(card)
    if theirs_holdout != holdout:
        raise ConfigError("distill", "teacher_from", f"{directory} was trained with rerank_holdout {theirs_holdout}, "
                          f"the bi-encoder with {holdout}: the re-ranker's held-out queries would not be the same")
    if teacher.n_features:
        t = time.time()
        add_lexical_features(groups, LexicalScorer.build(data.products), {p.product_id: i for i, p in enumerate(data.products)})
        log(f"distillation: lexical features of every pair ({time.time() - t:.1f}s)")
    pairs = PairEncoder(tokenizer_json, card["config"]["max_query_tokens"], teacher.config.max_product_length,
                        teacher.config.max_positions)
    report["teacher_from"] = {"path": str(directory), "sha256": file_sha256(directory / TEACHER_WEIGHTS),
                              "bi_encoder": card.get("bi_encoder")}
    if "teacher_dev" in card:
        report["teacher_dev"] = card["teacher_dev"]
    log(f"distillation: the cross-encoder of {directory} teaches (dev, its own measure: {json.dumps(card.get('teacher_dev'))})")
    return teacher, pairs


def _teacher_holdout(card: dict) -> float | None:
    """The re-ranker holdout a cross-encoder was trained with: on its card, or (cards written before
    it was recorded) on the card of the bi-encoder it was trained for, which it took it from."""
    if "rerank_holdout" in card:
        return card["rerank_holdout"]
    meta = Path(card.get("bi_encoder", "")) / CHECKPOINT_META
    if card.get("bi_encoder") and meta.exists():
        return json.loads(meta.read_text()).get("train_config", {}).get("rerank_holdout", 0.0)
    return None


def train_cross_encoder(checkpoint: Path, dataset: Dataset, cfg: DistillConfig, out_dir: Path, log=print) -> dict:
    """Only the cross-encoder of stage 1b, for a trained bi-encoder `checkpoint` (its tokenizer,
    architecture and held-out re-ranker queries), written to `out_dir` (cross_encoder.pt +
    teacher.json); the bi-encoder is left as it is. A re-scoring stage candidate
    (`shopsearch.evaluation.rescoring`)."""
    started = time.time()
    checkpoint = Path(checkpoint)
    model, card = load_checkpoint(checkpoint)
    holdout = card.get("train_config", {}).get("rerank_holdout", 0.0)
    data = dataset.with_holdout(holdout) if holdout else dataset  # the re-ranker's queries stay unseen
    tokenizer_json = (checkpoint / TOKENIZER_FILE).read_text()
    pairs = PairEncoder(tokenizer_json, cfg.max_query_tokens, model.config.max_product_length, model.config.max_positions)
    product_text = {p.product_id: p.search_text() for p in data.products}
    groups = build_groups(data, "train", cfg)
    log(f"cross-encoder: {sum(g.retrieved for g in groups)} training queries with a relevant product in BM25's top {cfg.mined_depth}")
    report: dict = {"config": asdict(cfg), "groups": len(groups), "bi_encoder": str(checkpoint), "rerank_holdout": holdout}
    teacher, _ = _fit_teacher(model, tokenizer_json, pairs, groups, data, product_text, cfg, report, log)
    report["seconds"] = round(time.time() - started, 1)
    _save_teacher(teacher, Path(out_dir), {**report, "loss_curve": report.pop("teacher_loss_curve"), "code_version": git_revision()})
    (Path(out_dir) / TOKENIZER_FILE).write_text(tokenizer_json)
    return report


def load_cross_encoder(directory: Path) -> tuple[CrossEncoder, dict]:
    """A cross-encoder `_save_teacher` wrote, and its card."""
    path = Path(directory) / TEACHER_WEIGHTS
    if not path.exists():
        raise ArtifactError(f"cross-encoder: {path} is missing")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = CrossEncoder(EncoderConfig(**saved["config"]), saved["n_features"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), json.loads((Path(directory) / TEACHER_CARD).read_text())


def _save_teacher(teacher: CrossEncoder, directory: Path, card: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(teacher.config), "n_features": teacher.n_features, "state_dict": teacher.state_dict()},
               directory / TEACHER_WEIGHTS)
    (directory / TEACHER_CARD).write_text(json.dumps(card, indent=2))


def distill_config(recipe) -> DistillConfig | None:
    """The recipe's [distill] section (stage 1b), or None when the recipe has none."""
    if recipe.distill is None:
        return None
    try:
        return DistillConfig(**recipe.distill)
    except TypeError as exc:
        raise ConfigError(str(recipe.path), "[distill]", str(exc)) from None
