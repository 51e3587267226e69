"""Typed Triton model configs, written through Triton's own protobuf (never string templates).

One config type per backend; each validates itself on construction and names the model and field
at fault. `to_proto()` gives a `ModelConfig` message; shopsearch.triton.repository writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from shopsearch.errors import ConfigError

# numpy dtype name -> Triton data type; BYTES tensors are numpy object arrays.
_TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "object": "TYPE_STRING", "bytes": "TYPE_STRING",
}


def triton_dtype(numpy_name: str) -> str:
    try:
        return _TRITON_DTYPES[numpy_name]
    except KeyError:
        raise ConfigError("(tensor)", "data_type", f"no Triton type for numpy dtype '{numpy_name}'") from None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `dims` excludes the batch dimension when the model batches."""

    name: str
    dtype: str  # numpy dtype name, e.g. "int64", "float32", "object" for BYTES
    dims: tuple[int, ...]
    allow_ragged_batch: bool = False
    optional: bool = False

    def validate(self, model: str) -> None:
        if not self.name:
            raise ConfigError(model, "tensor.name", "must not be empty")
        triton_dtype(self.dtype)
        if not self.dims or any(d == 0 or d < -1 for d in self.dims):
            raise ConfigError(model, f"{self.name}.dims", f"each dim must be > 0 or -1, got {list(self.dims)}")


@dataclass(frozen=True)
class DynamicBatching:
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 500  # how long a request may wait for others to batch with
    # Overload policy: beyond capacity a request is refused at once ("Exceeds maximum queue size")
    # or after waiting `queue_timeout_us`, instead of queueing without bound. 0 = unbounded.
    max_queue_size: int = 0
    queue_timeout_us: int = 0

    def queue_policy(self) -> pb.ModelQueuePolicy | None:
        if not (self.max_queue_size or self.queue_timeout_us):
            return None
        return pb.ModelQueuePolicy(
            timeout_action=pb.ModelQueuePolicy.REJECT, default_timeout_microseconds=self.queue_timeout_us,
            allow_timeout_override=False, max_queue_size=self.max_queue_size,
        )


def _version_policy(config: pb.ModelConfig, versions: tuple[int, ...]) -> None:
    """Load exactly these versions (a deploy keeps the serving and the previous generation loaded)."""
    if versions:
        config.version_policy.specific.versions.extend(sorted(set(versions)))


@dataclass(frozen=True)
class _BatchedModelConfig:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 256
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"
    dynamic_batching: DynamicBatching | None = field(default_factory=DynamicBatching)
    parameters: tuple[tuple[str, str], ...] = ()
    versions: tuple[int, ...] = ()  # version_policy specific; () = Triton's default (latest one)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(self.name or "(model)", "name", "must be a non-empty directory name")
        if self.max_batch_size < 0:
            raise ConfigError(self.name, "max_batch_size", "must be >= 0")
        if self.instance_count < 1:
            raise ConfigError(self.name, "instance_group.count", "must be >= 1")
        if self.instance_kind not in ("KIND_CPU", "KIND_GPU"):
            raise ConfigError(self.name, "instance_group.kind", f"unknown kind {self.instance_kind}")
        if any(v < 1 for v in self.versions):
            raise ConfigError(self.name, "version_policy.specific.versions", f"versions must be >= 1, got {list(self.versions)}")
        if self.dynamic_batching and min(self.dynamic_batching.max_queue_size, self.dynamic_batching.queue_timeout_us) < 0:
            raise ConfigError(self.name, "dynamic_batching.default_queue_policy", "queue size and timeout must be >= 0")
        if self.dynamic_batching and self.max_batch_size == 0:
            raise ConfigError(self.name, "dynamic_batching", "needs max_batch_size > 0")
        if self.dynamic_batching:
            too_big = [b for b in self.dynamic_batching.preferred_batch_sizes if b > self.max_batch_size]
            if too_big:
                raise ConfigError(self.name, "dynamic_batching.preferred_batch_size", f"{too_big} exceed max_batch_size")
        names = [t.name for t in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ConfigError(self.name, "input/output", f"tensor names repeat: {names}")
        if not self.inputs or not self.outputs:
            raise ConfigError(self.name, "input/output", "a model needs at least one input and one output")
        for tensor in self.inputs + self.outputs:
            tensor.validate(self.name)

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def parameter(self, key: str) -> str:
        return dict(self.parameters)[key]

    def _base_proto(self) -> pb.ModelConfig:
        config = pb.ModelConfig(name=self.name, max_batch_size=self.max_batch_size)
        for spec in self.inputs:
            config.input.append(
                pb.ModelInput(
                    name=spec.name, data_type=triton_dtype(spec.dtype), dims=list(spec.dims),
                    allow_ragged_batch=spec.allow_ragged_batch, optional=spec.optional,
                )
            )
        for spec in self.outputs:
            config.output.append(pb.ModelOutput(name=spec.name, data_type=triton_dtype(spec.dtype), dims=list(spec.dims)))
        config.instance_group.append(pb.ModelInstanceGroup(kind=self.instance_kind, count=self.instance_count))
        if self.dynamic_batching:
            config.dynamic_batching.CopyFrom(
                pb.ModelDynamicBatching(
                    preferred_batch_size=list(self.dynamic_batching.preferred_batch_sizes),
                    max_queue_delay_microseconds=self.dynamic_batching.max_queue_delay_us,
                )
            )
            policy = self.dynamic_batching.queue_policy()
            if policy is not None:
                config.dynamic_batching.default_queue_policy.CopyFrom(policy)
        for key, value in self.parameters:
            config.parameters[key].string_value = value
        _version_policy(config, self.versions)
        return config


@dataclass(frozen=True)
class PythonModelConfig(_BatchedModelConfig):
    """A model served by Triton's Python backend (model.py beside its artifacts)."""

    def to_proto(self) -> pb.ModelConfig:
        config = self._base_proto()
        config.backend = "python"
        return config


@dataclass(frozen=True)
class OnnxRuntimeModelConfig(_BatchedModelConfig):
    """Triton's native ONNX Runtime backend (NVIDIA's container; not in the pip tritonserver)."""

    model_file: str = "model.onnx"

    def to_proto(self) -> pb.ModelConfig:
        config = self._base_proto()
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = self.model_file
        return config


@dataclass(frozen=True)
class TensorRTModelConfig(_BatchedModelConfig):
    """A serialized TensorRT engine. `profile_batches`: each optimization profile's (min, max) batch,
    in the engine's profile order.

    Every instance group lists every profile. The TensorRT backend gives an instance one execution
    context per listed profile and picks, per batch, the context whose profile takes its shapes
    (an instance that lists none gets profile 0 only). The dynamic batcher forms batches of any size
    up to max_batch_size without knowing which instance will run them, so an instance pinned to a
    profile that stops at batch 8 fails every request of a larger batch routed to it."""

    model_file: str = "model.plan"
    profile_batches: tuple[tuple[int, int], ...] = ((1, 256),)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.instance_kind != "KIND_GPU":
            raise ConfigError(self.name, "instance_group.kind", "a TensorRT engine runs on KIND_GPU only")
        if not self.profile_batches:
            raise ConfigError(self.name, "instance_group.profile", "name at least one optimization profile")
        uncovered = [b for b in range(1, self.max_batch_size + 1)
                     if not any(lo <= b <= hi for lo, hi in self.profile_batches)]
        if uncovered:
            raise ConfigError(self.name, "instance_group.profile",
                              f"no optimization profile takes batch sizes {uncovered[0]}-{uncovered[-1]} "
                              f"(max_batch_size {self.max_batch_size}; profiles {list(self.profile_batches)})")

    def to_proto(self) -> pb.ModelConfig:
        config = self._base_proto()
        config.platform = "tensorrt_plan"
        config.default_model_filename = self.model_file
        del config.instance_group[:]
        config.instance_group.append(pb.ModelInstanceGroup(
            kind="KIND_GPU", count=self.instance_count, profile=[str(i) for i in range(len(self.profile_batches))]))
        return config


ModelConfigType = PythonModelConfig | OnnxRuntimeModelConfig | TensorRTModelConfig


@dataclass(frozen=True)
class EnsembleStep:
    model_name: str
    input_map: tuple[tuple[str, str], ...]  # (model tensor, ensemble tensor)
    output_map: tuple[tuple[str, str], ...]
    model_version: int = -1  # -1: whatever version the server has loaded (latest by default)


@dataclass(frozen=True)
class EnsembleConfig:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    steps: tuple[EnsembleStep, ...]
    max_batch_size: int = 256
    versions: tuple[int, ...] = ()
    # Triton's response cache for whole-ensemble answers (the server needs --cache-config too). The
    # key hashes model name, version and inputs: a deploy (a new version) never hits an old answer.
    response_cache: bool = False

    def __post_init__(self) -> None:
        if not self.steps:
            raise ConfigError(self.name, "ensemble_scheduling.step", "an ensemble needs at least one step")
        for tensor in self.inputs + self.outputs:
            tensor.validate(self.name)

    def to_proto(self) -> pb.ModelConfig:
        config = pb.ModelConfig(name=self.name, platform="ensemble", max_batch_size=self.max_batch_size)
        for spec in self.inputs:
            config.input.append(
                pb.ModelInput(name=spec.name, data_type=triton_dtype(spec.dtype), dims=list(spec.dims), optional=spec.optional)
            )
        for spec in self.outputs:
            config.output.append(pb.ModelOutput(name=spec.name, data_type=triton_dtype(spec.dtype), dims=list(spec.dims)))
        for step in self.steps:
            message = config.ensemble_scheduling.step.add(model_name=step.model_name, model_version=step.model_version)
            message.input_map.update(dict(step.input_map))
            message.output_map.update(dict(step.output_map))
        if self.response_cache:
            config.response_cache.enable = True
        _version_policy(config, self.versions)
        return config


def render_config(config: ModelConfigType | EnsembleConfig) -> str:
    """config.pbtxt's text (shopsearch.triton.repository.write_config writes it)."""
    return text_format.MessageToString(config.to_proto())


def parameters_of(config: pb.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}
