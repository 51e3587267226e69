"""The one function that lays out a Triton model repository on disk.

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<version>/model.py + artifacts      (Python backend)
    <repo>/<model>/<version>/model.onnx | model.plan   (native ONNX Runtime / TensorRT backends)
    <repo>/<model>/<version>/manifest.json             (provenance of this model version)
    <repo>/<model>/<version>/params.json               (Python backend: parameters bound to these artifacts)
    <repo>/<model>/<version>/                          (ensemble: only its manifest)
    <repo>/build_manifest.json                         (how this repository was built)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from shopsearch.errors import ArtifactError
from shopsearch.serving.model_config import EnsembleConfig, ModelConfigType, PythonModelConfig, write_config

# The committed Python-backend adapters live where Triton expects them in the default repository.
ADAPTER_SOURCES = Path(__file__).resolve().parents[2] / "model_repository"
BUILD_MANIFEST = "build_manifest.json"
DEPLOY_STATE = "deployments.json"  # generations published by `make deploy` (shopsearch.serving.deploy)


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
VERSION_PARAMS = "params.json"
# Parameters that describe how to run a version on this machine, not what its artifacts are;
# config.pbtxt keeps them (tuning rewrites them), every other parameter travels with the version.
DEPLOYMENT_PARAMS = frozenset({"intra_op_threads"})


def version_params(config: PythonModelConfig) -> dict[str, str]:
    """The parameters bound to one version's artifacts (embedder id, tensor names, sizes). Stored in
    the version directory, they let two generations share one config.pbtxt while a deploy swaps them."""
    return {k: v for k, v in config.parameters if k not in DEPLOYMENT_PARAMS}


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
        # A fresh build starts the generation history again: earlier deploys' versions go.
        for stale in model_dir.glob("*"):
            if stale.is_dir() and stale.name.isdigit() and stale != version_dir:
                shutil.rmtree(stale)
        version_dir.mkdir(parents=True)
        for target, source in entry.files.items():
            if not Path(source).exists():
                raise ArtifactError(f"{name}: artifact {source} is missing")
            (version_dir / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, version_dir / target)
        if adapter is not None:
            (version_dir / "model.py").write_text(adapter)
            (version_dir / VERSION_PARAMS).write_text(json.dumps(version_params(entry.config), indent=2, sort_keys=True))
        version_manifest = {"model": name, "version": entry.version, **entry.manifest}
        (version_dir / MODEL_MANIFEST).write_text(json.dumps(version_manifest, indent=2, sort_keys=True))
        # Pin the policy to the version laid out: a later generation copied in beside it (deploy)
        # must never be picked up by Triton's default "latest" policy before it is activated.
        write_config(dataclasses.replace(entry.config, versions=(entry.version,)), model_dir)
    (out / BUILD_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (out / DEPLOY_STATE).unlink(missing_ok=True)  # history of the repository this build replaces
    return out


def repository_size_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())


def read_version_params(version_dir: Path) -> dict[str, str]:
    path = Path(version_dir) / VERSION_PARAMS
    if not path.exists():
        return {}
    try:
        params = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise ArtifactError(f"{path}: must map parameter names to strings")
    return params
