"""The one place that imports `triton_python_backend_utils`: adapts Triton requests to steps.

A model.py in the repository is two lines: it names its step and inherits this adapter. Errors the
client caused come back as that request's short message; anything unexpected is logged with its
traceback on the server and the client gets "internal error in <model>" and no traceback.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np

from shopsearch.errors import ShopSearchError
from shopsearch.serving.steps import INSTANCE_COUNT, STEP_TYPES


class TritonStepModel:
    """Base for every Python-backend model; subclasses set `step_name`."""

    step_name: str = ""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        params[INSTANCE_COUNT] = str(sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.step = STEP_TYPES[self.step_name].from_artifacts(version_dir, params)
        self.logger.log_info(f"{self.model_name}: loaded step '{self.step_name}' from {version_dir}")

    def _read(self, request) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.input_names:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                arrays[name] = tensor.as_numpy()
        return arrays

    def _error(self, message: str):
        return self.pb.InferenceResponse(error=self.pb.TritonError(message))

    def execute(self, requests):
        try:
            outcomes = self.step.run([self._read(r) for r in requests])
        except ShopSearchError as exc:
            return [self._error(str(exc)) for _ in requests]
        except Exception:  # noqa: BLE001 - never let a bug take the model down; log it, fail the batch
            self.logger.log_error(f"{self.model_name}: {traceback.format_exc()}")
            return [self._error(f"internal error in {self.model_name}") for _ in requests]
        responses = []
        for outcome in outcomes:
            if isinstance(outcome, ShopSearchError):
                responses.append(self._error(str(outcome)))
                continue
            tensors = [self.pb.Tensor(name, outcome[name]) for name in self.output_names]
            responses.append(self.pb.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.logger.log_info(f"{self.model_name}: unloaded")
