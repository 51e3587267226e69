"""Names of the tensors that cross the Triton boundary, in one place.

The served steps read and write them, the config builders declare them, the clients send and read
them. Tensor names *between* the tokenizer, the embedder and the ranker are not here: they come from
the exported ONNX graphs (see shopsearch.build.search_configs), so a renamed graph input cannot
drift from the configs.
"""

from __future__ import annotations

# search
QUERY = "QUERY"  # BYTES [1] per request row: the shopper's query text (UTF-8; invalid bytes are replaced)
TOPK = "TOPK"  # INT32 [1], optional: how many products to return
# BOOL [1], optional: one result per listing (identical normalised titles under several product
# ids collapse into the best-ranked); true unless the request sends false.
COLLAPSE = "COLLAPSE"
# The query text as the tokenizer read it, UTF-8 in a fixed-size UINT8 row (zero padded) for the
# hybrid ranker's BM25. Not BYTES: Triton checks a fixed-size tensor's byte count per request, so
# no caller can send the ranker malformed string framing that would fail the requests batched
# with it (the Python backend fails a whole execution on one malformed BYTES input).
QUERY_TEXT = "QUERY_TEXT"
QUERY_TEXT_BYTES = 512
# Filters (optional, one value per request): CATEGORY BYTES [1], PRICE_MIN / PRICE_MAX FP32 [1],
# IN_STOCK BOOL [1]; the ranker applies them (shopsearch.core.filters).
from shopsearch.core import filters as _filters  # noqa: E402 - the names live with the filter logic

CATEGORY, PRICE_MIN, PRICE_MAX, IN_STOCK = _filters.CATEGORY, _filters.PRICE_MIN, _filters.PRICE_MAX, _filters.IN_STOCK
FILTER_INPUTS = _filters.FILTER_INPUTS

CANDIDATE_INDICES = "CANDIDATE_INDICES"  # INT64 [n_candidates]: catalog rows, best first (-1 pads)
CANDIDATE_SCORES = "CANDIDATE_SCORES"
PRODUCT_IDS = "PRODUCT_IDS"  # BYTES [k]: "" pads a row shorter than k
TITLES = "TITLES"
SCORES = "SCORES"

# recommendations
HISTORY = "HISTORY"  # BYTES [n]: product ids, oldest first ("" pads rows of unequal length)
EXCLUDE = "EXCLUDE"  # BYTES [n], optional: product ids never to return
ITEM_IDS = "ITEM_IDS"  # similar_items' input, fed to item_lookup's HISTORY (ensemble_configs/similar_items.toml)
SEEN_ITEMS = "SEEN_ITEMS"  # catalog rows a response must not contain; -1 pads
KNOWN_ITEMS = "KNOWN_ITEMS"  # how many history ids were in the catalog; 0 -> popularity
UNKNOWN_IDS = "UNKNOWN_IDS"  # the ids item_lookup ignored, "" pads
STRATEGY = "STRATEGY"  # "model" or "popularity": what answered
