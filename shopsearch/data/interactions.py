"""Interaction data for recommendations: a catalog of items and, per user, a time-ordered history.

Every loader produces `Interactions`: item rows 0..n-1 (their ids and titles), each user's
history as item rows, and the held-out next item (leave-one-out). Training reads histories only;
the targets are never shown to a model or a baseline before evaluation.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shopsearch.errors import DataError

REC_DATASETS = ("synthetic", "amazon_games", "amazon_beauty")


@dataclass
class Interactions:
    name: str
    item_ids: list[str]
    titles: list[str]  # "" where the source has none (amazon_beauty)
    histories: list[list[int]]  # item rows, oldest first; what a user has (target excluded)
    targets: list[int]  # the held-out next item of each user
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if len(set(self.item_ids)) != n:
            raise DataError(f"interactions {self.name}: item ids are not unique")
        if len(self.titles) != n:
            raise DataError(f"interactions {self.name}: {len(self.titles)} titles for {n} items")
        if len(self.histories) != len(self.targets):
            raise DataError(f"interactions {self.name}: {len(self.histories)} histories but {len(self.targets)} targets")
        for user, (history, target) in enumerate(zip(self.histories, self.targets)):
            if not 0 <= target < n or any(not 0 <= i < n for i in history):
                raise DataError(f"interactions {self.name}: user {user} names an item outside the catalog")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def has_titles(self) -> bool:
        return any(self.titles)

    def item_counts(self) -> np.ndarray:
        """Interactions per item in the histories (training data); targets are not counted."""
        counts = np.zeros(self.n_items, dtype=np.int64)
        for history in self.histories:
            np.add.at(counts, history, 1)
        return counts

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update("\n".join(self.item_ids).encode())
        for history, target in zip(self.histories, self.targets):
            digest.update((" ".join(map(str, history)) + f">{target}\n").encode())
        return digest.hexdigest()[:16]

    def stats(self) -> dict[str, float]:
        lengths = [len(h) for h in self.histories]
        return {"items": self.n_items, "users": len(self.histories), "interactions": int(sum(lengths)),
                "mean_history": round(float(np.mean(lengths)), 2), "items_never_in_histories": int((self.item_counts() == 0).sum())}


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(f"{path} is missing")
    return path.read_text(encoding="utf-8").splitlines()


def load_amazon_games(directory: Path) -> Interactions:
    """RecBole-style atomic files: items.tsv (item_id, title) and sequences.tsv (user, history, next
    item). The next item of sequences.tsv is the validation target."""
    items_lines = _read_lines(directory / "items.tsv")
    item_ids, titles = [], []
    for n, line in enumerate(items_lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{directory / 'items.tsv'}:{n}: expected item_id<TAB>title")
        item_ids.append(parts[0])
        titles.append(parts[1].strip())
    row = {item: i for i, item in enumerate(item_ids)}
    histories, targets = [], []
    for n, line in enumerate(_read_lines(directory / "sequences.tsv")[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(f"{directory / 'sequences.tsv'}:{n}: expected user<TAB>history<TAB>next item")
        try:
            histories.append([row[i] for i in parts[1].split()])
            targets.append(row[parts[2].strip()])
        except KeyError as exc:
            raise DataError(f"{directory / 'sequences.tsv'}:{n}: item {exc.args[0]} is not in items.tsv") from None
    return Interactions("amazon_games", item_ids, titles, histories, targets, source=str(directory))


def load_amazon_beauty(directory: Path) -> Interactions:
    """Beauty.txt: `user item1 item2 ...` in time order; the last item is the target, ids only."""
    sequences: list[list[str]] = []
    for n, line in enumerate(_read_lines(directory / "Beauty.txt"), start=1):
        parts = line.split()
        if len(parts) < 3:
            raise DataError(f"{directory / 'Beauty.txt'}:{n}: a user needs at least two items (history + target)")
        sequences.append(parts[1:])
    item_ids = sorted({i for s in sequences for i in s}, key=lambda s: (len(s), s))
    row = {item: i for i, item in enumerate(item_ids)}
    histories = [[row[i] for i in s[:-1]] for s in sequences]
    targets = [row[s[-1]] for s in sequences]
    return Interactions("amazon_beauty", item_ids, [""] * len(item_ids), histories, targets, source=str(directory))


@dataclass(frozen=True)
class SessionConfig:
    n_users: int = 12_000
    min_length: int = 4
    max_length: int = 30
    seed: int = 7
    repeat: float = 0.08  # buy again something bought before (consumables, gifts)
    complement: float = 0.25  # the next item goes with the last one (laptop -> laptop bag)
    same_line: float = 0.2  # another variant of the last item's model line (colour, size)
    brand_loyalty: float = 0.6  # within a favourite category, pick the favourite brand


def generate_sessions(products, cfg: SessionConfig = SessionConfig()) -> Interactions:
    """Purchase sequences for the synthetic shop: each user has favourite categories and a favourite
    brand in each; a next purchase repeats, complements or varies the last one, or is drawn from the
    favourites by popularity. Consistent with the catalog the search side serves."""
    from shopsearch.data.synthetic_catalog import COMPLEMENTS

    rng = random.Random(cfg.seed)
    by_category: dict[str, list[int]] = defaultdict(list)
    by_brand: dict[tuple[str, str], list[int]] = defaultdict(list)
    by_type: dict[str, list[int]] = defaultdict(list)
    by_line: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, p in enumerate(products):
        by_category[p.category].append(i)
        by_brand[(p.category, p.brand)].append(i)
        by_type[p.product_type].append(i)
        by_line[(p.brand, p.attributes.get("line", ""))].append(i)
    complements: dict[str, list[str]] = defaultdict(list)
    for a, b in COMPLEMENTS:
        complements[a].append(b)
        complements[b].append(a)
    popularity = [p.popularity or 1.0 for p in products]
    categories = sorted(by_category)

    def popular(pool: list[int]) -> int:
        return rng.choices(pool, weights=[popularity[i] for i in pool])[0]

    histories, targets = [], []
    for _ in range(cfg.n_users):
        favourites = rng.sample(categories, rng.randint(1, 3))
        brand = {c: rng.choice(sorted({products[i].brand for i in by_category[c]})) for c in favourites}
        length = rng.randint(cfg.min_length, cfg.max_length) + 1  # + the held-out target
        sequence: list[int] = []
        while len(sequence) < length:
            last = products[sequence[-1]] if sequence else None
            draw = rng.random()
            if last is not None and draw < cfg.repeat:
                item = rng.choice(sequence)
            elif last is not None and draw < cfg.repeat + cfg.complement and complements.get(last.product_type):
                item = popular(by_type[rng.choice(complements[last.product_type])])
            elif last is not None and draw < cfg.repeat + cfg.complement + cfg.same_line:
                item = rng.choice(by_line[(last.brand, last.attributes.get("line", ""))])
            else:
                category = rng.choice(favourites)
                pool = by_brand[(category, brand[category])] if rng.random() < cfg.brand_loyalty else by_category[category]
                item = popular(pool)
            sequence.append(item)
        histories.append(sequence[:-1])
        targets.append(sequence[-1])
    return Interactions("synthetic", [p.product_id for p in products], [p.title for p in products], histories, targets,
                        source=f"generated: {cfg}")


def load_interactions(name: str, data_dir: str | Path | None = None, **options) -> Interactions:
    """synthetic: sessions over the generated shop (options: n_products for the shop, any
    SessionConfig field for the sessions); amazon_games / amazon_beauty: read from data_dir."""
    if name == "synthetic":
        from shopsearch.data.synthetic import SyntheticShopConfig, generate_shop

        shop = {k: options.pop(k) for k in ("n_products",) if k in options}
        try:
            sessions = SessionConfig(**options)
        except TypeError as exc:
            raise DataError(f"synthetic sessions: {exc}") from None
        return generate_sessions(generate_shop(SyntheticShopConfig(**shop)).products, sessions)
    if options:
        raise DataError(f"recommendation dataset '{name}' takes no options, got {sorted(options)}")
    if name not in REC_DATASETS:
        raise DataError(f"unknown recommendation dataset '{name}'; choose one of {', '.join(REC_DATASETS)}")
    if data_dir is None:
        raise DataError(f"recommendation dataset '{name}' needs a data directory (DATA_DIR=...)")
    path = Path(data_dir)
    if not path.is_dir():
        raise DataError(f"recommendation dataset '{name}': {path} is not a directory")
    return load_amazon_games(path) if name == "amazon_games" else load_amazon_beauty(path)
