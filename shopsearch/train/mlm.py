"""Masked-language-model pre-training of the bi-encoder's BERT on catalog text, before contrastive
fine-tuning: the encoder first learns the catalog's vocabulary and how titles are put together
(brands, types, sizes) from every product, not only from the products training queries judge."""

from __future__ import annotations

import random
import time

import numpy as np
import torch
from transformers import BertForMaskedLM

from shopsearch.core.modeling import BiEncoder
from shopsearch.core.tokenization import SPECIAL_TOKENS, TextEncoder
from shopsearch.train.progress import pace

MASK_PROBABILITY = 0.15


def mask_tokens(ids: np.ndarray, attention: np.ndarray, mask_id: int, vocab_size: int, special_ids: set[int],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BERT's recipe: 15% of the real (non-special) tokens become targets; of those 80% are
    replaced by [MASK], 10% by a random token, 10% kept. Labels are -100 everywhere else."""
    candidates = (attention == 1) & ~np.isin(ids, list(special_ids))
    chosen = candidates & (rng.random(ids.shape) < MASK_PROBABILITY)
    labels = np.where(chosen, ids, -100)
    inputs = ids.copy()
    draw = rng.random(ids.shape)
    inputs[chosen & (draw < 0.8)] = mask_id
    random_tokens = chosen & (draw >= 0.8) & (draw < 0.9)
    inputs[random_tokens] = rng.integers(len(SPECIAL_TOKENS), vocab_size, size=int(random_tokens.sum()))
    return inputs, labels


def pretrain_mlm(model: BiEncoder, encoder: TextEncoder, texts: list[str], steps: int, batch_size: int,
                 learning_rate: float, seed: int, log=print) -> list[float]:
    """Train `model.bert` with a masked-LM head for `steps` steps; the head is dropped afterwards
    (the bi-encoder keeps the pre-trained transformer). Returns the loss per step."""
    if not texts:
        raise ValueError("MLM pre-training needs catalog text")
    mlm = BertForMaskedLM(model.config.bert_config())
    mlm.bert = model.bert  # shared: every update lands in the bi-encoder's transformer
    mlm.tie_weights()  # the output layer reads the (shared) input embeddings again
    tokenizer = encoder.tokenizer
    mask_id = tokenizer.token_to_id("[MASK]")
    special = {tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    rng, order_rng = np.random.default_rng(seed), random.Random(seed)
    optimizer = torch.optim.AdamW(mlm.parameters(), lr=learning_rate, weight_decay=0.01)
    order: list[int] = []
    losses: list[float] = []
    started = time.time()
    mlm.train()
    for step in range(steps):
        if len(order) < batch_size:
            order = list(range(len(texts)))
            order_rng.shuffle(order)
        batch = encoder.encode_texts([texts[order.pop()] for _ in range(batch_size)])
        inputs, labels = mask_tokens(batch.input_ids, batch.attention_mask, mask_id, tokenizer.get_vocab_size(), special, rng)
        if (labels == -100).all():
            continue
        out = mlm(input_ids=torch.from_numpy(inputs), attention_mask=torch.from_numpy(batch.attention_mask),
                  labels=torch.from_numpy(labels))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(mlm.parameters(), 1.0)
        optimizer.step()
        losses.append(out.loss.item())
        if (step + 1) % 100 == 0 or step == steps - 1:
            log(f"mlm step {step + 1}/{steps} loss {np.mean(losses[-100:]):.4f} ({pace(step + 1, steps, started)})")
    return losses
