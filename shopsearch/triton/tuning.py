"""Per-model serving settings (instances, dynamic batching) and the repository variants built from them.

`make tune` measures candidate settings and writes a `Tuning` file; `make build-repo` applies it
to the configs it generates. Variants of an already built repository (for tuning trials and the
batching-off comparison of `make bench`) share its artifact files through hard links and only
get new config.pbtxt files, rewritten through Triton's protobuf.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from shopsearch.errors import ConfigError
from shopsearch.triton.model_config import DynamicBatching, ModelConfigType
from shopsearch.triton.repository import CONFIG_FILE, read_config, write_config

TUNED_MODELS = ("tokenizer", "embedder", "ranker", "postprocess")
# Models that read raw client bytes execute one request at a time (see build.search_configs.tokenizer_config):
# tuning may change their instance count, never their batching.
REQUEST_ISOLATED = ("tokenizer", "item_lookup")


@dataclass(frozen=True)
class ModelSettings:
    instance_count: int = 1
    max_queue_delay_us: int = 1000  # how long a request may wait for others to batch with
    preferred_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.instance_count < 1:
            raise ConfigError("tuning", "instance_count", f"must be >= 1, got {self.instance_count}")
        if self.max_queue_delay_us < 0:
            raise ConfigError("tuning", "max_queue_delay_us", f"must be >= 0, got {self.max_queue_delay_us}")
        if any(b < 1 for b in self.preferred_batch_sizes):
            raise ConfigError("tuning", "preferred_batch_sizes", f"must be >= 1, got {list(self.preferred_batch_sizes)}")

    @property
    def batching(self) -> DynamicBatching:
        return DynamicBatching(self.preferred_batch_sizes, self.max_queue_delay_us)

    def label(self) -> str:
        preferred = ",".join(map(str, self.preferred_batch_sizes)) or "-"
        return f"instances={self.instance_count} delay_us={self.max_queue_delay_us} preferred={preferred}"

    @classmethod
    def from_config(cls, config: pb.ModelConfig) -> "ModelSettings":
        count = sum(g.count or 1 for g in config.instance_group) or 1
        batching = config.dynamic_batching
        return cls(count, batching.max_queue_delay_microseconds, tuple(batching.preferred_batch_size))


@dataclass(frozen=True)
class Tuning:
    """Settings per model; models not named keep the defaults. `measured` records how they were chosen."""

    models: dict[str, ModelSettings] = field(default_factory=dict)
    measured: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(TUNED_MODELS))
        if unknown:
            raise ConfigError("tuning", "models", f"unknown models {unknown}; tunable: {list(TUNED_MODELS)}")

    def settings(self, model: str) -> ModelSettings:
        return self.models.get(model, ModelSettings())

    def apply(self, config: ModelConfigType) -> ModelConfigType:
        """The typed config with this tuning's instances and batching (batching stays off where it
        was); a model the tuning does not name keeps the config it was built with."""
        if config.name not in self.models:
            return config
        settings = self.models[config.name]
        batching = config.dynamic_batching
        if config.dynamic_batching is not None and config.name not in REQUEST_ISOLATED:
            # Tuning owns the batching delay and sizes; the overload queue policy stays as built.
            batching = dataclasses.replace(config.dynamic_batching, preferred_batch_sizes=settings.preferred_batch_sizes,
                                           max_queue_delay_us=settings.max_queue_delay_us)
        return dataclasses.replace(config, instance_count=settings.instance_count, dynamic_batching=batching)

    def to_json(self) -> dict:
        return {"models": {m: dataclasses.asdict(s) for m, s in sorted(self.models.items())}, "measured": self.measured}

    @classmethod
    def from_json(cls, data: dict, source: str = "tuning") -> "Tuning":
        models = {}
        for model, values in data.get("models", {}).items():
            try:
                models[model] = ModelSettings(
                    int(values.get("instance_count", 1)), int(values.get("max_queue_delay_us", 1000)),
                    tuple(int(b) for b in values.get("preferred_batch_sizes", ())),
                )
            except (TypeError, ValueError, AttributeError) as exc:
                raise ConfigError(source, f"models.{model}", f"unreadable settings {values!r}: {exc}") from None
        return cls(models, data.get("measured", {}))

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> "Tuning":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(str(path), "tuning file", f"cannot read: {exc}") from None
        return cls.from_json(data, str(path))


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a repository without copying its artifacts: hard links where the file system allows
    (configs are copied: each variant rewrites its own)."""

    def link(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns(CONFIG_FILE, "__pycache__"))
    for config in src.glob(f"*/{CONFIG_FILE}"):
        shutil.copy2(config, dst / config.parent.name / CONFIG_FILE)


def edited_copy(src: Path, dst: Path, edit: Callable[[pb.ModelConfig], None], models: list[str] | None = None) -> Path:
    """`src` as a new repository `dst` (artifacts hard-linked) whose configs (all, or `models`)
    went through `edit`; `dst` is replaced when it exists."""
    if dst.exists():
        shutil.rmtree(dst)
    _link_tree(src, dst)
    for model in models if models is not None else [p.parent.name for p in sorted(dst.glob(f"*/{CONFIG_FILE}"))]:
        config = read_config(dst / model)
        edit(config)
        write_config(config, dst / model)
    return dst


def variant_repository(src: Path, dst: Path, tuning: Tuning, batch_isolated: bool = False) -> Path:
    """`src` with the tuned models' instance counts and dynamic batching replaced. The batching of
    REQUEST_ISOLATED models stays as built unless `batch_isolated`: only for measuring what the
    isolation costs or guards against; such a repository lets one malformed string fail its batch."""
    def edit(config: pb.ModelConfig) -> None:
        settings = tuning.models[config.name]
        for group in config.instance_group:
            group.count = settings.instance_count
        if config.HasField("dynamic_batching") and (batch_isolated or config.name not in REQUEST_ISOLATED):
            config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
            del config.dynamic_batching.preferred_batch_size[:]
            config.dynamic_batching.preferred_batch_size.extend(settings.preferred_batch_sizes)

    return edited_copy(src, dst, edit, sorted(tuning.models))


def unbatched_repository(src: Path, dst: Path) -> Path:
    """`src` with batching off everywhere: max_batch_size 1 and no dynamic batcher, so every
    model executes one request at a time (instance counts unchanged)."""
    def edit(config: pb.ModelConfig) -> None:
        config.max_batch_size = 1
        config.ClearField("dynamic_batching")

    return edited_copy(src, dst, edit)


def current_tuning(repo: Path) -> Tuning:
    """The settings a built repository runs with now."""
    return Tuning({m: ModelSettings.from_config(read_config(repo / m)) for m in TUNED_MODELS if (repo / m).is_dir()})
