"""The one function that lays out a Triton model repository on disk.

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<version>/model.py + artifacts      (Python backend)
    <repo>/<model>/<version>/model.onnx | model.plan   (native ONNX Runtime / TensorRT backends)
    <repo>/<model>/<version>/manifest.json             (provenance of this model version)
    <repo>/<model>/<version>/                          (ensemble: only its manifest)
    <repo>/build_manifest.json                         (how this repository was built)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from shopsearch.errors import ArtifactError
from shopsearch.serving.model_config import EnsembleConfig, ModelConfigType, PythonModelConfig, write_config

# The committed Python-backend adapters live where Triton expects them in the default repository.
ADAPTER_SOURCES = Path(__file__).resolve().parents[2] / "model_repository"
BUILD_MANIFEST = "build_manifest.json"


@dataclass(frozen=True)
class ModelVersion:
    config: ModelConfigType | EnsembleConfig
    files: dict[str, Path] = field(default_factory=dict)  # name inside the version dir -> source file
    version: int = 1
    manifest: dict = field(default_factory=dict)  # provenance written beside the artifacts


def _adapter_source(model: str) -> str:
    path = ADAPTER_SOURCES / model / "1" / "model.py"
    if not path.exists():
        raise ArtifactError(f"{model}: no Python-backend adapter at {path}")
    return path.read_text()


MODEL_MANIFEST = "manifest.json"


def layout_repository(out: Path, models: list[ModelVersion], manifest: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for entry in models:
        name = entry.config.name
        model_dir = out / name
        version_dir = model_dir / str(entry.version)
        # Read the adapter before clearing: `out` may be the source tree itself.
        adapter = _adapter_source(name) if isinstance(entry.config, PythonModelConfig) else None
        if version_dir.exists():
            shutil.rmtree(version_dir)
        version_dir.mkdir(parents=True)
        for target, source in entry.files.items():
            if not Path(source).exists():
                raise ArtifactError(f"{name}: artifact {source} is missing")
            (version_dir / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, version_dir / target)
        if adapter is not None:
            (version_dir / "model.py").write_text(adapter)
        version_manifest = {"model": name, "version": entry.version, **entry.manifest}
        (version_dir / MODEL_MANIFEST).write_text(json.dumps(version_manifest, indent=2, sort_keys=True))
        write_config(entry.config, model_dir)
    (out / BUILD_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out


def repository_size_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
