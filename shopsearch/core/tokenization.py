"""WordPiece tokenizer trained on the catalog, and the request-safe encoder the server uses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from shopsearch.errors import InvalidInputError

TOKENIZER_FILE = "tokenizer.json"  # the file name in checkpoints and in the tokenizer model's version dir
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID = 0
# Queries longer than this many characters are cut before tokenizing: no real query is this long,
# and it bounds the work one hostile request can cause.
MAX_QUERY_CHARS = 1024


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS)
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    if tokenizer.token_to_id("[PAD]") != PAD_ID:
        raise AssertionError("[PAD] must be id 0: the embedder's padding assumes it")
    return tokenizer


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: np.ndarray  # int64 [batch, seq], padded with PAD_ID
    attention_mask: np.ndarray  # int64 [batch, seq], 1 for real tokens


class TextEncoder:
    """Turns raw query bytes or strings into padded id/mask arrays, never raising on odd text.

    Invalid UTF-8 is decoded with replacement characters (a shop's legacy front end may send
    Latin-1); text is truncated to `max_length` tokens. Only an empty or whitespace-only query is
    refused, because there is nothing to search for.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, model_name: str = "tokenizer", pad_multiple: int = 0):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.model_name = model_name
        # >0: pad every batch to a multiple of this, so a GPU engine sees few distinct shapes and
        # Triton's batcher can join requests (native backends batch equal shapes only).
        self.pad_multiple = pad_multiple
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.no_padding()

    @classmethod
    def from_file(cls, path: Path, max_length: int, model_name: str = "tokenizer", pad_multiple: int = 0) -> "TextEncoder":
        return cls(Tokenizer.from_file(str(path)), max_length, model_name, pad_multiple)

    def decode_query(self, raw: bytes | str, index: int) -> str:
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        text = text[:MAX_QUERY_CHARS].replace("\x00", " ")
        if not text.strip():
            raise InvalidInputError(self.model_name, f"QUERY[{index}]", "query is empty or whitespace-only")
        return text

    def encode(self, queries: Sequence[bytes | str]) -> EncodedBatch:
        texts = [self.decode_query(q, i) for i, q in enumerate(queries)]
        return self.encode_texts(texts)

    def encode_texts(self, texts: Sequence[str]) -> EncodedBatch:
        encodings = self.tokenizer.encode_batch(list(texts))
        seq = max((len(e.ids) for e in encodings), default=0)
        if self.pad_multiple:
            seq = min(-(-seq // self.pad_multiple) * self.pad_multiple, self.max_length)
        ids = np.full((len(encodings), seq), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(encodings), seq), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        return EncodedBatch(ids, mask)


def pad_batches(batches: Sequence[EncodedBatch]) -> tuple[EncodedBatch, list[int]]:
    """Stack batches of different sequence lengths into one; returns it and each batch's row count."""
    seq = max(b.input_ids.shape[1] for b in batches)
    rows = [b.input_ids.shape[0] for b in batches]
    ids = np.full((sum(rows), seq), PAD_ID, dtype=np.int64)
    mask = np.zeros((sum(rows), seq), dtype=np.int64)
    start = 0
    for b, n in zip(batches, rows):
        ids[start : start + n, : b.input_ids.shape[1]] = b.input_ids
        mask[start : start + n, : b.attention_mask.shape[1]] = b.attention_mask
        start += n
    return EncodedBatch(ids, mask), rows
