"""The bi-encoder: a BERT from a config (random init, or a local pretrained checkpoint: no hub),
mean pooling, L2 norm."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel

from shopsearch.errors import ArtifactError, ConfigError
from shopsearch.core.tokenization import TOKENIZER_FILE

CHECKPOINT_WEIGHTS = "encoder.pt"
CHECKPOINT_META = "checkpoint.json"


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_query_length: int = 32  # tokens, [CLS] and [SEP] included
    max_product_length: int = 48
    max_positions: int = 64  # position embeddings; the longest sequence the exported graph accepts
    dropout: float = 0.1  # hidden and attention dropout while training
    # BERT's own defaults; a pretrained checkpoint (shopsearch.core.pretrained) brings its values.
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    # A structurally pruned encoder (shopsearch.compress.pruning): attention heads and feed-forward
    # width kept in each layer. Empty: num_heads and intermediate_size in every layer.
    layer_heads: tuple[int, ...] = ()
    layer_ffn: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_positions < max(self.max_query_length, self.max_product_length):
            raise ConfigError("encoder", "max_positions", "must cover max_query_length and max_product_length")
        # Read back from JSON as lists; a frozen config holds tuples.
        object.__setattr__(self, "layer_heads", tuple(self.layer_heads))
        object.__setattr__(self, "layer_ffn", tuple(self.layer_ffn))
        for name, values, most in (("layer_heads", self.layer_heads, self.num_heads), ("layer_ffn", self.layer_ffn, self.intermediate_size)):
            if values and (len(values) != self.num_layers or not all(1 <= v <= most for v in values)):
                raise ConfigError("encoder", name, f"needs one value in 1..{most} per layer ({self.num_layers}), got {list(values)}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def pruned(self) -> bool:
        return bool(self.layer_heads or self.layer_ffn)

    def bert_config(self) -> BertConfig:
        return BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_positions,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            layer_norm_eps=self.layer_norm_eps,
            type_vocab_size=self.type_vocab_size,
            hidden_act=self.hidden_act,
            pad_token_id=0,
            # Eager attention exports to the op pattern ONNX Runtime's transformer optimizer fuses
            # into one Attention node; SDPA's export is left unfused (1.6x slower after INT8).
            attn_implementation="eager",
        )


class BiEncoder(nn.Module):
    """One tower shared by queries and products; outputs unit vectors so dot product = cosine."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config.bert_config(), add_pooling_layer=False)
        for index, layer in enumerate(self.bert.encoder.layer):
            if config.layer_heads:
                resize_attention(layer, config.layer_heads[index], config.head_size)
            if config.layer_ffn:
                resize_feed_forward(layer, config.layer_ffn[index])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return nn.functional.normalize(pooled.float(), dim=-1)


def resize_attention(layer: nn.Module, heads: int, head_size: int) -> None:
    """Give a BERT layer's self-attention `heads` heads of `head_size` (new, untrained projections of
    the right shapes: a pruned checkpoint's weights are loaded into them). The attention reshapes to
    (-1, head_size), so the head count follows from the projection width."""
    attention = layer.attention
    hidden = attention.self.query.in_features
    for name in ("query", "key", "value"):
        setattr(attention.self, name, nn.Linear(hidden, heads * head_size))
    attention.self.num_attention_heads = heads
    attention.self.all_head_size = heads * head_size
    attention.output.dense = nn.Linear(heads * head_size, hidden)


def resize_feed_forward(layer: nn.Module, width: int) -> None:
    """Give a BERT layer's feed-forward block `width` intermediate units (new projections, as above)."""
    hidden = layer.intermediate.dense.in_features
    layer.intermediate.dense = nn.Linear(hidden, width)
    layer.output.dense = nn.Linear(width, hidden)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encoder_flops(config: EncoderConfig, tokens: int) -> int:
    """Multiply-add FLOPs (2 per MAC, as torch.utils.flop_counter counts them) of one forward pass
    over `tokens` tokens: per layer the Q/K/V/output projections, the two feed-forward projections
    and the attention's scores and context; embeddings, norms and pooling are negligible beside them.
    Follows a pruned encoder's heads and feed-forward width layer by layer."""
    heads = config.layer_heads or (config.num_heads,) * config.num_layers
    ffn = config.layer_ffn or (config.intermediate_size,) * config.num_layers
    hidden, total = config.hidden_size, 0
    for layer_heads, layer_ffn in zip(heads, ffn):
        attention = layer_heads * config.head_size
        total += 2 * tokens * (4 * hidden * attention + 2 * hidden * layer_ffn) + 2 * 2 * tokens * tokens * attention
    return total


def save_checkpoint(model: BiEncoder, tokenizer_json: str, directory: Path, meta: dict) -> Path:
    """Write weights, tokenizer and a JSON card (config + provenance) side by side."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, directory / CHECKPOINT_WEIGHTS)
    (directory / TOKENIZER_FILE).write_text(tokenizer_json)
    card = {"encoder_config": asdict(model.config), **meta}
    (directory / CHECKPOINT_META).write_text(json.dumps(card, indent=2, sort_keys=True))
    return directory


def load_checkpoint(directory: Path) -> tuple[BiEncoder, dict]:
    weights = directory / CHECKPOINT_WEIGHTS
    if not weights.exists():
        raise ArtifactError(f"checkpoint {directory}: {CHECKPOINT_WEIGHTS} is missing (train first)")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    config = dict(state["config"])
    # Checkpoints from before max_positions was a field: read it off the weights.
    config.setdefault("max_positions", state["state_dict"]["bert.embeddings.position_embeddings.weight"].shape[0])
    model = BiEncoder(EncoderConfig(**config))
    model.load_state_dict(state["state_dict"])
    model.eval()
    meta = json.loads((directory / CHECKPOINT_META).read_text())
    return model, meta
