"""Ensembles declared in ensemble_configs/*.toml, wired from the built models' own tensor names.

A declaration names the steps in order and which tensors the ensemble exposes. Wiring matches
each step's inputs to tensors produced by earlier steps (or to declared ensemble inputs) by name;
those names come from the exported models (e.g. the ONNX graph's inputs), so nothing is copied by
hand and a renamed tensor fails the build instead of the first request.
"""

from __future__ import annotations

import dataclasses
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Triton 24.xx containers): the same parser as a package
    import tomli as tomllib
from dataclasses import dataclass
from pathlib import Path

from shopsearch.errors import ConfigError
from shopsearch.triton.model_config import EnsembleConfig, EnsembleStep, ModelConfigType, TensorSpec

ENSEMBLE_CONFIG_DIR = Path(__file__).resolve().parents[2] / "ensemble_configs"


@dataclass(frozen=True)
class EnsembleDeclaration:
    name: str
    steps: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    max_batch_size: int
    # ensemble input name -> the step input it feeds, where the two differ (similar_items'
    # ITEM_IDS feeds item_lookup's HISTORY)
    aliases: tuple[tuple[str, str], ...] = ()


def load_declaration(name: str, directory: Path = ENSEMBLE_CONFIG_DIR) -> EnsembleDeclaration:
    path = directory / f"{name}.toml"
    if not path.exists():
        raise ConfigError(name, "declaration", f"{path} is missing")
    raw = tomllib.loads(path.read_text())
    try:
        return EnsembleDeclaration(
            name=raw["name"], steps=tuple(raw["steps"]), inputs=tuple(raw["inputs"]),
            outputs=tuple(raw["outputs"]), max_batch_size=int(raw["max_batch_size"]),
            aliases=tuple(sorted(raw.get("aliases", {}).items())),
        )
    except KeyError as exc:
        raise ConfigError(name, str(exc.args[0]), f"missing in {path}") from None


def wire_ensemble(declaration: EnsembleDeclaration, models: dict[str, ModelConfigType], version: int = 1) -> EnsembleConfig:
    """`version`: the composing models' version every step pins. Pinning (not "latest") is what keeps a
    request on one generation's tokenizer, embedder and index while a deploy loads the next."""
    name = declaration.name
    producers: dict[str, TensorSpec] = {}
    exposed_inputs: dict[str, TensorSpec] = {}
    exposed_as = {step_input: ensemble_input for ensemble_input, step_input in declaration.aliases}
    steps = []
    for position, model_name in enumerate(declaration.steps):
        if model_name not in models:
            raise ConfigError(name, f"steps[{position}]", f"model '{model_name}' is not built")
        model = models[model_name]
        if model.max_batch_size < declaration.max_batch_size:
            raise ConfigError(name, "max_batch_size", f"{declaration.max_batch_size} exceeds {model_name}'s {model.max_batch_size}")
        input_map = []
        for spec in model.inputs:
            if spec.name in producers:
                source = producers[spec.name]
                if (source.dtype, source.dims) != (spec.dtype, spec.dims) and -1 not in spec.dims:
                    raise ConfigError(name, f"{model_name}.{spec.name}",
                                      f"expects {spec.dtype}{list(spec.dims)}, earlier step produces {source.dtype}{list(source.dims)}")
            elif exposed_as.get(spec.name, spec.name) in declaration.inputs:
                outer = exposed_as.get(spec.name, spec.name)
                exposed_inputs.setdefault(outer, dataclasses.replace(spec, name=outer))
                input_map.append((spec.name, outer))
                continue
            elif spec.optional:
                continue
            else:
                raise ConfigError(name, f"{model_name}.{spec.name}", "no earlier step produces it and it is not a declared input")
            input_map.append((spec.name, spec.name))
        output_map = []
        for spec in model.outputs:
            producers[spec.name] = spec
            output_map.append((spec.name, spec.name))
        steps.append(EnsembleStep(model_name, tuple(input_map), tuple(output_map), model_version=version))
    missing_in = [n for n in declaration.inputs if n not in exposed_inputs]
    if missing_in:
        raise ConfigError(name, "inputs", f"{missing_in} are declared but no step reads them")
    missing_out = [n for n in declaration.outputs if n not in producers]
    if missing_out:
        raise ConfigError(name, "outputs", f"{missing_out} are declared but no step produces them")
    return EnsembleConfig(
        name=name,
        inputs=tuple(exposed_inputs[n] for n in declaration.inputs),
        outputs=tuple(producers[n] for n in declaration.outputs),
        steps=tuple(steps),
        max_batch_size=declaration.max_batch_size,
    )
