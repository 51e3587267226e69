"""One entry point for every dataset: `load_dataset(name, data_dir)`."""

from __future__ import annotations

from pathlib import Path

from shopsearch.data.esci import load_esci
from shopsearch.data.homedepot import load_homedepot
from shopsearch.data.schema import Dataset, read_jsonl_dataset
from shopsearch.data.synthetic import SyntheticShopConfig, generate_shop
from shopsearch.errors import DataError

DATASET_NAMES = ("synthetic", "homedepot", "esci", "jsonl")


def load_dataset(name: str, data_dir: str | Path | None = None, **options) -> Dataset:
    """Load a dataset by name.

    synthetic: generated in memory (options: n_products, n_queries, seed); data_dir is ignored.
    homedepot: the Home Depot CSVs in data_dir.
    esci:      Amazon Shopping Queries (ESCI) parquet judgments + products in data_dir (options: locale).
    jsonl:     the project's own format in data_dir (see `write_jsonl_dataset`).
    """
    if name == "synthetic":
        return generate_shop(SyntheticShopConfig(**options))
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(DATASET_NAMES)}")
    if data_dir is None:
        raise DataError(f"dataset '{name}' needs a data directory (DATA_DIR=...)")
    path = Path(data_dir)
    if not path.is_dir():
        raise DataError(f"dataset '{name}': {path} is not a directory")
    if name == "homedepot":
        return load_homedepot(path)
    if name == "esci":
        return load_esci(path, **options)
    return read_jsonl_dataset(path)
