"""TensorRT engines for the GPU target, built through Polygraphy's TensorRT API.

TensorRT is only importable on GPU hosts (NVIDIA's wheels or containers); everywhere else
`require_tensorrt` stops the build at once with what is missing and what to do instead.
Optimization profiles come from the measured token lengths of real queries, one per traffic
pattern, and the equivalent `polygraphy convert` command is saved beside every engine.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shopsearch.errors import BackendUnavailableError
from shopsearch.export.onnx import INPUT_NAMES, OUTPUT_NAME
from shopsearch.core.tokenization import EncodedBatch, TextEncoder

ENGINE_FILE = "model.plan"
BUILD_COMMAND_FILE = "build_command.txt"
PROFILES_FILE = "profiles.json"


def require_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"TARGET=gpu GPU_BACKEND=tensorrt needs the TensorRT Python package, and `import tensorrt` failed "
            f"({exc}). TensorRT does not install on these CPU machines: build on a GPU host that has it "
            "(NVIDIA's TensorRT or Triton container, or `pip install tensorrt-cu12` where NVIDIA's index is "
            "reachable), or build GPU_BACKEND=onnxruntime, which needs no TensorRT."
        ) from None
    return tensorrt


@dataclass(frozen=True)
class ShapeProfile:
    name: str
    why: str
    batch: tuple[int, int, int]  # min, opt, max
    sequence: tuple[int, int, int]

    def shapes(self) -> dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]]:
        dims = tuple(zip(self.batch, self.sequence))
        return {name: dims for name in INPUT_NAMES}  # type: ignore[misc]


@dataclass(frozen=True)
class FixedWidthProfile:
    """A profile for a graph with one [batch, width] input of fixed width (the user encoder's
    item window): only the batch varies."""

    name: str
    why: str
    input_name: str
    width: int
    batch: tuple[int, int, int]  # min, opt, max

    def shapes(self) -> dict[str, tuple[tuple[int, int], ...]]:
        return {self.input_name: tuple((b, self.width) for b in self.batch)}


def token_length_stats(encoder: TextEncoder, queries: list[str]) -> dict[str, int]:
    lengths = np.array([int(m.sum()) for m in encoder.encode_texts(queries).attention_mask])
    return {"p50": int(np.percentile(lengths, 50)), "p95": int(np.percentile(lengths, 95)),
            "p99": int(np.percentile(lengths, 99)), "max": int(lengths.max()), "queries": len(lengths)}


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple if multiple else value


def profiles_for(stats: dict[str, int], max_length: int, max_batch: int, pad_multiple: int) -> tuple[ShapeProfile, ...]:
    """Two traffic patterns. The tokenizer pads to a multiple of `pad_multiple`, so the shapes the
    engine sees are those multiples; opt is where TensorRT tunes its kernels hardest."""
    typical = min(round_up(stats["p50"], pad_multiple), max_length)
    long_tail = min(round_up(stats["p95"], pad_multiple), max_length)
    return (
        ShapeProfile(
            "interactive",
            f"one shopper's query at a time at low load; half of all queries fit in {typical} tokens (p50={stats['p50']})",
            batch=(1, 1, 8), sequence=(1, typical, max_length),
        ),
        ShapeProfile(
            "batched",
            f"the dynamic batcher's full batches under load; 95% of queries fit in {long_tail} tokens (p95={stats['p95']})",
            batch=(1, min(32, max_batch), max_batch), sequence=(1, long_tail, max_length),
        ),
    )


def polygraphy_command(onnx_path: Path, engine_path: Path, profiles: tuple[ShapeProfile, ...], fp16: bool) -> str:
    """The CLI equivalent of `build_engine`, saved beside the engine so a build can be redone by hand."""
    args = ["polygraphy", "convert", str(onnx_path), "--convert-to", "trt", "-o", str(engine_path)]
    if fp16:
        args.append("--fp16")
    for profile in profiles:  # repeating the shape flags declares one more profile
        for flag, position in (("--trt-min-shapes", 0), ("--trt-opt-shapes", 1), ("--trt-max-shapes", 2)):
            args.append(flag)
            args += [f"{name}:[{dims[position][0]},{dims[position][1]}]" for name, dims in profile.shapes().items()]
    return shlex.join(args)


def build_engine(onnx_path: Path, out_dir: Path, profiles: tuple[ShapeProfile, ...], fp16: bool = True) -> Path:
    require_tensorrt()
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    trt_profiles = []
    for profile in profiles:
        trt_profile = Profile()
        for name, (lo, opt, hi) in profile.shapes().items():
            trt_profile.add(name, min=lo, opt=opt, max=hi)
        trt_profiles.append(trt_profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / ENGINE_FILE
    build = EngineFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=CreateConfig(fp16=fp16, profiles=trt_profiles))
    SaveEngine(build, path=str(engine_path))()
    (out_dir / BUILD_COMMAND_FILE).write_text(polygraphy_command(onnx_path, engine_path, profiles, fp16) + "\n")
    (out_dir / PROFILES_FILE).write_text(json.dumps([asdict(p) for p in profiles], indent=2))
    return engine_path


def trt_runner(engine_path: Path, profile_index: int, name: str | None = None):
    """Polygraphy's TrtRunner over a saved engine, bound to one optimization profile."""
    require_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name=name, optimization_profile=profile_index)


class TrtEmbedder:
    """Runs a built engine through Polygraphy's TrtRunner (GPU hosts only)."""

    def __init__(self, engine_path: Path, profile_index: int):
        self.runner = trt_runner(engine_path, profile_index)
        self.runner.activate()

    def embed(self, batch: EncodedBatch) -> np.ndarray:
        outputs = self.runner.infer({INPUT_NAMES[0]: batch.input_ids, INPUT_NAMES[1]: batch.attention_mask})
        return np.asarray(outputs[OUTPUT_NAME], dtype=np.float32)
