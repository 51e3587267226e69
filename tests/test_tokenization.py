import numpy as np
import pytest

from shopsearch.errors import InvalidInputError
from shopsearch.core.tokenization import PAD_ID, TextEncoder, pad_batches, train_wordpiece

CORPUS = ["Apexrun Glide 3 Mesh Running Shoes - Black, Size 10", "Culina Nonstick Frying Pan 12 inch",
          "Dreamloom Linen Duvet Cover Queen", "Torqline Cordless Drill 20V with battery"] * 20


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(train_wordpiece(CORPUS, vocab_size=300, min_frequency=1), max_length=16)


def test_encoder_pads_with_zero_and_masks_padding(encoder):
    batch = encoder.encode(["running shoes", "black mesh running shoes size 10"])
    assert batch.input_ids.shape == batch.attention_mask.shape
    assert batch.input_ids.dtype == np.int64
    short = int(batch.attention_mask[0].sum())
    assert (batch.input_ids[0, short:] == PAD_ID).all() and (batch.attention_mask[0, short:] == 0).all()


def test_encoder_truncates_long_queries_to_max_length(encoder):
    batch = encoder.encode(["running shoes " * 5000])
    assert batch.input_ids.shape == (1, 16)


def test_encoder_refuses_empty_and_whitespace_queries_naming_the_field(encoder):
    with pytest.raises(InvalidInputError, match=r"tokenizer: QUERY\[1\]: query is empty"):
        encoder.encode([b"drill", b" \t\n "])
    with pytest.raises(InvalidInputError):
        encoder.encode([""])


def test_encoder_decodes_invalid_utf8_with_replacement_instead_of_failing(encoder):
    batch = encoder.encode([b"caf\xe9 table \xff\xfe drill"])
    assert batch.input_ids.shape[0] == 1 and batch.attention_mask.sum() > 2


def test_pad_batches_stacks_different_lengths_and_reports_rows(encoder):
    a = encoder.encode(["drill"])
    b = encoder.encode(["linen duvet cover queen", "pan"])
    joined, rows = pad_batches([a, b])
    assert rows == [1, 2]
    assert joined.input_ids.shape == (3, b.input_ids.shape[1])
    np.testing.assert_array_equal(joined.input_ids[0, : a.input_ids.shape[1]], a.input_ids[0])
    assert joined.attention_mask[0].sum() == a.attention_mask[0].sum()
