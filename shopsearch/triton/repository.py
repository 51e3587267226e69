"""The one module that writes a Triton model repository on disk, and reads its layout back.

    <repo>/<model>/config.pbtxt
    <repo>/<model>/<version>/model.py + artifacts      (Python backend; model.py is the step's adapter)
    <repo>/<model>/<version>/model.onnx | model.plan   (native ONNX Runtime / TensorRT backends)
    <repo>/<model>/<version>/manifest.json             (provenance of this model version)
    <repo>/<model>/<version>/params.json               (Python backend: parameters bound to these artifacts)
    <repo>/<model>/<version>/                          (ensemble: only its manifest)
    <repo>/build_manifest.json                         (how this repository was built; `models` lists what it holds)

Every config.pbtxt is written by `write_config` (the build, deploys and tuning variants alike) and
every numbered version directory is found by `version_numbers`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from shopsearch.errors import ArtifactError, ConfigError
from shopsearch.triton.model_config import EnsembleConfig, ModelConfigType, PythonModelConfig

CONFIG_FILE = "config.pbtxt"
BUILD_MANIFEST = "build_manifest.json"
DEPLOY_STATE = "deployments.json"  # generations published by `make deploy` (shopsearch.ops.deploy)
RESPONSE_CACHE = "response_cache"  # build manifest key: {"bytes": size, "models": [...]} or null
MODEL_MANIFEST = "manifest.json"
VERSION_PARAMS = "params.json"
PYTHON_MODEL_FILE = "model.py"
# Parameters that describe how to run a version on this machine, not what its artifacts are;
# config.pbtxt keeps them (tuning rewrites them), every other parameter travels with the version.
DEPLOYMENT_PARAMS = frozenset({"intra_op_threads"})


@dataclass(frozen=True)
class ModelVersion:
    config: ModelConfigType | EnsembleConfig
    files: dict[str, Path] = field(default_factory=dict)  # name inside the version dir -> source file
    version: int = 1
    manifest: dict = field(default_factory=dict)  # provenance written beside the artifacts
    adapter: Path | None = None  # Python backend: the model.py to copy (shopsearch/serving/adapters/)

    def __post_init__(self) -> None:
        if isinstance(self.config, PythonModelConfig) and self.adapter is None:
            raise ConfigError(self.config.name, PYTHON_MODEL_FILE, "a Python-backend model needs its adapter")


def write_config(config: ModelConfigType | EnsembleConfig | pb.ModelConfig, model_dir: Path) -> Path:
    """config.pbtxt through Triton's protobuf and text_format, written atomically (temp file +
    rename): a server loading the model meanwhile reads the old file or the new, never half of one."""
    proto = config if isinstance(config, pb.ModelConfig) else config.to_proto()
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CONFIG_FILE
    atomic_write_text(path, text_format.MessageToString(proto))
    return path


def read_config(path: Path) -> pb.ModelConfig:
    """A model directory's (or a config file's) config.pbtxt as a ModelConfig message."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(str(path), CONFIG_FILE, str(exc)) from exc


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def version_numbers(model_dir: Path) -> list[int]:
    """The numbered version directories of a model, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def version_params(config: PythonModelConfig) -> dict[str, str]:
    """The parameters bound to one version's artifacts (embedder id, tensor names, sizes). Stored in
    the version directory, they let two generations share one config.pbtxt while a deploy swaps them."""
    return {k: v for k, v in config.parameters if k not in DEPLOYMENT_PARAMS}


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


def read_build_manifest(repo: Path) -> dict:
    path = Path(repo) / BUILD_MANIFEST
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def response_cache_bytes(repo: Path) -> int:
    """The local response cache the build asked the server for (0: none)."""
    return int((read_build_manifest(repo).get(RESPONSE_CACHE) or {}).get("bytes", 0))


def built_models(repo: Path) -> list[str]:
    """The models a build laid out in `repo`, from its manifest: what a server must load."""
    models = read_build_manifest(repo).get("models")
    if models is None:
        raise ArtifactError(f"{repo}: {BUILD_MANIFEST} lists no models (built before the list was recorded): "
                            "run make build-repo again")
    return list(models)


def layout_repository(out: Path, models: list[ModelVersion], manifest: dict) -> Path:
    """Lay out `models` in `out`, which afterwards holds exactly these models of ours: a model an
    earlier build laid out there and this one does not is removed (see _remove_models_not_built)."""
    out.mkdir(parents=True, exist_ok=True)
    names = [entry.config.name for entry in models]
    if len(set(names)) != len(names):
        raise ConfigError("repository", "models", f"model names repeat: {names}")
    _remove_models_not_built(out, set(names))
    for entry in models:
        _layout_model(out, entry)
    atomic_write_text(out / BUILD_MANIFEST, json.dumps({**manifest, "models": names}, indent=2, sort_keys=True))
    (out / DEPLOY_STATE).unlink(missing_ok=True)  # history of the repository this build replaces
    return out


def _remove_models_not_built(out: Path, names: set[str]) -> None:
    """Models an earlier build laid out in `out` (listed in its manifest, or carrying the version
    manifest only this writer writes) that this build does not: left in place, a server started on
    the directory would load stale models beside it. Anything else in `out` is not ours and stays."""
    previous = set(read_build_manifest(out).get("models", []))
    for model_dir in sorted(p for p in out.iterdir() if p.is_dir() and p.name not in names):
        if model_dir.name in previous or any((model_dir / str(v) / MODEL_MANIFEST).exists() for v in version_numbers(model_dir)):
            shutil.rmtree(model_dir)


def _layout_model(out: Path, entry: ModelVersion) -> None:
    name = entry.config.name
    model_dir = out / name
    version_dir = model_dir / str(entry.version)
    # A fresh build starts the generation history again: earlier deploys' versions go too.
    for stale in version_numbers(model_dir):
        shutil.rmtree(model_dir / str(stale))
    version_dir.mkdir(parents=True)
    for target, source in entry.files.items():
        if not Path(source).exists():
            raise ArtifactError(f"{name}: artifact {source} is missing")
        (version_dir / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, version_dir / target)
    if isinstance(entry.config, PythonModelConfig):
        if not entry.adapter.exists():
            raise ArtifactError(f"{name}: no Python-backend adapter at {entry.adapter}")
        shutil.copy2(entry.adapter, version_dir / PYTHON_MODEL_FILE)
        (version_dir / VERSION_PARAMS).write_text(json.dumps(version_params(entry.config), indent=2, sort_keys=True))
    version_manifest = {"model": name, "version": entry.version, **entry.manifest}
    (version_dir / MODEL_MANIFEST).write_text(json.dumps(version_manifest, indent=2, sort_keys=True))
    # Pin the policy to the version laid out: a later generation copied in beside it (deploy)
    # must never be picked up by Triton's default "latest" policy before it is activated.
    write_config(dataclasses.replace(entry.config, versions=(entry.version,)), model_dir)


def repository_size_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
