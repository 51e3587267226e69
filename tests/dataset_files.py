"""A Dataset written out in the on-disk formats the real loaders read (Home Depot CSVs, ESCI parquet +
products JSONL), so the README's `DATA=` commands can run on tiny data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from shopsearch.data.schema import Dataset

# The synthetic shop's graded gains as Home Depot's mean ratings (1 irrelevant .. 3 exact) and ESCI labels.
HOMEDEPOT_RELEVANCE = {3: "3", 2: "2.33", 1: "1.67", 0: "1"}
ESCI_LABELS = {3: "E", 2: "S", 1: "C", 0: "I"}


def write_homedepot(dataset: Dataset, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "products.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["product_uid", "product_title"])
        writer.writerows([p.product_id, p.title] for p in dataset.products)
    for split in ("train", "dev"):
        queries, qrels = dataset.split(split)
        with open(directory / f"judgments_{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["query", "product_uid", "relevance"])
            writer.writerows([queries[qid], pid, HOMEDEPOT_RELEVANCE[gain]]
                             for qid, judged in sorted(qrels.items()) for pid, gain in sorted(judged.items()))
    return directory


def write_esci(dataset: Dataset, directory: Path) -> Path:
    """Train and dev queries as ESCI's train split (the loader draws its own dev from it), test as test."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for split, esci_split in (("train", "train"), ("dev", "train"), ("test", "test")):
        queries, qrels = dataset.split(split)
        for qid, judged in sorted(qrels.items()):
            rows += [{"query_id": len(rows), "query": queries[qid], "product_id": pid, "product_locale": "us",
                      "esci_label": ESCI_LABELS[gain], "small_version": 1, "split": esci_split}
                     for pid, gain in sorted(judged.items())]
    # One query id per query text, as in the release.
    ids: dict[str, int] = {}
    for row in rows:
        row["query_id"] = ids.setdefault(row["query"], len(ids))
    pq.write_table(pa.Table.from_pylist(rows), directory / "shopping_queries_dataset_examples.parquet")
    with open(directory / "products.jsonl", "w", encoding="utf-8") as f:
        for p in dataset.products:
            fields = {"id": p.product_id, "title": p.title, "brand": p.brand or ""}
            f.write(json.dumps({"put": f"id:commerce:product::{p.product_id}", "fields": fields}) + "\n")
    return directory
