"""A stand-in for TensorRT that behaves like it where our code can go wrong, so the GPU build path
runs on these CPU machines.

What it keeps from the real thing (Polygraphy 0.53.6's `TrtRunner`, TensorRT's execution context):
- a runner is bound to ONE optimization profile and refuses any input shape outside that profile's
  min..max with Polygraphy's error ("For input: ..., failed to set shape to: ...");
- every output is a view into one host buffer per output, which the next `infer` overwrites and
  reallocates when a larger result needs more room (`BaseRunner.infer`: "Runners may reuse these
  output buffers ... make a copy");
- a runner must be activated before `infer` (it is Polygraphy's own `BaseRunner`).
What it replaces: the engine. `compile_engine` copies the ONNX graph it was given into the plan
file, and the runner executes that graph with ONNX Runtime, so the numbers are the graph's own.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType
from polygraphy.exception import PolygraphyException

FAKE_TENSORRT_VERSION = "10.13.3.9"
# Every runner `open_runner` made since `install`: a test can check that each was deactivated (a
# real TrtRunner left active holds its execution context and device buffers until collected).
OPENED: list["ReusedBufferRunner"] = []


class ReusedBufferRunner(BaseRunner):
    """`compute(feeds) -> {name: array}` behind a profile's shape limits and reused output buffers.
    `limits`: input name -> (min shape, max shape)."""

    def __init__(self, compute, limits: dict[str, tuple[tuple[int, ...], tuple[int, ...]]], name: str | None = None):
        super().__init__(name=name, prefix="fake-trt-runner")
        self.compute = compute
        self.limits = limits
        self.host_output_buffers: dict[str, np.ndarray] = {}
        self.calls = 0

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for name, (lo, _) in self.limits.items():
            meta.add(name, dtype=DataType.INT64, shape=[-1] * len(lo))
        return meta

    def infer_impl(self, feed_dict):
        for name, array in feed_dict.items():
            lo, hi = self.limits[name]
            if len(array.shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(array.shape, lo, hi)):
                raise PolygraphyException(f"For input: {name}, failed to set shape to: {tuple(array.shape)}")
        self.calls += 1
        started = time.perf_counter()
        outputs = OrderedDict()
        for name, result in self.compute(feed_dict).items():
            result = np.ascontiguousarray(result)
            raw = result.view(np.uint8).reshape(-1)
            buffer = self.host_output_buffers.get(name)
            if buffer is None or buffer.nbytes < raw.nbytes:
                buffer = self.host_output_buffers[name] = np.empty(raw.nbytes, dtype=np.uint8)
            buffer[: raw.nbytes] = raw
            outputs[name] = buffer[: raw.nbytes].view(result.dtype).reshape(result.shape)
        self.inference_time = time.perf_counter() - started  # Polygraphy's Comparator sums it
        return outputs


def profile_limits(profile: dict) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(min, max) shape per input of one entry of an engine's profiles.json."""
    from shopsearch.export.tensorrt import FixedWidthProfile, ShapeProfile

    kind = FixedWidthProfile if "width" in profile else ShapeProfile
    shapes = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in profile.items()}).shapes()
    return {name: (tuple(dims[0]), tuple(dims[2])) for name, dims in shapes.items()}


def compile_engine(onnx_path: Path, engine_path: Path, profiles, version_compatible: bool) -> None:
    shutil.copyfile(onnx_path, engine_path)


def open_runner(engine_path: Path, profile_index: int, name: str | None = None) -> ReusedBufferRunner:
    import onnxruntime as ort

    from shopsearch.export.tensorrt import PROFILES_FILE

    profiles = json.loads((engine_path.parent / PROFILES_FILE).read_text())
    if not 0 <= profile_index < len(profiles):
        raise PolygraphyException(f"optimization profile {profile_index} out of range 0-{len(profiles) - 1}")
    session = ort.InferenceSession(str(engine_path), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    compute = lambda feeds: dict(zip(outputs, session.run(outputs, dict(feeds))))  # noqa: E731
    runner = ReusedBufferRunner(compute, profile_limits(profiles[profile_index]), name=name)
    OPENED.append(runner)
    return runner


def install(monkeypatch) -> None:
    """Route the build's TensorRT calls to this fake (TensorRT "importable", version recorded)."""
    import shopsearch.build.search as build_search
    import shopsearch.export.tensorrt as tensorrt

    fake_module = SimpleNamespace(__version__=FAKE_TENSORRT_VERSION)
    OPENED.clear()
    monkeypatch.setattr(tensorrt, "require_tensorrt", lambda: fake_module)
    monkeypatch.setattr(build_search, "require_tensorrt", lambda: fake_module)
    monkeypatch.setattr(tensorrt, "compile_engine", compile_engine)
    monkeypatch.setattr(tensorrt, "open_runner", open_runner)
