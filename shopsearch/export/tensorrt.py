"""TensorRT engines for the GPU target, built through Polygraphy's TensorRT API.

TensorRT is only importable on GPU hosts (NVIDIA's wheels or containers); everywhere else
`require_tensorrt` stops the build at once with what is missing and what to do instead.
Optimization profiles come from the measured token lengths of real queries, one per traffic
pattern, each reaching the longest sequence the build (catalog texts) or the server (queries) sends;
the equivalent `polygraphy convert` command is saved beside every engine, and an engine card records
the TensorRT that built it: a plan only loads under the same TensorRT unless built version-compatible.

FP16 without TensorRT's deprecated FP16 builder flag (removed in TensorRT 11): the engine is built
as a strongly typed network from an FP16 ONNX graph whose numbers the build has already gated on
the CPU (`to_fp16_onnx`), so TensorRT runs exactly the precision that was checked.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shopsearch.core.provenance import file_sha256
from shopsearch.core.tokenization import EncodedBatch, TextEncoder
from shopsearch.errors import ArtifactError, BackendUnavailableError, ConfigError
from shopsearch.export.onnx import INPUT_NAMES, OUTPUT_NAME

ENGINE_FILE = "model.plan"
BUILD_COMMAND_FILE = "build_command.txt"
PROFILES_FILE = "profiles.json"
ENGINE_CARD = "engine.json"  # the TensorRT that built the plan, version compatibility, precision, profiles


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

    def covers(self, batch: int, sequence: int | None = None) -> bool:
        return self.batch[0] <= batch <= self.batch[2] and (
            sequence is None or self.sequence[0] <= sequence <= self.sequence[2])


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

    def covers(self, batch: int, sequence: int | None = None) -> bool:
        return self.batch[0] <= batch <= self.batch[2] and sequence in (None, self.width)


def uncovered_batches(profiles: Sequence[ShapeProfile | FixedWidthProfile], max_batch_size: int,
                      sequence: int | None = None) -> list[int]:
    """Batch sizes 1..max_batch_size (at `sequence`) that no profile of `profiles` takes: the dynamic
    batcher may form any of them and route it to any instance."""
    return [b for b in range(1, max_batch_size + 1) if not any(p.covers(b, sequence) for p in profiles)]


def longest_sequence(encoder: TextEncoder, texts: Sequence[str], chunk: int = 4096) -> int:
    """The longest token sequence `encoder` makes of `texts` (after its truncation and padding)."""
    return max(encoder.encode_texts(list(texts[i : i + chunk])).input_ids.shape[1] for i in range(0, len(texts), chunk))


def require_coverage(engine: str, profile: ShapeProfile, batch: int, sequence: int) -> None:
    """Stop the build before TensorRT does ("failed to set shape") on a batch the profile cannot take."""
    if not profile.covers(batch, sequence):
        raise ConfigError(engine, f"profile {profile.name!r}",
                          f"takes batch {profile.batch[0]}-{profile.batch[2]} x sequence "
                          f"{profile.sequence[0]}-{profile.sequence[2]}, but the build sends {batch} x {sequence}")


def token_length_stats(encoder: TextEncoder, queries: list[str]) -> dict[str, int]:
    lengths = np.array([int(m.sum()) for m in encoder.encode_texts(queries).attention_mask])
    return {"p50": int(np.percentile(lengths, 50)), "p95": int(np.percentile(lengths, 95)),
            "p99": int(np.percentile(lengths, 99)), "max": int(lengths.max()), "queries": len(lengths)}


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple if multiple else value


def profiles_for(stats: dict[str, int], max_length: int, max_batch: int, pad_multiple: int) -> tuple[ShapeProfile, ...]:
    """Two traffic patterns. The tokenizer pads to a multiple of `pad_multiple`, so the shapes the
    engine sees are those multiples; opt is where TensorRT tunes its kernels hardest. `max_length`:
    the longest sequence anything sends, products included (the build embeds the catalog through
    the engine), not only queries. Each profile takes every batch size up to `max_batch`: an
    instance chooses among its profiles by shape, and the dynamic batcher does not know which
    instance will take a batch, so a profile that stopped at 8 would fail larger batches."""
    typical = min(round_up(stats["p50"], pad_multiple), max_length)
    long_tail = min(round_up(stats["p95"], pad_multiple), max_length)
    return (
        ShapeProfile(
            "interactive",
            f"one shopper's query at a time at low load; half of all queries fit in {typical} tokens (p50={stats['p50']})",
            batch=(1, 1, max_batch), sequence=(1, typical, max_length),
        ),
        ShapeProfile(
            "batched",
            f"the dynamic batcher's full batches under load; 95% of queries fit in {long_tail} tokens (p95={stats['p95']})",
            batch=(1, min(32, max_batch), max_batch), sequence=(1, long_tail, max_length),
        ),
    )


def polygraphy_command(onnx_path: Path, engine_path: Path, profiles: tuple[ShapeProfile, ...],
                       version_compatible: bool = False) -> str:
    """The CLI equivalent of `build_engine`, saved beside the engine so a build can be redone by hand."""
    args = ["polygraphy", "convert", str(onnx_path), "--convert-to", "trt", "-o", str(engine_path), "--strongly-typed"]
    if version_compatible:
        args.append("--version-compatible")
    for profile in profiles:  # repeating the shape flags declares one more profile
        for flag, position in (("--trt-min-shapes", 0), ("--trt-opt-shapes", 1), ("--trt-max-shapes", 2)):
            args.append(flag)
            args += [f"{name}:[{dims[position][0]},{dims[position][1]}]" for name, dims in profile.shapes().items()]
    return shlex.join(args)


def to_fp16_onnx(fp32_path: Path, out_path: Path) -> Path:
    """The FP32 graph with FP16 weights and arithmetic inside; token ids in, FP32 embedding out
    (the served tensors keep their types). ONNX Runtime runs it on the CPU, so the build gates its
    numbers before any GPU sees it."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(out_path))
    return out_path


def tensorrt_version() -> str:
    return require_tensorrt().__version__


def build_engine(onnx_path: Path, out_dir: Path, profiles: tuple, version_compatible: bool = False) -> Path:
    """A strongly typed engine of `onnx_path` (its own precision: give it `to_fp16_onnx`'s graph for
    FP16), its build command, its profiles and its card."""
    version = tensorrt_version()
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / ENGINE_FILE
    compile_engine(onnx_path, engine_path, profiles, version_compatible)
    (out_dir / BUILD_COMMAND_FILE).write_text(polygraphy_command(onnx_path, engine_path, profiles, version_compatible) + "\n")
    (out_dir / PROFILES_FILE).write_text(json.dumps([asdict(p) for p in profiles], indent=2))
    card = {"tensorrt_version": version, "version_compatible": version_compatible, "strongly_typed": True,
            "onnx": onnx_path.name, "onnx_sha256": file_sha256(onnx_path), "engine_sha256": file_sha256(engine_path),
            "profiles": [p.name for p in profiles]}
    (out_dir / ENGINE_CARD).write_text(json.dumps(card, indent=2))
    return engine_path


def compile_engine(onnx_path: Path, engine_path: Path, profiles: tuple, version_compatible: bool) -> None:
    """TensorRT itself (GPU hosts only): parse, build with the profiles, serialize."""
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    trt_profiles = []
    for profile in profiles:
        trt_profile = Profile()
        for name, (lo, opt, hi) in profile.shapes().items():
            trt_profile.add(name, min=lo, opt=opt, max=hi)
        trt_profiles.append(trt_profile)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    config = CreateConfig(profiles=trt_profiles, version_compatible=version_compatible or None)
    SaveEngine(EngineFromNetwork(network, config=config), path=str(engine_path))()


def read_engine_card(engine_path: Path) -> dict:
    path = engine_path.parent / ENGINE_CARD
    if not path.is_file():
        raise ArtifactError(f"{engine_path}: no {ENGINE_CARD} beside it; the TensorRT that built it is unknown (rebuild it)")
    return json.loads(path.read_text())


def check_engine_loads_here(engine_path: Path, card: dict, version: str) -> None:
    """A plan is tied to the TensorRT that built it unless built version-compatible: refuse a plan
    from another TensorRT with both versions named, instead of TensorRT's deserialization error."""
    if card["tensorrt_version"] != version and not card.get("version_compatible"):
        raise ArtifactError(f"{engine_path}: built by TensorRT {card['tensorrt_version']}, and this host has "
                            f"TensorRT {version}; rebuild it here, or build it with TRT_VERSION_COMPATIBLE=1")


def open_runner(engine_path: Path, profile_index: int, name: str | None = None):
    """Polygraphy's TrtRunner over a saved engine, bound to one optimization profile (GPU hosts only)."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name=name, optimization_profile=profile_index)


def trt_runner(engine_path: Path, profile_index: int, name: str | None = None):
    """A runner over a saved engine, after checking that this host's TensorRT can load it."""
    check_engine_loads_here(engine_path, read_engine_card(engine_path), tensorrt_version())
    return open_runner(engine_path, profile_index, name)


def engine_profile(engine_path: Path, profile_index: int) -> dict:
    return json.loads((engine_path.parent / PROFILES_FILE).read_text())[profile_index]


def engine_profile_batches(engine_path: Path) -> tuple[tuple[int, int], ...]:
    """Each of the engine's profiles' (min, max) batch, in profile order (its Triton config needs them)."""
    return tuple((p["batch"][0], p["batch"][2]) for p in json.loads((engine_path.parent / PROFILES_FILE).read_text()))


def chunked(run: Callable[[dict[str, np.ndarray]], np.ndarray], feeds: dict[str, np.ndarray], max_batch: int) -> np.ndarray:
    """`run` over at most `max_batch` rows at a time (a profile's largest batch), each result
    copied out before the next call: TensorRT runners write every result into one reused buffer."""
    rows = len(next(iter(feeds.values())))
    parts = [np.array(run({k: v[i : i + max_batch] for k, v in feeds.items()}), dtype=np.float32, copy=True)
             for i in range(0, rows, max_batch)]
    return np.concatenate(parts)


class TrtEmbedder:
    """Runs a built engine through a Polygraphy TrtRunner bound to one profile (GPU hosts only).
    Use it in a `with` block (or `close()` it): an active runner holds its execution context and
    device buffers until it is deactivated."""

    def __init__(self, runner, max_batch: int):
        self.runner = runner
        self.max_batch = max_batch
        self.runner.activate()

    def close(self) -> None:
        if self.runner.is_active:
            self.runner.deactivate()

    def __enter__(self) -> "TrtEmbedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def from_engine(cls, engine_path: Path, profile_index: int) -> "TrtEmbedder":
        runner = trt_runner(engine_path, profile_index)
        return cls(runner, engine_profile(engine_path, profile_index)["batch"][2])

    def embed(self, batch: EncodedBatch) -> np.ndarray:
        feeds = {INPUT_NAMES[0]: batch.input_ids, INPUT_NAMES[1]: batch.attention_mask}
        return chunked(lambda f: self.runner.infer(f)[OUTPUT_NAME], feeds, self.max_batch)
