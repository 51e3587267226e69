import csv

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
