"""Title vectors for item representations, from the search bi-encoder (the text side of cold start)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shopsearch.core.embedding import TorchEmbedder, embed_texts
from shopsearch.errors import DataError
from shopsearch.core.modeling import CHECKPOINT_WEIGHTS, load_checkpoint
from shopsearch.core.provenance import file_sha256
from shopsearch.core.tokenization import TOKENIZER_FILE, TextEncoder


def title_vectors(search_checkpoint: Path, titles: list[str]) -> tuple[np.ndarray, dict]:
    """[items, dim] float32 unit vectors of the titles as the search encoder embeds products; an
    item without a title gets a zero vector. Returns the vectors and where they came from."""
    if not any(t.strip() for t in titles):
        raise DataError("title vectors: the items have no titles")
    model, card = load_checkpoint(Path(search_checkpoint))
    encoder = TextEncoder.from_file(Path(search_checkpoint) / TOKENIZER_FILE, model.config.max_product_length)
    rows = [i for i, t in enumerate(titles) if t.strip()]
    vectors = np.zeros((len(titles), model.config.hidden_size), dtype=np.float32)
    vectors[rows] = embed_texts(TorchEmbedder(model), encoder, [titles[i] for i in rows])
    source = {"search_checkpoint": str(search_checkpoint),
              "search_checkpoint_sha256": file_sha256(Path(search_checkpoint) / CHECKPOINT_WEIGHTS),
              "search_dataset": card.get("dataset", {}).get("name"), "items_with_titles": len(rows)}
    return vectors, source
