"""Loader for the Home Depot product search relevance data (Kaggle 2016 train set).

Expected files in the directory: products.csv (product_uid, product_title) and
judgments_<split>.csv (query, product_uid, relevance) for split in train / dev / test.
Relevance is the mean of human ratings on 1 (irrelevant) .. 3 (exact) in steps of 1/3; it becomes
an integer gain 0..6 so that graded nDCG keeps every step, and >= 2.0 (gain 3) counts as relevant.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from shopsearch.data.schema import SPLITS, Dataset, Product
from shopsearch.errors import DataError

RELEVANT_MIN_GAIN = 3  # relevance >= 2.0 ("partly relevant" or better)


def relevance_to_gain(relevance: float) -> int:
    if not 1.0 <= relevance <= 3.0:
        raise DataError(f"homedepot: relevance {relevance} is outside 1..3")
    return int(round((relevance - 1.0) * 3))


def _query_id(text: str) -> str:
    return "hd-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _open_csv(path: Path, required: set[str]):
    if not path.exists():
        raise DataError(f"homedepot: {path} is missing")
    handle = open(path, newline="", encoding="utf-8")
    reader = csv.DictReader(handle)
    missing = required - set(reader.fieldnames or [])
    if missing:
        handle.close()
        raise DataError(f"homedepot: {path.name}: missing columns {sorted(missing)}")
    return handle, reader


def load_homedepot(directory: Path) -> Dataset:
    directory = Path(directory)
    handle, reader = _open_csv(directory / "products.csv", {"product_uid", "product_title"})
    with handle:
        products = [
            Product(product_id=row["product_uid"].strip(), title=row["product_title"].strip())
            for row in reader
        ]
    queries: dict[str, dict[str, str]] = {}
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split in SPLITS:
        path = directory / f"judgments_{split}.csv"
        if not path.exists():
            continue
        queries[split], qrels[split] = {}, {}
        handle, reader = _open_csv(path, {"query", "product_uid", "relevance"})
        with handle:
            for line_no, row in enumerate(reader, 2):
                text = row["query"].strip()
                try:
                    gain = relevance_to_gain(float(row["relevance"]))
                except ValueError as exc:
                    raise DataError(f"homedepot: {path.name} line {line_no}: {exc}") from exc
                qid = _query_id(text)
                queries[split][qid] = text
                qrels[split].setdefault(qid, {})[row["product_uid"].strip()] = gain
    if not queries:
        raise DataError(f"homedepot: no judgments_<split>.csv in {directory}")
    return Dataset(
        name="homedepot",
        products=products,
        queries=queries,
        qrels=qrels,
        relevant_min_gain=RELEVANT_MIN_GAIN,
        gain_names={0: "irrelevant (1.0)", 3: "partly relevant (2.0)", 6: "exact (3.0)"},
        source=str(directory),
    )
