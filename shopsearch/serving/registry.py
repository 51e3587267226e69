"""Which step each served model runs, and how a step is loaded from a model version's files.

The Python backend (shopsearch.serving.backend) and the in-process pipeline
(shopsearch.serving.pipeline) both load steps through `load_step`, with the same parameters, so
what runs in-process is what the server runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from shopsearch.errors import ArtifactError
from shopsearch.serving.rec_steps import ItemEmbeddingStep, ItemLookupStep, RecPostprocessStep, UserEncoderStep
from shopsearch.serving.steps import EmbedderStep, PostprocessStep, RankerStep, TokenizerStep

STEP_TYPES = {step.name: step for step in (TokenizerStep, EmbedderStep, RankerStep, PostprocessStep,
                                           ItemLookupStep, UserEncoderStep, ItemEmbeddingStep, RecPostprocessStep)}
# Models that run another model's step: rec_ranker is the search ranker's exact inner-product
# search over the item table.
MODEL_STEPS = {"rec_ranker": RankerStep.name}


def step_name_of(model: str) -> str:
    """The step a model of this name runs (its adapter's `step_name`)."""
    step = MODEL_STEPS.get(model, model)
    if step not in STEP_TYPES:
        raise ArtifactError(f"{model}: no served step of that name (steps: {sorted(STEP_TYPES)})")
    return step


def load_step(step_name: str, model: str, version_dir: Path, parameters: Mapping[str, str]):
    """The step `step_name` on `version_dir`'s artifacts, configured by `parameters` (config.pbtxt's
    plus the version's params.json), reading them typed; errors name `model`."""
    step_type = STEP_TYPES[step_name]
    step = step_type.from_artifacts(Path(version_dir), step_type.params_type.from_parameters(parameters, model))
    step.name = model  # errors name the model (rec_ranker runs the ranker step)
    return step
