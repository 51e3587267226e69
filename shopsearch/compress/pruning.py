"""Structured pruning of a trained bi-encoder: whole layers, attention heads, feed-forward units.

What is cut is measured, not assumed:
- layers: greedily, the layer whose removal costs the least measured quality goes, until `k`
  remain (`choose_layers`, with a dev-quality score the caller gives);
- heads and feed-forward units: by first-order importance (Michel et al. 2019 for heads): the
  contrastive loss's gradient with respect to a gate on each head's (unit's) output, summed over
  training batches; the least important go, the same number in every layer so the served graph keeps
  one shape per layer kind.
Pruned models keep the hidden width, so a pruned student can still be matched to its teacher's vectors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch

from shopsearch.core.modeling import BiEncoder
from shopsearch.errors import ConfigError


def keep_layers(model: BiEncoder, layers: list[int]) -> BiEncoder:
    """A new bi-encoder with the embeddings and only `layers` (in that order) of `model`'s encoder."""
    cfg = model.config
    if not layers or sorted(set(layers)) != sorted(layers) or not all(0 <= i < cfg.num_layers for i in layers):
        raise ConfigError("prune", "layers", f"{layers} must be distinct layers of 0..{cfg.num_layers - 1}")
    config = dataclasses.replace(cfg, num_layers=len(layers),
                                 layer_heads=tuple(cfg.layer_heads[i] for i in layers) if cfg.layer_heads else (),
                                 layer_ffn=tuple(cfg.layer_ffn[i] for i in layers) if cfg.layer_ffn else ())
    student = BiEncoder(config)
    student.bert.embeddings.load_state_dict(model.bert.embeddings.state_dict())
    for target, source in zip(student.bert.encoder.layer, layers):
        target.load_state_dict(model.bert.encoder.layer[source].state_dict())
    return student.train(model.training)


def prune_units(model: BiEncoder, heads: dict[int, list[int]] | None = None,
                ffn: dict[int, list[int]] | None = None) -> BiEncoder:
    """A new bi-encoder keeping, per layer, only the listed attention heads and feed-forward units
    (each list sorted; a layer not named keeps all of its own)."""
    cfg = model.config
    d = cfg.head_size
    current_heads = cfg.layer_heads or (cfg.num_heads,) * cfg.num_layers
    current_ffn = cfg.layer_ffn or (cfg.intermediate_size,) * cfg.num_layers
    keep_heads = {i: sorted((heads or {}).get(i, range(current_heads[i]))) for i in range(cfg.num_layers)}
    keep_ffn = {i: sorted((ffn or {}).get(i, range(current_ffn[i]))) for i in range(cfg.num_layers)}
    config = dataclasses.replace(cfg, layer_heads=tuple(len(keep_heads[i]) for i in range(cfg.num_layers)),
                                 layer_ffn=tuple(len(keep_ffn[i]) for i in range(cfg.num_layers)))
    student = BiEncoder(config)
    student.bert.embeddings.load_state_dict(model.bert.embeddings.state_dict())
    for i, (target, source) in enumerate(zip(student.bert.encoder.layer, model.bert.encoder.layer)):
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep_heads[i]])
        units = torch.tensor(keep_ffn[i], dtype=torch.long)
        state = source.state_dict()
        for name in ("query", "key", "value"):
            state[f"attention.self.{name}.weight"] = state[f"attention.self.{name}.weight"][rows]
            state[f"attention.self.{name}.bias"] = state[f"attention.self.{name}.bias"][rows]
        state["attention.output.dense.weight"] = state["attention.output.dense.weight"][:, rows]
        state["intermediate.dense.weight"] = state["intermediate.dense.weight"][units]
        state["intermediate.dense.bias"] = state["intermediate.dense.bias"][units]
        state["output.dense.weight"] = state["output.dense.weight"][:, units]
        target.load_state_dict(state)
    return student.train(model.training)


def unit_importance(model: BiEncoder, batches: Iterable[tuple[torch.Tensor, torch.Tensor, int]],
                    loss_fn: Callable[[torch.Tensor, int], torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the importance of each attention head and each feed-forward unit: |dL/dg| for a
    gate g on its output, summed over `batches` of (input_ids, attention_mask, queries in the batch);
    `loss_fn(vectors, n_queries)` is the training loss of one batch."""
    cfg = model.config
    captured: dict[tuple[int, str], torch.Tensor] = {}

    def grab(key):
        def hook(module, args):
            args[0].retain_grad()
            captured[key] = args[0]
        return hook

    handles = []
    for i, layer in enumerate(model.bert.encoder.layer):
        handles.append(layer.attention.output.dense.register_forward_pre_hook(grab((i, "heads"))))
        handles.append(layer.output.dense.register_forward_pre_hook(grab((i, "ffn"))))
    heads = [torch.zeros(layer.attention.output.dense.in_features // cfg.head_size) for layer in model.bert.encoder.layer]
    units = [torch.zeros(layer.output.dense.in_features) for layer in model.bert.encoder.layer]
    was_training = model.training
    model.eval()  # importance of the model as served: no dropout
    try:
        for ids, mask, n_queries in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model(ids, mask), n_queries).backward()
            keep = mask.unsqueeze(-1).float()
            for i in range(cfg.num_layers):
                ctx, ffn = captured[(i, "heads")], captured[(i, "ffn")]
                by_head = (ctx * ctx.grad * keep).sum(dim=(0, 1)).view(-1, cfg.head_size).sum(-1)
                heads[i] += by_head.abs().detach()
                units[i] += (ffn * ffn.grad * keep).sum(dim=(0, 1)).abs().detach()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return heads, units


def most_important(scores: list[torch.Tensor], keep: int) -> dict[int, list[int]]:
    """Per layer, the `keep` highest-scoring indices (ties to the lower index), sorted."""
    out = {}
    for i, s in enumerate(scores):
        if not 1 <= keep <= len(s):
            raise ConfigError("prune", "keep", f"{keep} of {len(s)} in layer {i}")
        order = sorted(range(len(s)), key=lambda j: (-float(s[j]), j))
        out[i] = sorted(order[:keep])
    return out


def choose_layers(n_layers: int, k: int, score: Callable[[list[int]], float], log=print) -> tuple[list[int], list[dict]]:
    """Greedy backward selection: from all layers, repeatedly drop the one whose removal leaves the
    best `score(layers)` (higher is better), until `k` remain. Returns the layers and every trial."""
    if not 1 <= k <= n_layers:
        raise ConfigError("prune", "layers", f"keep {k} of {n_layers}")
    kept = list(range(n_layers))
    trials = [{"layers": list(kept), "score": score(kept)}]
    log(f"layers {kept}: {trials[0]['score']:.4f}")
    while len(kept) > k:
        best: tuple[float, list[int]] | None = None
        for drop in kept:
            candidate = [i for i in kept if i != drop]
            value = score(candidate)
            trials.append({"layers": candidate, "score": value})
            log(f"layers {candidate}: {value:.4f}")
            if best is None or value > best[0]:
                best = (value, candidate)
        kept = best[1]
    return kept, trials
