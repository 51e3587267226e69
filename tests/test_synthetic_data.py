import re
from collections import Counter

import pytest

from shopsearch.data import load_dataset
from shopsearch.data.synthetic import GAIN_NAMES, SyntheticShopConfig, _matches, generate_shop
from shopsearch.data.synthetic_catalog import CATEGORIES


def test_generate_shop_is_identical_when_seed_is_the_same():
    a = generate_shop(SyntheticShopConfig(n_products=1500, n_queries=600, seed=5))
    b = generate_shop(SyntheticShopConfig(n_products=1500, n_queries=600, seed=5))
    c = generate_shop(SyntheticShopConfig(n_products=1500, n_queries=600, seed=6))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_default_shop_has_the_catalog_size_and_fields_a_real_shop_has(default_shop):
    products = default_shop.products
    assert len(products) == 20_000
    assert len({p.category for p in products}) >= 30 and len(CATEGORIES) >= 30
    assert all(p.brand and p.product_type and p.attributes and p.price > 0 for p in products)
    assert all(2.8 <= p.rating <= 5.0 and p.popularity >= 1.0 for p in products)
    kinds = Counter(k for p in products for k in p.attributes)
    assert {"colour", "size", "material"} <= set(kinds)


def test_default_shop_splits_are_disjoint_by_query_text(default_shop):
    texts = {split: set(q.values()) for split, q in default_shop.queries.items()}
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]
    assert len(texts["dev"]) > 500 and len(texts["test"]) > 500 and len(texts["train"]) > 8000


def test_default_shop_queries_contain_synonyms_typos_and_reordering(default_shop):
    queries = [q for split in default_shop.queries.values() for q in split.values()]
    vocabulary = {w for p in default_shop.products for w in re.findall(r"[a-z0-9]+", p.title.lower())}
    with_unknown_word = [q for q in queries if any(w not in vocabulary for w in re.findall(r"[a-z0-9]+", q))]
    # Unknown words come from synonyms ("couch" for "sofa") and typos; both must be common.
    assert len(with_unknown_word) > 0.15 * len(queries)
    assert any(q.startswith(("couch", "grey couch", "gray couch")) or " couch" in q for q in queries)


def test_default_shop_judgments_use_all_four_esci_grades(default_shop):
    grades = Counter(g for judged in default_shop.qrels["dev"].values() for g in judged.values())
    assert set(grades) == set(GAIN_NAMES)
    every_query_has_exact = all(any(g == 3 for g in j.values()) for j in default_shop.qrels["dev"].values())
    assert every_query_has_exact


def test_exact_judgments_meet_every_constraint_and_substitutes_miss_one(default_shop):
    by_id = {p.product_id: p for p in default_shop.products}
    checked = 0
    for qid, judged in list(default_shop.qrels["dev"].items())[:200]:
        exact = [by_id[p] for p, g in judged.items() if g == 3]
        subs = [by_id[p] for p, g in judged.items() if g == 2]
        types = {p.product_type for p in exact}
        assert len(types) == 1, qid
        assert all(p.product_type in types for p in subs)
        complements = [by_id[p] for p, g in judged.items() if g == 1]
        assert all(p.product_type not in types for p in complements)
        checked += 1
    assert checked == 200
    assert _matches(default_shop.products[0], {"type": default_shop.products[0].product_type,
                                                "brand": default_shop.products[0].brand}) == 1


def test_load_dataset_rejects_unknown_names_with_the_choices():
    from shopsearch.errors import DataError

    with pytest.raises(DataError, match="synthetic, homedepot, esci, jsonl"):
        load_dataset("nope")
    with pytest.raises(DataError, match="DATA_DIR"):
        load_dataset("homedepot")
