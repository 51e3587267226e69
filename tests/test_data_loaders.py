import csv
import json

import pytest

from shopsearch.data import load_dataset
from shopsearch.data.homedepot import relevance_to_gain
from shopsearch.data.schema import write_jsonl_dataset
from shopsearch.errors import DataError

from .conftest import shared_dataset_dir


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def homedepot_dir(tmp_path):
    _write_csv(tmp_path / "products.csv", ["product_uid", "product_title"],
               [["100001", "Simpson Strong-Tie 12-Gauge Angle"], ["100002", "BEHR Premium DeckOver 1-gal."], ["100003", "Café Table – Walnut"]])
    _write_csv(tmp_path / "judgments_train.csv", ["query", "product_uid", "relevance"],
               [["angle bracket", "100001", "3"], ["angle bracket", "100002", "1"], ["deck over", "100002", "2.33"]])
    _write_csv(tmp_path / "judgments_dev.csv", ["query", "product_uid", "relevance"], [["cafe table", "100003", "2.67"]])
    return tmp_path


def test_homedepot_loader_reads_products_queries_and_graded_judgments(homedepot_dir):
    ds = load_dataset("homedepot", homedepot_dir)
    assert [p.product_id for p in ds.products] == ["100001", "100002", "100003"]
    assert ds.products[2].title == "Café Table – Walnut"
    train_q, train_rels = ds.split("train")
    assert sorted(train_q.values()) == ["angle bracket", "deck over"]
    by_text = {train_q[q]: r for q, r in train_rels.items()}
    assert by_text["angle bracket"] == {"100001": 6, "100002": 0}
    assert by_text["deck over"] == {"100002": 4}
    assert {(q, p) for q, p in ds.positive_pairs("train")} == {("angle bracket", "100001"), ("deck over", "100002")}


def test_relevance_to_gain_keeps_every_third_step():
    assert [relevance_to_gain(r) for r in (1, 1.33, 1.67, 2, 2.33, 2.67, 3)] == [0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(DataError, match="outside 1..3"):
        relevance_to_gain(3.5)


def test_homedepot_loader_names_the_file_and_column_when_a_column_is_missing(tmp_path):
    _write_csv(tmp_path / "products.csv", ["product_uid", "name"], [["1", "x"]])
    with pytest.raises(DataError, match=r"products.csv: missing columns \['product_title'\]"):
        load_dataset("homedepot", tmp_path)


def test_homedepot_loader_rejects_judgments_of_unknown_products(homedepot_dir):
    _write_csv(homedepot_dir / "judgments_dev.csv", ["query", "product_uid", "relevance"], [["x", "999", "2"]])
    with pytest.raises(DataError, match="unknown products"):
        load_dataset("homedepot", homedepot_dir)


def test_jsonl_format_round_trips_a_dataset(tiny_dataset, tmp_path):
    write_jsonl_dataset(tiny_dataset, tmp_path / "ds")
    again = load_dataset("jsonl", tmp_path / "ds")
    assert again.fingerprint() == tiny_dataset.fingerprint()
    assert again.relevant_min_gain == tiny_dataset.relevant_min_gain


@pytest.mark.shared_data
def test_homedepot_loader_reads_the_real_shared_data():
    ds = load_dataset("homedepot", shared_dataset_dir("homedepot"))
    assert len(ds.products) == 54_667
    assert sum(len(j) for j in ds.qrels["train"].values()) == 51_295
    assert sum(len(j) for j in ds.qrels["dev"].values()) == 7_193
    assert not set(ds.queries["train"].values()) & set(ds.queries["dev"].values())


def _write_esci(directory, rows, products):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), directory / "shopping_queries_dataset_examples.parquet")
    with open(directory / "sample-products.jsonl", "w", encoding="utf-8") as f:
        for pid, title in products.items():
            f.write(json.dumps({"put": f"id:commerce:product::{pid}", "fields": {"id": pid, "title": title, "brand": "Acme"}}) + "\n")


def _esci_row(qid, query, pid, label, split="train", locale="us", small=1):
    return {"query_id": qid, "query": query, "product_id": pid, "product_locale": locale, "esci_label": label,
            "small_version": small, "split": split}


def test_esci_loader_maps_labels_to_gains_and_keeps_locale_and_small_version(tmp_path):
    rows = [_esci_row(1, "red kettle", "A", "E"), _esci_row(1, "red kettle", "B", "S"), _esci_row(1, "red kettle", "C", "I"),
            _esci_row(2, "kettle descaler", "B", "C", split="test"), _esci_row(3, "wasserkocher", "A", "E", locale="de"),
            _esci_row(4, "blue kettle", "A", "E", small=0), _esci_row(5, "kettle", "MISSING", "E", split="test")]
    _write_esci(tmp_path, rows, {"A": "Red Kettle 1.7 L", "B": "Steel Kettle", "C": "Kettle Descaler"})
    ds = load_dataset("esci", tmp_path)
    all_qrels = {q: r for split in ds.qrels.values() for q, r in split.items()}
    assert all_qrels["esci-1"] == {"A": 3, "B": 2, "C": 0}
    assert ds.qrels["test"]["esci-2"] == {"B": 1}
    assert "esci-3" not in all_qrels and "esci-4" not in all_qrels and "esci-5" not in all_qrels
    assert ds.relevant_min_gain == 2 and ds.products[0].brand == "Acme"
    assert "1 judgments of products not in the catalog skipped" in ds.source


def test_esci_loader_refuses_unknown_labels_naming_the_row(tmp_path):
    _write_esci(tmp_path, [_esci_row(1, "kettle", "A", "X")], {"A": "Kettle"})
    with pytest.raises(DataError, match="row 1: esci_label 'X'"):
        load_dataset("esci", tmp_path)


def test_esci_loader_reads_the_shared_fixture():
    ds = load_dataset("esci", shared_dataset_dir("esci_fixture"))
    judged = [r for split in ds.qrels.values() for r in split.values()]
    assert len(judged) == 1 and len(judged[0]) == 16 and set(judged[0].values()) <= {0, 1, 2, 3}
    assert len(ds.products) == 16 and all(p.title for p in ds.products)


def test_holdout_moves_a_fixed_share_of_train_queries_to_its_own_split():
    ds = load_dataset("synthetic", n_products=400, n_queries=300, seed=3)
    held = ds.with_holdout(0.2)
    train, rerank = set(held.queries["train"]), set(held.queries["rerank"])
    assert not train & rerank and train | rerank == set(ds.queries["train"])
    assert 0.1 < len(rerank) / len(ds.queries["train"]) < 0.3
    assert held.queries["dev"] == ds.queries["dev"] and set(held.qrels["rerank"]) == rerank
    assert ds.with_holdout(0.2).queries["rerank"] == held.queries["rerank"]  # deterministic
    with pytest.raises(DataError, match="holdout fraction"):
        ds.with_holdout(1.0)
