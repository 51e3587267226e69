"""Versioned updates of a served repository: publish a new generation, roll back, under traffic.

A *generation* is one consistent set of versions: tokenizer, embedder, ranker (catalog index +
re-ranker) and postprocess (catalog titles) all carry the same Triton version number N, and the
`search` ensemble pins every step to N. Triton's version policies keep the serving and the
previous generation loaded side by side, so:

  publish: load the staged build in-process and answer a probe query (preflight)
           -> copy it in as version N (new directories, nothing loaded is touched)
           -> reload each composing model with versions {serving, N}   (old requests keep theirs)
           -> reload `search` pinned to N, version N                    (one atomic switch)
  rollback: reload `search` pinned to the previous generation, still loaded: no model load at all.

A request enters one ensemble config and stays on its pinned versions, so no response mixes one
generation's embedder with another's index. Triton's reload keeps the old model serving until the
new one is ready and fails without touching it, so a broken generation never replaces a working one.
Every file write is atomic (temp file + rename) and the ensemble config on disk is the one truth
of what serves: a deploy killed half-way leaves a repository that loads as before.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from shopsearch.core.provenance import utc_timestamp
from shopsearch.errors import DeployError, ShopSearchError
from shopsearch.ops.admin_key import ADMIN_HEADER
from shopsearch.triton.repository import (
    BUILD_MANIFEST, CONFIG_FILE, DEPLOY_STATE, atomic_write_text, read_config, version_numbers, write_config,
)

ENSEMBLE = "search"
KEEP_ON_DISK = 3  # generations whose files stay in the repository (the loaded two among them)


def composing_models(ensemble: pb.ModelConfig) -> list[str]:
    return [step.model_name for step in ensemble.ensemble_scheduling.step]


def serving_generation(repo: Path) -> int:
    """The generation the ensemble config pins: what Triton serves once it has loaded the config."""
    steps = read_config(Path(repo) / ENSEMBLE).ensemble_scheduling.step
    pinned = {step.model_version for step in steps}
    if len(pinned) != 1 or min(pinned) < 1:
        raise DeployError(f"{ENSEMBLE}: ensemble_scheduling.step.model_version must pin one generation, got {sorted(pinned)}")
    return pinned.pop()


def loaded_generations(repo: Path) -> list[int]:
    """Generations every composing model's version policy loads (rollback targets among them)."""
    repo = Path(repo)
    sets = []
    for model in composing_models(read_config(repo / ENSEMBLE)):
        config = read_config(repo / model)
        policy = list(config.version_policy.specific.versions) if config.version_policy.HasField("specific") else []
        sets.append(set(policy or version_numbers(repo / model)[-1:]))
    return sorted(set.intersection(*sets)) if sets else []


@dataclass
class DeployState:
    """History of the generations published into a repository (provenance, not the serving truth)."""

    generations: list[dict]

    @classmethod
    def load(cls, repo: Path) -> "DeployState":
        path = Path(repo) / DEPLOY_STATE
        if path.exists():
            return cls(json.loads(path.read_text())["generations"])
        manifest_path = Path(repo) / BUILD_MANIFEST
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        return cls([{"generation": 1, "published_at": manifest.get("built_at"), **_summary(manifest)}])

    def save(self, repo: Path) -> None:
        atomic_write_text(Path(repo) / DEPLOY_STATE, json.dumps({"generations": self.generations}, indent=2, sort_keys=True))

    def next_generation(self, repo: Path) -> int:
        on_disk = [v for m in composing_models(read_config(Path(repo) / ENSEMBLE)) for v in version_numbers(Path(repo) / m)]
        return max([g["generation"] for g in self.generations] + on_disk) + 1


def _summary(manifest: dict) -> dict:
    return {
        "embedder_id": manifest.get("embedder_id"),
        "index_checksum": manifest.get("index_checksum"),
        "catalog_fingerprint": manifest.get("catalog_fingerprint"),
        "products": manifest.get("catalog", {}).get("products"),
        "code_version": manifest.get("code_version"),
        "served_embedder": manifest.get("served_embedder"),
    }


class ModelControl:
    """Triton's model-repository API over HTTP, with the admin key the server restricts it to."""

    def __init__(self, url: str, admin_key: str | None, timeout_s: float = 300.0):
        import tritonclient.http as httpclient

        self.url = url
        self._headers = {ADMIN_HEADER: admin_key} if admin_key else {}
        self._client = httpclient.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)

    def load(self, model: str) -> None:
        try:
            self._client.load_model(model, headers=self._headers)
        except Exception as exc:  # tritonclient raises InferenceServerException with the server's reason
            raise DeployError(f"{model}: load failed on {self.url}: {exc}") from None

    def close(self) -> None:
        self._client.close()


def _check_compatible(repo: Path, staged: Path, model: str) -> None:
    """Two generations share one config.pbtxt, so their tensors must agree (parameters may differ:
    they live in each version's params.json)."""
    old, new = read_config(repo / model), read_config(staged / model)
    for field in ("input", "output"):
        before = [(t.name, t.data_type, list(t.dims)) for t in getattr(old, field)]
        after = [(t.name, t.data_type, list(t.dims)) for t in getattr(new, field)]
        if before != after:
            raise DeployError(f"{model}: {field}: the new generation's tensors {after} differ from the served {before}; "
                              "a change of interface needs a fresh repository (blue/green), not an in-place deploy")
    if old.backend != new.backend or old.platform != new.platform:
        raise DeployError(f"{model}: backend: {new.backend or new.platform} cannot replace {old.backend or old.platform} in place")


def _copy_version(staged_model: Path, repo_model: Path, generation: int) -> None:
    staged_versions = version_numbers(staged_model)
    if len(staged_versions) != 1:
        raise DeployError(f"{staged_model.name}: a staged build holds one version, found {staged_versions}")
    target = repo_model / str(generation)
    partial = repo_model / f".{generation}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(staged_model / str(staged_versions[0]), partial)
    os.replace(partial, target)  # the version directory appears whole or not at all


def _set_versions(config: pb.ModelConfig, versions: list[int]) -> None:
    config.ClearField("version_policy")
    config.version_policy.specific.versions.extend(sorted(set(versions)))


def activate(repo: Path, generation: int, control: ModelControl, ensemble_source: pb.ModelConfig | None = None,
             composing_sources: dict[str, pb.ModelConfig] | None = None, log=print) -> None:
    """Serve `generation`: make sure every composing model has it loaded (beside the one serving
    now), then switch the ensemble to it in one reload."""
    repo = Path(repo)
    ensemble = ensemble_source or read_config(repo / ENSEMBLE)
    current = serving_generation(repo)
    reloaded: list[tuple[str, str]] = []  # (model, its config before) to undo on failure
    for model in composing_models(ensemble):
        config = (composing_sources or {}).get(model) or read_config(repo / model)
        keep = sorted({current, generation})
        policy = list(config.version_policy.specific.versions) if config.version_policy.HasField("specific") else []
        if policy == keep and model not in (composing_sources or {}):
            continue  # already loaded with these versions: nothing to reload
        reloaded.append((model, (repo / model / CONFIG_FILE).read_text()))
        _set_versions(config, keep)
        write_config(config, repo / model)
        try:
            control.load(model)
        except DeployError:
            _undo(repo, reloaded, control, log)
            raise
        log(f"{model}: versions {keep} loaded")
    switched = pb.ModelConfig()
    switched.CopyFrom(ensemble)
    for step in switched.ensemble_scheduling.step:
        step.model_version = generation
    _set_versions(switched, [generation])
    reloaded.append((ENSEMBLE, (repo / ENSEMBLE / CONFIG_FILE).read_text()))
    write_config(switched, repo / ENSEMBLE)
    try:
        control.load(ENSEMBLE)
    except DeployError:
        _undo(repo, reloaded, control, log)
        raise
    log(f"{ENSEMBLE}: serving generation {generation} (was {current})")


def _undo(repo: Path, reloaded: list[tuple[str, str]], control: ModelControl, log) -> None:
    """Put back the configs changed so far and reload those models as they were. Triton never
    replaced the model that failed (a failed reload keeps the loaded one), but it lists the refused
    version as unavailable, which strict readiness counts; the others had loaded the new generation
    beside the serving one, which nothing routes to. Reloading each drops what the deploy added."""
    for model, text in reversed(reloaded):
        atomic_write_text(repo / model / CONFIG_FILE, text)
    for model, _ in reloaded:
        try:
            control.load(model)
        except DeployError as exc:  # the old versions stay loaded; the next deploy reloads it anyway
            log(f"{model}: could not reload its previous config ({exc})")


def publish(repo: Path, staged: Path, control: ModelControl, log=print) -> int:
    """Publish the build in `staged` (a repository laid out by build-repo) as the next generation
    of the served `repo` and switch traffic to it. Returns the new generation number."""
    repo, staged = Path(repo), Path(staged)
    staged_ensemble = read_config(staged / ENSEMBLE)
    models = composing_models(staged_ensemble)
    if models != composing_models(read_config(repo / ENSEMBLE)):
        raise DeployError(f"{ENSEMBLE}: steps {models} differ from the served ensemble's; deploy into a fresh repository")
    for model in models:
        _check_compatible(repo, staged, model)
    preflight(staged)
    state = DeployState.load(repo)
    generation = state.next_generation(repo)
    started = time.time()
    for model in [*models, ENSEMBLE]:
        _copy_version(staged / model, repo / model, generation)
    sources = {model: read_config(staged / model) for model in models}
    manifest = json.loads((staged / BUILD_MANIFEST).read_text()) if (staged / BUILD_MANIFEST).exists() else {}
    try:
        activate(repo, generation, control, staged_ensemble, sources, log=log)
    except DeployError:
        for model in [*models, ENSEMBLE]:  # nothing loads the refused generation: remove its files
            shutil.rmtree(repo / model / str(generation), ignore_errors=True)
        raise
    state.generations.append({"generation": generation, "published_at": utc_timestamp(),
                              "switch_seconds": round(time.time() - started, 2), **_summary(manifest)})
    state.save(repo)
    prune(repo, keep=KEEP_ON_DISK, log=log)
    return generation


def preflight(staged: Path, probe: str = "preflight probe query") -> None:
    """Load the staged generation in-process, exactly as the Python backend will, and answer one
    query. A broken generation stops here, before the server is touched: a version that fails to
    load in Triton stays listed as unavailable, and Triton's strict readiness then reports the
    whole server not ready (the served ensemble keeps answering, but probes would pull the replica)."""
    from shopsearch.serving.pipeline import InProcessEnsemble

    try:
        hits = InProcessEnsemble.from_repository(staged).search([probe])
    except (ShopSearchError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DeployError(f"preflight: the staged generation in {staged} does not load or answer: {exc}") from None
    if not hits or not hits[0]:
        raise DeployError(f"preflight: the staged generation in {staged} answers a query with no products")


def rollback(repo: Path, control: ModelControl, to: int | None = None, log=print) -> int:
    """Serve the previous generation again (or `to`). The previous one is still loaded, so this is
    one ensemble reload; an older one on disk is loaded first."""
    repo = Path(repo)
    current = serving_generation(repo)
    on_disk = set.intersection(*(set(version_numbers(repo / m)) for m in composing_models(read_config(repo / ENSEMBLE))))
    if to is None:
        older = sorted(v for v in on_disk if v < current)
        if not older:
            raise DeployError(f"{ENSEMBLE}: no generation before {current} is left in {repo} to roll back to")
        to = older[-1]
    if to not in on_disk or not (repo / ENSEMBLE / str(to)).is_dir():
        raise DeployError(f"{ENSEMBLE}: generation {to} is not in {repo} (on disk: {sorted(on_disk)})")
    if to == current:
        raise DeployError(f"{ENSEMBLE}: generation {to} is already serving")
    activate(repo, to, control, log=log)
    return to


def prune(repo: Path, keep: int = KEEP_ON_DISK, log=print) -> list[Path]:
    """Delete version directories of generations older than the newest `keep`, never a loaded one."""
    repo = Path(repo)
    protected = set(loaded_generations(repo)) | {serving_generation(repo)}
    removed = []
    for model in [*composing_models(read_config(repo / ENSEMBLE)), ENSEMBLE]:
        versions = version_numbers(repo / model)
        for version in versions[:-keep] if keep else versions:
            if version in protected:
                continue
            shutil.rmtree(repo / model / str(version))
            removed.append(repo / model / str(version))
    if removed:
        log(f"pruned {len(removed)} old version directories")
    return removed
