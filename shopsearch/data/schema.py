"""The in-memory shape every loader produces, whatever the source format."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shopsearch.errors import DataError

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Product:
    product_id: str
    title: str
    category: str = ""
    brand: str = ""
    product_type: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    price: float | None = None
    rating: float | None = None
    popularity: float | None = None
    in_stock: bool | None = None  # None: the catalog does not say (a stock filter then leaves it out)

    def search_text(self) -> str:
        """The text the embedder reads for this product (title first: it carries the most signal)."""
        parts = [self.title]
        if self.category and self.category.lower() not in self.title.lower():
            parts.append(self.category)
        return " | ".join(parts)


@dataclass
class Dataset:
    """A catalog plus search queries with graded relevance judgments, split by query.

    `qrels[split][query_id][product_id]` is an integer gain (0 = irrelevant). Products a query
    has no judgment for count as irrelevant, as in TREC-style evaluation over the full catalog.
    """

    name: str
    products: list[Product]
    queries: dict[str, dict[str, str]]
    qrels: dict[str, dict[str, dict[str, int]]]
    relevant_min_gain: int
    gain_names: dict[int, str] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        ids = [p.product_id for p in self.products]
        if len(set(ids)) != len(ids):
            raise DataError(f"dataset {self.name}: products: product_id values are not unique")
        known = set(ids)
        for split, by_query in self.qrels.items():
            missing_q = set(by_query) - set(self.queries.get(split, {}))
            if missing_q:
                raise DataError(
                    f"dataset {self.name}: qrels[{split}] names {len(missing_q)} unknown queries"
                )
            for qid, judged in by_query.items():
                unknown = set(judged) - known
                if unknown:
                    raise DataError(
                        f"dataset {self.name}: qrels[{split}][{qid}] names unknown products "
                        f"{sorted(unknown)[:3]}"
                    )

    def split(self, name: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
        if name not in self.queries or not self.queries[name]:
            raise DataError(f"dataset {self.name}: has no '{name}' split")
        return self.queries[name], self.qrels.get(name, {})

    def positive_pairs(self, split: str = "train") -> list[tuple[str, str]]:
        """(query text, product id) pairs whose gain counts as relevant."""
        queries, qrels = self.split(split)
        pairs = []
        for qid in sorted(qrels):
            for pid in sorted(qrels[qid]):
                if qrels[qid][pid] >= self.relevant_min_gain:
                    pairs.append((queries[qid], pid))
        return pairs

    def with_holdout(self, fraction: float, split: str = "rerank") -> "Dataset":
        """A copy whose train queries lose `fraction` of themselves (chosen by a hash of the query id,
        so the same queries on any machine) to a new `split`: data for a second-stage model (the
        re-ranker) that the first stage (the bi-encoder) never trained on."""
        if not 0.0 < fraction < 1.0:
            raise DataError(f"dataset {self.name}: holdout fraction must be in (0, 1), got {fraction}")
        train_q, train_r = self.queries.get("train", {}), self.qrels.get("train", {})
        cut = int(fraction * 10_000)
        held = {q for q in train_q if int(hashlib.sha1(q.encode()).hexdigest(), 16) % 10_000 < cut}
        queries = {**self.queries, "train": {q: t for q, t in train_q.items() if q not in held},
                   split: {q: t for q, t in train_q.items() if q in held}}
        qrels = {**self.qrels, "train": {q: r for q, r in train_r.items() if q not in held},
                 split: {q: r for q, r in train_r.items() if q in held}}
        return Dataset(self.name, self.products, queries, qrels, self.relevant_min_gain, self.gain_names, self.source)

    def with_catalog(self, products: list[Product]) -> "Dataset":
        """The same queries over a changed catalog (the daily catalog update a deploy publishes):
        judgments of products no longer sold are dropped, queries left with none are kept."""
        known = {p.product_id for p in products}
        qrels = {split: {q: {p: g for p, g in judged.items() if p in known} for q, judged in by_query.items()}
                 for split, by_query in self.qrels.items()}
        return Dataset(self.name, list(products), self.queries, qrels, self.relevant_min_gain, self.gain_names, self.source)

    def fingerprint(self) -> str:
        """A content hash: the same products and judgments give the same hash on any machine."""
        digest = hashlib.sha256()
        for product in self.products:
            fields = asdict(product)
            if fields["in_stock"] is None:
                del fields["in_stock"]  # catalogs without stock keep the hash they had before it existed
            digest.update(json.dumps(fields, sort_keys=True).encode())
        digest.update(json.dumps([self.queries, self.qrels], sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def stats(self) -> dict[str, int]:
        out = {"products": len(self.products)}
        for split in self.queries:
            out[f"{split}_queries"] = len(self.queries[split])
            out[f"{split}_judgments"] = sum(len(v) for v in self.qrels.get(split, {}).values())
        return out


def write_jsonl_dataset(dataset: Dataset, directory: Path) -> None:
    """Write a dataset in the project's own on-disk format (readable by `load_dataset('jsonl')`)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "products.jsonl", "w", encoding="utf-8") as f:
        for product in dataset.products:
            f.write(json.dumps(asdict(product), ensure_ascii=False) + "\n")
    for split in dataset.queries:
        with open(directory / f"queries_{split}.jsonl", "w", encoding="utf-8") as f:
            for qid, text in dataset.queries[split].items():
                judged = dataset.qrels.get(split, {}).get(qid, {})
                f.write(json.dumps({"query_id": qid, "query": text, "judgments": judged}) + "\n")
    meta = {
        "name": dataset.name,
        "relevant_min_gain": dataset.relevant_min_gain,
        "gain_names": {str(k): v for k, v in dataset.gain_names.items()},
        "fingerprint": dataset.fingerprint(),
    }
    (directory / "dataset.json").write_text(json.dumps(meta, indent=2))


def read_jsonl_dataset(directory: Path) -> Dataset:
    meta_path = directory / "dataset.json"
    if not meta_path.exists():
        raise DataError(f"jsonl dataset: {meta_path} is missing")
    meta = json.loads(meta_path.read_text())
    products = []
    with open(directory / "products.jsonl", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                products.append(Product(**json.loads(line)))
            except (TypeError, ValueError) as exc:
                raise DataError(f"{directory}/products.jsonl line {line_no}: {exc}") from exc
    queries: dict[str, dict[str, str]] = {}
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split in SPLITS:
        path = directory / f"queries_{split}.jsonl"
        if not path.exists():
            continue
        queries[split], qrels[split] = {}, {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                queries[split][row["query_id"]] = row["query"]
                qrels[split][row["query_id"]] = {k: int(v) for k, v in row["judgments"].items()}
    return Dataset(
        name=meta["name"],
        products=products,
        queries=queries,
        qrels=qrels,
        relevant_min_gain=int(meta["relevant_min_gain"]),
        gain_names={int(k): v for k, v in meta.get("gain_names", {}).items()},
        source=str(directory),
    )
