"""Training recipes (training/recipes/*.toml): which data, which hyper-parameters.

Search recipes (`<data>.toml`: [data], [train], [rerank], [distill], [student], [index], [serving]) and recommender recipes
(`rec_<data>.toml`: [data] generator options, [train]).
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Triton 24.xx containers): the same parser as a package
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path

from shopsearch.core.ann import IndexSpec
from shopsearch.core.reranker import RerankerConfig
from shopsearch.data import Dataset, load_dataset
from shopsearch.errors import ConfigError
from shopsearch.train.biencoder import TrainConfig
from shopsearch.train.recommender import RecTrainConfig

RECIPE_DIR = Path(__file__).resolve().parents[2] / "training" / "recipes"
SERVING_SETTINGS = {"response_cache_mb"}


@dataclass(frozen=True)
class Recipe:
    path: Path
    data_name: str
    data_options: dict = field(default_factory=dict)  # generator options (synthetic only)
    train: dict = field(default_factory=dict)
    rerank: dict = field(default_factory=dict)
    distill: dict | None = None  # [distill]: stage 1b (read by shopsearch.compress.distillation.distill_config)
    student: dict | None = None  # [student]: a pruned, distilled student (shopsearch.compress.student.student_config)
    index: dict = field(default_factory=dict)  # [index]: how the served ranker searches the catalog (IndexSpec)
    serving: dict = field(default_factory=dict)  # [serving]: response_cache_mb (BuildOptions)

    def serving_options(self) -> dict:
        """[serving]: what the build sets on the served repository (BuildOptions fields)."""
        unknown = sorted(set(self.serving) - SERVING_SETTINGS)
        if unknown:
            raise ConfigError(str(self.path), "[serving]", f"unknown settings {unknown}; known: {sorted(SERVING_SETTINGS)}")
        return dict(self.serving)

    def index_spec(self, kind: str | None = None) -> IndexSpec:
        """The recipe's [index], its kind replaced by `kind` (INDEX= on the command line) when given."""
        return IndexSpec.from_mapping({**self.index, **({"kind": kind} if kind else {})}, f"{self.path} [index]")

    def train_config(self, **overrides) -> TrainConfig:
        try:
            return TrainConfig(**{**self.train, **{k: v for k, v in overrides.items() if v is not None}})
        except TypeError as exc:
            raise ConfigError(str(self.path), "[train]", str(exc)) from None

    def reranker_config(self) -> RerankerConfig:
        try:
            return RerankerConfig(**self.rerank)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(self.path), "[rerank]", str(exc)) from None

    def dataset(self, data_name: str | None = None, data_dir: str | None = None) -> Dataset:
        """The recipe's dataset, or `data_name` from `data_dir` when given (the recipe's generator
        options only apply to its own dataset)."""
        if data_name and data_name != self.data_name:
            return load_dataset(data_name, data_dir)
        return load_dataset(self.data_name, data_dir, **self.data_options)


def load_recipe(path: Path) -> Recipe:
    if not path.exists():
        raise ConfigError(str(path), "recipe", "file not found")
    raw = tomllib.loads(path.read_text())
    data = dict(raw.get("data", {}))
    if "name" not in data:
        raise ConfigError(str(path), "[data].name", "is required")
    name = data.pop("name")
    return Recipe(path=path, data_name=name, data_options=data, train=dict(raw.get("train", {})),
                  rerank=dict(raw.get("rerank", {})), distill=dict(raw["distill"]) if "distill" in raw else None,
                  student=dict(raw["student"]) if "student" in raw else None, index=dict(raw.get("index", {})),
                  serving=dict(raw.get("serving", {})))


def load_rec_data_options(path: Path) -> dict:
    """A recommender recipe's [data] table: generator options for the synthetic shop's sessions."""
    if not path.exists():
        raise ConfigError(str(path), "recipe", "file not found")
    return dict(tomllib.loads(path.read_text()).get("data", {}))


def load_rec_config(path: Path, **overrides) -> RecTrainConfig:
    """A recommender recipe's [train] table, with command-line overrides (None: keep the recipe's)."""
    if not path.exists():
        raise ConfigError(str(path), "recipe", "file not found")
    raw = tomllib.loads(path.read_text()).get("train", {})
    try:
        return RecTrainConfig(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})
    except TypeError as exc:
        raise ConfigError(str(path), "[train]", str(exc)) from None
