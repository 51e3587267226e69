"""Datasets: a generated default shop, and loaders for real data on disk."""

from shopsearch.data.registry import DATASET_NAMES, load_dataset
from shopsearch.data.schema import Dataset, Product

__all__ = ["DATASET_NAMES", "Dataset", "Product", "load_dataset"]
