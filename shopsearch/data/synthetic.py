"""A deterministic synthetic shop: a catalog, shopper queries and ESCI-style graded judgments.

Everything is drawn from `random.Random(seed)`, so the same seed gives byte-identical data on any
machine. Because the generator knows every product's attributes, judgments are exact over the whole
catalog (not only over what some engine retrieved): a query is built from constraints (type, brand,
colour, ...) and each product is graded against them:

  exact (3)       right type, every constraint met
  substitute (2)  right type, some constraint missed (other colour, brand, size, ...)
  complement (1)  a type bought together with the query's type (tent -> sleeping bag)
  irrelevant (0)  a sample of everything else (unjudged products also count as irrelevant)
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from shopsearch.data.schema import Dataset, Product
from shopsearch.data.synthetic_catalog import (
    APPAREL_SIZES,
    CATEGORIES,
    COMPLEMENTS,
    LINE_NAMES,
    SHOE_SIZES,
    WORD_SYNONYMS,
    CategorySpec,
)

GAIN_NAMES = {3: "exact", 2: "substitute", 1: "complement", 0: "irrelevant"}
# Attribute kinds that vary between variants of one model line; the rest are fixed per line.
VARIANT_KINDS = ("colour", "size", "capacity", "storage", "memory", "screen", "pack", "weight", "voltage")
# Which constraints a shopper's query names, and how often.
QUERY_TEMPLATES = (
    (("colour", "type"), 0.18),
    (("brand", "type"), 0.14),
    (("colour", "type", "size"), 0.10),
    (("brand", "colour", "type"), 0.14),
    (("material", "type"), 0.10),
    (("feature", "type"), 0.04),
    (("variant", "type"), 0.04),
    (("brand", "line", "type"), 0.08),
    (("colour", "material", "type"), 0.08),
    (("type", "capacity"), 0.04),
    (("type",), 0.06),
)
MAX_JUDGED = {3: 100, 2: 30, 1: 10, 0: 5}
STOCKED_PERCENT = 85


@dataclass(frozen=True)
class SyntheticShopConfig:
    n_products: int = 20_000
    n_queries: int = 14_000
    seed: int = 13
    dev_fraction: float = 0.08
    test_fraction: float = 0.08


def _title_word(value: str) -> str:
    return value if any(ch.isdigit() for ch in value) or value.isupper() else value.title()


def _display_size(kind_values: tuple[str, ...], size: str) -> str:
    if kind_values in (SHOE_SIZES, APPAREL_SIZES):
        return f"Size {size}"
    return _title_word(size)


def _make_products(cfg: SyntheticShopConfig, rng: random.Random) -> list[Product]:
    type_specs = [(cat, t) for cat in CATEGORIES for t in cat.types]
    per_type = cfg.n_products / len(type_specs)
    products: list[Product] = []
    for type_index, (cat, (type_name, _)) in enumerate(type_specs):
        # Spread the remainder evenly so the total is exactly n_products.
        target = int(round(per_type * (type_index + 1))) - int(round(per_type * type_index))
        attrs = cat.attributes_of(type_name)
        lines_used: set[tuple[str, str]] = set()
        # Model numbers 1-9 name the lines of a 20k shop; a larger shop needs more distinct lines
        # (about two products per line would exhaust brands x names x 9 at 2 million products).
        numbers = max(9, math.ceil(target / (2 * len(cat.brands) * len(LINE_NAMES))))
        made = 0
        while made < target:
            brand = rng.choice(cat.brands)
            line = f"{rng.choice(LINE_NAMES)} {rng.randint(1, numbers)}"
            if (brand, line) in lines_used:
                continue
            lines_used.add((brand, line))
            fixed = {k: rng.choice(v) for k, v in attrs.items() if k not in VARIANT_KINDS}
            variant_kinds = [k for k in attrs if k in VARIANT_KINDS]
            n_variants = min(target - made, rng.randint(2, 8))
            seen_variants: set[tuple[str, ...]] = set()
            base_price = math.exp(rng.uniform(math.log(cat.price[0]), math.log(cat.price[1])))
            for _ in range(n_variants * 3):
                if len(seen_variants) >= n_variants:
                    break
                variant = tuple(rng.choice(attrs[k]) for k in variant_kinds)
                if variant in seen_variants:
                    continue
                seen_variants.add(variant)
                attributes = {**fixed, **dict(zip(variant_kinds, variant)), "line": line}
                products.append(
                    _product(len(products), cat, type_name, brand, attributes, base_price, rng)
                )
                made += 1
    return products


def _product(index, cat: CategorySpec, type_name, brand, attributes, base_price, rng) -> Product:
    attrs = dict(cat.attributes)
    descriptors = [
        _title_word(attributes[k])
        for k in ("material", "feature", "variant", "connectivity", "finish", "resolution", "age")
        if k in attributes
    ]
    details = []
    for kind in ("colour", "size", "capacity", "screen", "storage", "memory", "pack", "weight",
                 "voltage", "kit", "model"):
        if kind in attributes:
            value = attributes[kind]
            details.append(_display_size(attrs[kind], value) if kind == "size" else _title_word(value))
    head = " ".join([brand, attributes["line"], *descriptors, type_name.title()])
    title = head + (" - " + ", ".join(details) if details else "")
    return Product(
        product_id=f"P{index:06d}",
        title=title,
        category=cat.name,
        brand=brand,
        product_type=type_name,
        attributes=attributes,
        price=round(base_price * rng.uniform(0.9, 1.15), 2),
        rating=round(rng.uniform(2.8, 5.0), 1),
        # Heavy-tailed like real sales: a few products sell most.
        popularity=round(rng.paretovariate(1.3), 3),
        in_stock=in_stock(f"P{index:06d}"),
    )


def in_stock(product_id: str) -> bool:
    """About 85% of products in stock, fixed per product id. Drawn from the id's hash, not the
    generator's random stream, so adding stock left every other product field as it was."""
    return int(hashlib.sha256(product_id.encode()).hexdigest()[:8], 16) % 100 < STOCKED_PERCENT


def _matches(product: Product, constraints: dict[str, str]) -> int:
    """How many of the non-type constraints the product meets."""
    met = 0
    for kind, value in constraints.items():
        if kind == "type":
            continue
        actual = product.brand if kind == "brand" else product.attributes.get(kind)
        met += actual == value
    return met


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    op = rng.choice(("drop", "swap", "double", "replace"))
    if op == "drop":
        return word[:i] + word[i + 1 :]
    if op == "swap":
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    if op == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[i + 1 :]


def _surface(constraints: dict[str, str], cat: CategorySpec, rng: random.Random) -> str:
    """Write constraints the way shoppers type them: synonyms, order changes, typos, prefixes."""
    words: list[str] = []
    for kind, value in constraints.items():
        text = value
        if kind == "type":
            synonyms = dict(cat.types)[value]
            if synonyms and rng.random() < 0.35:
                text = rng.choice(synonyms)
        elif value in WORD_SYNONYMS and rng.random() < 0.3:
            text = rng.choice(WORD_SYNONYMS[value])
        if kind == "size" and value in SHOE_SIZES and rng.random() < 0.6:
            text = f"size {value}"
        words.append(text.lower())
    if len(words) > 1 and rng.random() < 0.3:
        rng.shuffle(words)
    tokens = " ".join(words).split()
    if rng.random() < 0.12:
        candidates = [i for i, w in enumerate(tokens) if len(w) >= 4 and w.isalpha()]
        if candidates:
            i = rng.choice(candidates)
            tokens[i] = _typo(tokens[i], rng)
    if rng.random() < 0.05 and len(tokens[-1]) >= 5:
        tokens[-1] = tokens[-1][: rng.randint(3, len(tokens[-1]) - 1)]  # typed while autocomplete fired
    return " ".join(tokens)


def _split_of(query: str, cfg: SyntheticShopConfig) -> str:
    bucket = int(hashlib.sha1(query.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < cfg.dev_fraction:
        return "dev"
    if bucket < cfg.dev_fraction + cfg.test_fraction:
        return "test"
    return "train"


def generate_shop(cfg: SyntheticShopConfig | None = None) -> Dataset:
    cfg = cfg or SyntheticShopConfig()
    rng = random.Random(cfg.seed)
    products = _make_products(cfg, rng)
    by_type: dict[str, list[Product]] = defaultdict(list)
    for p in products:
        by_type[p.product_type].append(p)
    category_of_type = {t: cat for cat in CATEGORIES for t, _ in cat.types}
    complements: dict[str, list[str]] = defaultdict(list)
    for a, b in COMPLEMENTS:
        complements[a].append(b)
        complements[b].append(a)

    facets = _Facets(by_type)
    templates, weights = zip(*QUERY_TEMPLATES)
    cum_popularity = list(itertools.accumulate(p.popularity for p in products))
    queries = {"train": {}, "dev": {}, "test": {}}
    qrels = {"train": {}, "dev": {}, "test": {}}
    seen: set[str] = set()
    attempts = 0
    while len(seen) < cfg.n_queries and attempts < cfg.n_queries * 20:
        attempts += 1
        # Popular products are searched for more often, as in a real shop's logs.
        anchor = rng.choices(products, cum_weights=cum_popularity)[0]
        template = rng.choices(templates, weights=weights)[0]
        constraints: dict[str, str] = {}
        for kind in template:
            if kind == "type":
                constraints["type"] = anchor.product_type
            elif kind == "brand":
                constraints["brand"] = anchor.brand
            elif kind in anchor.attributes:
                constraints[kind] = anchor.attributes[kind]
        if len(constraints) == 1 and template != ("type",):
            continue  # the template named attributes this product does not have
        cat = category_of_type[anchor.product_type]
        text = _surface(constraints, cat, rng)
        if text in seen or not text.strip():
            continue
        seen.add(text)
        split = _split_of(text, cfg)
        qid = f"q{len(seen):06d}"
        queries[split][qid] = text
        qrels[split][qid] = _judge(constraints, by_type, complements, products, rng, facets)
    return Dataset(
        name="synthetic",
        products=products,
        queries=queries,
        qrels=qrels,
        relevant_min_gain=3,
        gain_names=GAIN_NAMES,
        source=f"generated: {cfg}",
    )


class _Facets:
    """Per product type, arrays of its products' values: one per constraint kind (brand, colour,
    size, ...), their popularity and their product-id order. A query's constraints are then counted,
    and its judged products ordered, over all products of its type at once: `_matches` and a sort
    one product at a time were the generator's hot loop."""

    def __init__(self, by_type: dict[str, list[Product]]):
        self.by_type = by_type
        self._columns: dict[tuple[str, str], np.ndarray] = {}
        id_order = {pid: i for i, pid in enumerate(sorted(p.product_id for ps in by_type.values() for p in ps))}
        self.popularity = {t: np.array([p.popularity for p in ps], dtype=np.float64) for t, ps in by_type.items()}
        self.id_order = {t: np.array([id_order[p.product_id] for p in ps], dtype=np.int64) for t, ps in by_type.items()}

    def column(self, product_type: str, kind: str) -> np.ndarray:
        key = (product_type, kind)
        if key not in self._columns:
            values = [p.brand if kind == "brand" else p.attributes.get(kind) for p in self.by_type[product_type]]
            self._columns[key] = np.array(values, dtype=object)
        return self._columns[key]

    def matches(self, constraints: dict[str, str]) -> np.ndarray:
        """`_matches(p, constraints)` for every product p of the constraints' type, in order."""
        product_type = constraints["type"]
        met = np.zeros(len(self.by_type[product_type]), dtype=np.int64)
        for kind, value in constraints.items():
            if kind != "type":
                met += self.column(product_type, kind) == value
        return met

    def best(self, product_type: str, rows: np.ndarray, n: int, met: np.ndarray | None = None) -> list[Product]:
        """The first `n` of `rows` by (most constraints met,) most popular, then product id."""
        keys = [self.id_order[product_type][rows], -self.popularity[product_type][rows]]
        if met is not None:
            keys.append(-met[rows])
        return [self.by_type[product_type][i] for i in rows[np.lexsort(keys)][:n]]


def _judge(constraints, by_type, complements, products, rng, facets: _Facets) -> dict[str, int]:
    wanted = len(constraints) - 1
    met = facets.matches(constraints)
    # The most popular exact matches; then the best substitutes: they miss the fewest constraints,
    # then the popular ones.
    exact = facets.best(constraints["type"], np.flatnonzero(met == wanted), MAX_JUDGED[3])
    substitutes = facets.best(constraints["type"], np.flatnonzero(met < wanted), MAX_JUDGED[2], met)
    complement_pool = [p for t in complements.get(constraints["type"], ()) for p in by_type[t]]
    judged: dict[str, int] = {}
    for p in exact[: MAX_JUDGED[3]]:
        judged[p.product_id] = 3
    for p in substitutes[: MAX_JUDGED[2]]:
        judged[p.product_id] = 2
    for p in rng.sample(complement_pool, min(MAX_JUDGED[1], len(complement_pool))):
        judged[p.product_id] = 1
    related = {constraints["type"], *complements.get(constraints["type"], ())}
    irrelevant = 0  # every product of an unrelated type in `judged` was put there by this loop
    while irrelevant < MAX_JUDGED[0]:
        p = rng.choice(products)
        if p.product_type not in related and p.product_id not in judged:
            judged[p.product_id] = 0
            irrelevant += 1
    return judged
