"""A built model as the repository writer takes it: config, files, provenance and, for a
Python-backend model, the adapter its model.py is copied from."""

from __future__ import annotations

from pathlib import Path

from shopsearch.serving.adapters import adapter_source
from shopsearch.triton.model_config import EnsembleConfig, ModelConfigType, PythonModelConfig
from shopsearch.triton.repository import ModelVersion


def model_version(config: ModelConfigType | EnsembleConfig, files: dict[str, Path], manifest: dict) -> ModelVersion:
    """Version 1 of a freshly built model (deploys add later versions beside it)."""
    adapter = adapter_source(config.name) if isinstance(config, PythonModelConfig) else None
    return ModelVersion(config, files, manifest=manifest, adapter=adapter)
