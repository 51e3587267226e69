"""What `make build-repo` builds: target, precision, batching and overload settings."""

from __future__ import annotations

from dataclasses import dataclass

from shopsearch.core.ann import IndexSpec
from shopsearch.errors import ConfigError
from shopsearch.export.optimize import PRECISIONS
from shopsearch.triton.model_config import DynamicBatching

TARGETS = ("cpu", "gpu")
GPU_BACKENDS = ("tensorrt", "onnxruntime")
GPU_PAD_MULTIPLE = 8  # the GPU tokenizer pads batches to multiples of this (native backends batch equal shapes)


@dataclass(frozen=True)
class BuildOptions:
    target: str = "cpu"
    precision: str = "int8"  # cpu target: which ONNX artifact the embedder serves
    gpu_backend: str = "tensorrt"
    trt_version_compatible: bool = False  # engines later TensorRT releases load too (TensorRT >= 8.6)
    n_candidates: int = 100
    top_k: int = 10
    intra_op_threads: int = 0
    max_queue_delay_us: int = 1000
    # Overload: each model queues at most this many requests and none longer than this; beyond,
    # Triton refuses at once (UNAVAILABLE) so clients fail fast and retry elsewhere.
    max_queue_size: int = 64
    queue_timeout_us: int = 2_000_000
    parity_queries: int = 0  # dev queries for retrieval parity; 0: the whole split
    index: IndexSpec = IndexSpec()  # how the ranker searches the catalog (recipe [index], INDEX=)
    # Triton's local response cache for the `search` ensemble (recipe [serving]); 0 turns it off.
    # Off for `recommend` and `similar_items`, whose answers follow live histories and stock.
    response_cache_mb: int = 64

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError("build", "TARGET", f"'{self.target}' is not one of {TARGETS}")
        if self.precision not in PRECISIONS:
            raise ConfigError("build", "PRECISION", f"'{self.precision}' is not one of {PRECISIONS}")
        if self.response_cache_mb < 0:
            raise ConfigError("build", "response_cache_mb", f"must be 0 (off) or a size in MB, got {self.response_cache_mb}")
        if self.gpu_backend not in GPU_BACKENDS:
            raise ConfigError("build", "GPU_BACKEND", f"'{self.gpu_backend}' is not one of {GPU_BACKENDS}")

    @property
    def batching(self) -> DynamicBatching:
        """Every batched model's dynamic batching and overload policy, before tuning."""
        return DynamicBatching(max_queue_delay_us=self.max_queue_delay_us, max_queue_size=self.max_queue_size,
                               queue_timeout_us=self.queue_timeout_us)
