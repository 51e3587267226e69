"""Loader for the Amazon Shopping Queries dataset (ESCI) and samples in its schema.

Judgments: a parquet file with `query_id, query, product_id, product_locale, esci_label, split`
(and optionally `small_version`): the release's `shopping_queries_dataset_examples.parquet`, or
any `*.parquet` in the directory that has those columns (the fixture's `test-sample.parquet`).
Products: the release's `shopping_queries_dataset_products.parquet` (`product_id, product_title,
product_brand, product_color, product_locale, ...`), or a JSONL feed whose lines are
`{"put": ..., "fields": {"id", "title", "brand", "color", ...}}` (the fixture's sample-products.jsonl).

Labels become gains as in the ESCI paper's ordering: Exact 3, Substitute 2, Complement 1,
Irrelevant 0; Exact or Substitute counts as relevant for recall. ESCI has train and test splits;
dev is a fixed 10% of the train queries, chosen by a hash of the query id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shopsearch.data.schema import Dataset, Product
from shopsearch.errors import DataError

ESCI_GAINS = {"E": 3, "S": 2, "C": 1, "I": 0}
RELEVANT_MIN_GAIN = 2
EXAMPLE_COLUMNS = {"query_id", "query", "product_id", "esci_label", "split"}
DEV_PERCENT = 10


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pinned in requirements.txt
        raise DataError(f"esci: reading {path.name} needs pyarrow ({exc})") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types for bad files
        raise DataError(f"esci: {path.name} is not a readable parquet file: {exc}") from None


def _parquet_columns(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    try:
        return set(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001
        return set()


def _examples_file(directory: Path) -> Path:
    candidates = sorted(p for p in directory.glob("*.parquet") if EXAMPLE_COLUMNS <= _parquet_columns(p))
    if not candidates:
        raise DataError(f"esci: no parquet file in {directory} has the columns {sorted(EXAMPLE_COLUMNS)}")
    preferred = [p for p in candidates if "examples" in p.name]
    return (preferred or candidates)[0]


def _product_from_fields(fields: dict, where: str) -> Product:
    pid = str(fields.get("id") or fields.get("product_id") or "").strip()
    title = str(fields.get("title") or fields.get("product_title") or "").strip()
    if not pid:
        raise DataError(f"esci: {where}: product without an id")
    brand = str(fields.get("brand") or fields.get("product_brand") or "").strip()
    color = str(fields.get("color") or fields.get("product_color") or "").strip()
    return Product(product_id=pid, title=title or pid, brand=brand, attributes={"colour": color} if color else {})


def _load_products(directory: Path, locale: str) -> list[Product]:
    parquet = directory / "shopping_queries_dataset_products.parquet"
    if parquet.exists():
        rows = _read_parquet(parquet)
        return [_product_from_fields(r, parquet.name) for r in rows if r.get("product_locale", locale) == locale]
    feeds = sorted(directory.glob("*products*.jsonl"))
    if not feeds:
        raise DataError(f"esci: no products in {directory} (shopping_queries_dataset_products.parquet or *products*.jsonl)")
    products = []
    for feed in feeds:
        with open(feed, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"esci: {feed.name} line {line_no}: {exc}") from None
                products.append(_product_from_fields(record.get("fields", record), f"{feed.name} line {line_no}"))
    return products


def _is_dev(query_id: str) -> bool:
    return int(hashlib.sha1(query_id.encode()).hexdigest(), 16) % 100 < DEV_PERCENT


def load_esci(directory: Path, locale: str = "us", small_version_only: bool = True) -> Dataset:
    directory = Path(directory)
    examples_path = _examples_file(directory)
    products = {p.product_id: p for p in _load_products(directory, locale)}
    queries: dict[str, dict[str, str]] = {"train": {}, "dev": {}, "test": {}}
    qrels: dict[str, dict[str, dict[str, int]]] = {"train": {}, "dev": {}, "test": {}}
    skipped_unknown = 0
    for row_no, row in enumerate(_read_parquet(examples_path), 1):
        if row.get("product_locale", locale) != locale:
            continue
        if small_version_only and "small_version" in row and not row["small_version"]:
            continue
        label = str(row["esci_label"]).strip().upper()
        if label not in ESCI_GAINS:
            raise DataError(f"esci: {examples_path.name} row {row_no}: esci_label '{row['esci_label']}' is not one of E/S/C/I")
        pid = str(row["product_id"]).strip()
        if pid not in products:
            skipped_unknown += 1  # a judged product the catalog lacks: nothing to retrieve
            continue
        qid = f"esci-{row['query_id']}"
        split = str(row["split"]).strip()
        if split not in ("train", "test"):
            raise DataError(f"esci: {examples_path.name} row {row_no}: split '{split}' is not train or test")
        if split == "train" and _is_dev(qid):
            split = "dev"
        queries[split][qid] = str(row["query"]).strip()
        qrels[split].setdefault(qid, {})[pid] = ESCI_GAINS[label]
    if not any(queries.values()):
        raise DataError(f"esci: {examples_path.name} holds no judgments for locale '{locale}' with known products")
    return Dataset(
        name="esci",
        products=list(products.values()),
        queries={s: q for s, q in queries.items() if q},
        qrels={s: r for s, r in qrels.items() if r},
        relevant_min_gain=RELEVANT_MIN_GAIN,
        gain_names={3: "exact", 2: "substitute", 1: "complement", 0: "irrelevant"},
        source=f"{directory} ({examples_path.name}; {skipped_unknown} judgments of products not in the catalog skipped)",
    )
