"""The one place that imports `triton_python_backend_utils`: adapts Triton requests to steps.

A model.py in the repository (copied from shopsearch/serving/adapters/) is two lines: it names its
step and inherits this adapter. Errors the
client caused come back as that request's short message; anything unexpected is logged with its
traceback on the server and the client gets "internal error in <model>" and no traceback.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np

from shopsearch.errors import InvalidInputError, ShopSearchError
from shopsearch.serving.metrics import METRIC_SPECS, MetricSender, MetricSpec, observations
from shopsearch.serving.registry import load_step
from shopsearch.serving.steps import serving_thread_limits
from shopsearch.triton.repository import read_version_params


def missing_inputs(arrays: list[dict[str, np.ndarray]], required: list[str]) -> dict[int, str]:
    """Request index -> the first required input it lacks, for the requests that lack one."""
    missing = {}
    for index, request in enumerate(arrays):
        absent = [name for name in required if name not in request]
        if absent:
            missing[index] = absent[0]
    return missing


class TritonStepModel:
    """Base for every Python-backend model; subclasses set `step_name`."""

    step_name: str = ""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        self._thread_limits = serving_thread_limits()
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.input_names = [i["name"] for i in config["input"]]
        # Triton checks only how many inputs a request has when some are optional (measured on 2.51:
        # TOPK plus one of postprocess's two candidate inputs got through), so each is checked here.
        self.required_inputs = [i["name"] for i in config["input"] if not i.get("optional", False)]
        self.output_names = [o["name"] for o in config["output"]]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        # A version's own parameters win: after a deploy, two generations share one config.pbtxt.
        params.update(read_version_params(version_dir))
        self.step = load_step(self.step_name, self.model_name, version_dir, params)
        self._families, self._metrics, self._sender = [], {}, None
        if params.get("custom_metrics", "1") == "1":
            try:
                self._register_metrics(args["model_version"])
            except Exception:  # noqa: BLE001 - a model serves without its custom metrics rather than not at all
                self._families, self._metrics = [], {}
                self.logger.log_warn(f"{self.model_name}: custom metrics disabled: {traceback.format_exc()}")
        if self._metrics:
            self._sender = MetricSender(self._send_metric, on_error=self._metric_failed)
        self.logger.log_info(f"{self.model_name}: loaded step '{self.step_name}' from {version_dir}")

    def _register_metrics(self, version: str) -> None:
        kinds = {"counter": self.pb.MetricFamily.COUNTER, "histogram": self.pb.MetricFamily.HISTOGRAM}
        labels = {"model": self.model_name, "version": version}
        for spec in METRIC_SPECS.get(self.step_name, ()):
            family = self.pb.MetricFamily(name=spec.name, description=spec.description, kind=kinds[spec.kind])
            self._families.append(family)  # a family lives as long as its Python object
            self._metrics[spec.name] = (family.Metric(labels=labels, buckets=list(spec.buckets)) if spec.kind == "histogram"
                                        else family.Metric(labels=labels))

    def _send_metric(self, spec: MetricSpec, value: float) -> None:
        metric = self._metrics[spec.name]
        if spec.kind == "histogram":
            metric.observe(value)
        else:
            metric.increment(value)

    def _metric_failed(self, exc: BaseException) -> None:
        self.logger.log_warn(f"{self.model_name}: metrics: {''.join(traceback.format_exception(exc))}")

    def _record(self, requests: list[dict], outcomes: list) -> None:
        if self._sender is None:
            return
        try:
            self._sender.add(observations(self.step_name, requests, outcomes))
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            self.logger.log_warn(f"{self.model_name}: metrics: {traceback.format_exc()}")

    def _read(self, request) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.input_names:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                arrays[name] = tensor.as_numpy()
        return arrays

    def _error(self, message: str, client_fault: bool):
        # INVALID_ARG: the client sent something unusable (HTTP 400, do not retry); INTERNAL: our bug (500).
        code = self.pb.TritonError.INVALID_ARG if client_fault else self.pb.TritonError.INTERNAL
        return self.pb.InferenceResponse(error=self.pb.TritonError(message, code))

    def execute(self, requests):
        try:
            arrays = [self._read(r) for r in requests]
        except Exception:  # noqa: BLE001 - an input Triton let through that numpy cannot take
            self.logger.log_error(f"{self.model_name}: {traceback.format_exc()}")
            return [self._error(f"internal error in {self.model_name}", client_fault=False) for _ in requests]
        missing = missing_inputs(arrays, self.required_inputs)
        served = [a for i, a in enumerate(arrays) if i not in missing]
        answers = iter(self._execute(served) if served else [])
        return [self._missing(missing[i]) if i in missing else next(answers) for i in range(len(arrays))]

    def _missing(self, name: str):
        error = InvalidInputError(self.model_name, name, "is missing (call the ensemble, not its steps)")
        return self._error(str(error), client_fault=True)

    def _execute(self, arrays: list[dict[str, np.ndarray]]):
        try:
            outcomes = self.step.run(arrays)
        except ShopSearchError as exc:
            return [self._error(str(exc), isinstance(exc, InvalidInputError)) for _ in arrays]
        except Exception:  # noqa: BLE001 - never let a bug take the model down; log it, fail the batch
            self.logger.log_error(f"{self.model_name}: {traceback.format_exc()}")
            return [self._error(f"internal error in {self.model_name}", client_fault=False) for _ in arrays]
        self._record(arrays, outcomes)
        responses = []
        for outcome in outcomes:
            if isinstance(outcome, ShopSearchError):
                responses.append(self._error(str(outcome), isinstance(outcome, InvalidInputError)))
                continue
            tensors = [self.pb.Tensor(name, outcome[name]) for name in self.output_names]
            responses.append(self.pb.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        if self._sender is not None:
            self._sender.close()  # what the last executions observed is sent before the families go
        self.logger.log_info(f"{self.model_name}: unloaded")
