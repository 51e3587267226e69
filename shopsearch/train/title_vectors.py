"""Title vectors for item representations (the text side of cold start): from a search checkpoint's
bi-encoder, or straight from a pretrained encoder directory (e.g. all-MiniLM-L6-v2, no fine-tuning)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shopsearch.core.embedding import TorchEmbedder, embed_texts
from shopsearch.core.modeling import CHECKPOINT_WEIGHTS, load_checkpoint
from shopsearch.core.pretrained import pretrained_biencoder
from shopsearch.core.provenance import file_sha256
from shopsearch.core.tokenization import TOKENIZER_FILE, TextEncoder
from shopsearch.errors import DataError


def title_vectors(encoder_dir: Path, titles: list[str]) -> tuple[np.ndarray, dict]:
    """[items, dim] float32 unit vectors of the titles as the encoder embeds products; an item
    without a title gets a zero vector. `encoder_dir`: a search checkpoint, or a pretrained directory
    in the Hugging Face layout. Returns the vectors and where they came from."""
    if not any(t.strip() for t in titles):
        raise DataError("title vectors: the items have no titles")
    encoder_dir = Path(encoder_dir)
    if (encoder_dir / CHECKPOINT_WEIGHTS).exists():
        model, card = load_checkpoint(encoder_dir)
        encoder = TextEncoder.from_file(encoder_dir / TOKENIZER_FILE, model.config.max_product_length)
        source = {"search_checkpoint": str(encoder_dir), "search_checkpoint_sha256": file_sha256(encoder_dir / CHECKPOINT_WEIGHTS),
                  "search_dataset": card.get("dataset", {}).get("name")}
    else:
        model, pretrained = pretrained_biencoder(encoder_dir)
        encoder = TextEncoder.from_file(encoder_dir / "tokenizer.json", model.config.max_product_length)
        source = {"pretrained": pretrained.source}
    rows = [i for i, t in enumerate(titles) if t.strip()]
    vectors = np.zeros((len(titles), model.config.hidden_size), dtype=np.float32)
    vectors[rows] = embed_texts(TorchEmbedder(model), encoder, [titles[i] for i in rows])
    return vectors, {**source, "items_with_titles": len(rows)}
