"""`make build-repo`: checkpoint -> verified artifacts -> catalog index -> Triton model repository.

TARGET=cpu (default): Python-backend models; the embedder runs ONNX Runtime on the artifact chosen
by PRECISION (fp32, fused, int8). TARGET=gpu: the embedder becomes a native `tensorrt_plan`
(FP16 engine) or `onnxruntime_onnx` model on KIND_GPU for NVIDIA's Triton container; tokenizer,
ranker and postprocess stay Python. Every artifact passes the parity gate or the build fails.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shopsearch.data.schema import Dataset
from shopsearch.embedding import OnnxEmbedder
from shopsearch.errors import ConfigError
from shopsearch.export import export_onnx, read_signature
from shopsearch.hybrid import LEXICAL_DIR, RERANKER_ONNX, LexicalScorer, catalog_popularity
from shopsearch.index import INDEX_MANIFEST, INDEX_VECTORS, CatalogIndex
from shopsearch.recs.build import build_rec_models
from shopsearch.recs.model import load_rec_catalog
from shopsearch.rerank_training import RERANKER_DIR
from shopsearch.reranker import RERANKER_CARD, export_reranker, load_reranker
from shopsearch.modeling import CHECKPOINT_WEIGHTS, load_checkpoint
from shopsearch.optimize import PARITY, PRECISIONS, ROW_BY_ROW, fuse_transformer, quantize_int8
from shopsearch.parity import (
    RetrievalSet, compare, gate, onnxrt_runner, polygraphy_compare, reference_outputs, run_side,
)
from shopsearch.results import CATALOG_FILE, CatalogLookup
from shopsearch.serving.ensemble import load_declaration, wire_ensemble
from shopsearch.serving.model_config import DynamicBatching
from shopsearch.serving.repository import ModelVersion, layout_repository, repository_size_bytes
from shopsearch.serving.search_models import (
    embedder_config, embedder_gpu_config, postprocess_config, ranker_config, tokenizer_config,
)
from shopsearch.serving.steps import EMBEDDER_FILE
from shopsearch.serving.tuning import Tuning
from shopsearch.tensorrt_build import (
    BUILD_COMMAND_FILE, ENGINE_FILE, PROFILES_FILE, TrtEmbedder, build_engine, profiles_for, require_tensorrt,
    token_length_stats, trt_runner,
)
from shopsearch.tokenization import TOKENIZER_FILE, TextEncoder
from shopsearch.training import git_revision

TARGETS = ("cpu", "gpu")
GPU_BACKENDS = ("tensorrt", "onnxruntime")
GPU_PAD_MULTIPLE = 8


@dataclass(frozen=True)
class BuildOptions:
    target: str = "cpu"
    precision: str = "int8"  # cpu target: which ONNX artifact the embedder serves
    gpu_backend: str = "tensorrt"
    n_candidates: int = 100
    top_k: int = 10
    intra_op_threads: int = 0
    max_queue_delay_us: int = 1000
    # Overload: each model queues at most this many requests and none longer than this; beyond,
    # Triton refuses at once (UNAVAILABLE) so clients fail fast and retry elsewhere.
    max_queue_size: int = 64
    queue_timeout_us: int = 2_000_000
    parity_queries: int = 0  # dev queries for retrieval parity; 0: the whole split

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError("build", "TARGET", f"'{self.target}' is not one of {TARGETS}")
        if self.precision not in PRECISIONS:
            raise ConfigError("build", "PRECISION", f"'{self.precision}' is not one of {PRECISIONS}")
        if self.gpu_backend not in GPU_BACKENDS:
            raise ConfigError("build", "GPU_BACKEND", f"'{self.gpu_backend}' is not one of {GPU_BACKENDS}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _cpu_artifacts(fp32: Path, model, precision: str, work: Path) -> tuple[list[tuple[str, Path]], dict]:
    """The chain fp32 -> fused -> int8, as far as the precision asks; each link is gated."""
    chain = [("onnx_fp32", fp32)]
    details: dict = {}
    if precision in ("fused", "int8"):
        fused, fused_ops = fuse_transformer(fp32, work / "model.fused.onnx", model.config.num_heads, model.config.hidden_size)
        details["fused_operators"] = fused_ops
        chain.append(("onnx_fused", fused))
    if precision == "int8":
        chain.append(("onnx_int8", quantize_int8(chain[-1][1], work / "model.int8.onnx")))
    return chain, details


def _hybrid_artifacts(reranker_dir: Path, dataset: Dataset, work: Path, log) -> tuple[tuple[int, int], dict[str, Path], dict]:
    """The re-ranker as ONNX (checked against PyTorch) and the BM25 index of the catalog; each
    carries its own checksum, so index, lexical index and re-ranker are versioned separately."""
    import numpy as np

    model, card = load_reranker(reranker_dir)
    onnx_path = work / "ranker" / RERANKER_ONNX
    export = export_reranker(model, onnx_path, np.load(reranker_dir / "probe_features.npy"))
    lexical_dir = work / "ranker" / LEXICAL_DIR
    # Popularity counted exactly as during re-ranker training (same holdout), so served features match.
    holdout = card.get("holdout", 0.0)
    counted = dataset.with_holdout(holdout) if holdout else dataset
    LexicalScorer.build(dataset.products, catalog_popularity(counted, "train")).save(lexical_dir)
    files = {RERANKER_ONNX: onnx_path, **{f"{LEXICAL_DIR}/{p.name}": p for p in sorted(lexical_dir.iterdir())}}
    cfg = card["config"]
    manifest = {
        "mode": "hybrid",
        "reranker_sha256": file_sha256(onnx_path),
        "reranker_export": export,
        "reranker_card": {k: card[k] for k in ("features", "config", "training_queries", "eval_metrics") if k in card},
        "lexical_sha256": {name: file_sha256(path) for name, path in files.items() if name.startswith(LEXICAL_DIR)},
    }
    log(f"hybrid ranker: BM25 top {cfg['n_lexical']} + dense top {cfg['n_dense']}, re-ranker export max abs diff {export['max_abs_diff']:.2e}")
    return (cfg["n_dense"], cfg["n_lexical"]), files, manifest


def build_repository(checkpoint: Path, dataset: Dataset, out: Path, work: Path,
                     options: BuildOptions = BuildOptions(), log=print, tuning: Tuning | None = None,
                     rec_checkpoint: Path | None = None) -> dict:
    """`tuning` (from `make tune`) sets each model's instances and dynamic batching; None keeps the defaults.
    `rec_checkpoint`: also lay out the recommendation models and the recommend / similar_items ensembles."""
    if options.target == "gpu" and options.gpu_backend == "tensorrt":
        require_tensorrt()  # stop before any work when the engine cannot be built here
    timings: dict[str, float] = {}
    started = time.time()
    model, card = load_checkpoint(checkpoint)
    cfg = model.config
    work.mkdir(parents=True, exist_ok=True)
    query_encoder = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, cfg.max_query_length)
    product_encoder = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, cfg.max_product_length)

    t = time.time()
    fp32 = export_onnx(model, work / "model.fp32.onnx")
    signature = read_signature(fp32)
    data = RetrievalSet.from_dataset(dataset, options.parity_queries)
    reference = reference_outputs(model, query_encoder, product_encoder, data)
    timings["export_and_reference_s"] = round(time.time() - t, 2)

    gpu_details: dict = {}
    if options.target == "cpu":
        chain, details = _cpu_artifacts(fp32, model, options.precision, work)
    elif options.gpu_backend == "onnxruntime":
        chain, details = [("onnx_fp32", fp32)], {}
    else:
        stats = token_length_stats(query_encoder, data.query_texts or data.probes)
        profiles = profiles_for(stats, cfg.max_query_length, 256, GPU_PAD_MULTIPLE)
        engine = build_engine(fp32, work / "engine", profiles, fp16=True)
        chain, details = [("onnx_fp32", fp32), ("trt_fp16", engine)], {}
        gpu_details = {"token_lengths": stats, "profiles": [asdict(p) for p in profiles]}

    parity: dict[str, dict] = {}
    served_side = None
    parity_started = time.time()
    for name, path in chain:
        t = time.time()
        if name == "trt_fp16":
            embedder = TrtEmbedder(path, profile_index=1)
        else:
            embedder = OnnxEmbedder(path, options.intra_op_threads, row_by_row=name in ROW_BY_ROW)
        side = run_side(embedder, query_encoder, product_encoder, data)
        report = gate(compare(name, reference, side, PARITY[name]))
        parity[name] = report.to_json()
        if name in ("onnx_fused", "trt_fp16"):
            # Polygraphy's per-tensor check of the rewritten graph / engine against the FP32 graph.
            feeds = [{"input_ids": b.input_ids, "attention_mask": b.attention_mask}
                     for b in (query_encoder.encode_texts(data.probes[i : i + 16]) for i in range(0, 48, 16))]
            candidate = trt_runner(path, 1, name) if name == "trt_fp16" else onnxrt_runner(path, name)
            parity[name]["polygraphy_vs_onnx_fp32"] = polygraphy_compare(
                onnxrt_runner(fp32, "onnx_fp32"), candidate, feeds, atol=PARITY[name].max_abs_diff)
        parity[name]["seconds"] = round(time.time() - t, 2)
        log(f"parity {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in report.numbers.items()))
        served_side = side
    served_name, served_path = chain[-1]
    timings["artifacts_and_parity_s"] = round(time.time() - parity_started, 2)

    # The index is embedded by the served artifact itself, so queries and products share a space.
    embedder_id = file_sha256(served_path)
    index = CatalogIndex(served_side.catalog_vectors, embedder_id)
    index.save(work / "index")
    CatalogLookup.from_products(dataset.products).save(work / "catalog")
    log(f"catalog index: {len(index)} products x {index.dim} dims, embedded by {served_name}")

    provenance = {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": git_revision(),
        "checkpoint_sha256": file_sha256(checkpoint / CHECKPOINT_WEIGHTS),
        "training_data_fingerprint": card.get("dataset", {}).get("fingerprint"),
        "catalog_fingerprint": dataset.fingerprint(),
    }
    pad = GPU_PAD_MULTIPLE if options.target == "gpu" else 0
    batching = DynamicBatching(max_queue_delay_us=options.max_queue_delay_us, max_queue_size=options.max_queue_size,
                               queue_timeout_us=options.queue_timeout_us)
    if options.target == "cpu":
        emb = embedder_config(signature, cfg.vocab_size, cfg.max_positions, options.intra_op_threads, batching,
                              row_by_row=served_name in ROW_BY_ROW)
        embedder_files = {EMBEDDER_FILE: served_path}
    else:
        gpu_batching = DynamicBatching(preferred_batch_sizes=(8, 32), max_queue_delay_us=options.max_queue_delay_us,
                                       max_queue_size=options.max_queue_size, queue_timeout_us=options.queue_timeout_us)
        profiles = ("0", "1") if options.gpu_backend == "tensorrt" else ("0",)
        emb = embedder_gpu_config(signature, options.gpu_backend, gpu_batching, profiles)
        embedder_files = ({ENGINE_FILE: served_path, BUILD_COMMAND_FILE: served_path.parent / BUILD_COMMAND_FILE,
                           PROFILES_FILE: served_path.parent / PROFILES_FILE}
                          if options.gpu_backend == "tensorrt" else {EMBEDDER_FILE: served_path})
    ranker_files = {INDEX_VECTORS: work / "index" / INDEX_VECTORS, INDEX_MANIFEST: work / "index" / INDEX_MANIFEST}
    hybrid, ranker_manifest = None, {"mode": "dense"}
    if (checkpoint / RERANKER_DIR / RERANKER_CARD).exists():
        hybrid, files, ranker_manifest = _hybrid_artifacts(checkpoint / RERANKER_DIR, dataset, work, log)
        ranker_files.update(files)
    tok = tokenizer_config(signature, cfg.max_query_length, batching, pad_multiple=pad, emit_text=hybrid is not None)
    rank = ranker_config(emb.outputs[0], min(options.n_candidates, len(index)), embedder_id, batching, hybrid)
    post = postprocess_config(rank, options.top_k, batching)
    tuning = tuning or Tuning()
    tok, emb, rank, post = (tuning.apply(c) for c in (tok, emb, rank, post))
    search = wire_ensemble(load_declaration("search"), {c.name: c for c in (tok, emb, rank, post)})

    rec_versions: list[ModelVersion] = []
    rec_manifest = None
    if rec_checkpoint is not None:
        t = time.time()
        rec_versions, rec_manifest = build_rec_models(rec_checkpoint, work / "rec", batching, options.top_k,
                                                      options.intra_op_threads, options.target, tuning, provenance, log,
                                                      gpu_backend=options.gpu_backend)
        same = load_rec_catalog(rec_checkpoint)[0] == [p.product_id for p in dataset.products]
        rec_manifest["same_catalog_as_search"] = same
        if not same:
            log("warning: the recommender was trained over another catalog than the one search serves")
        timings["recommender_s"] = round(time.time() - t, 2)

    manifest = {
        **provenance,
        "target": options.target,
        "served_embedder": served_name,
        "checkpoint": {"path": str(checkpoint), "dataset": card.get("dataset", {}), "dev_metrics": card.get("dev_metrics", {})},
        "catalog": {"dataset": dataset.name, "fingerprint": dataset.fingerprint(), "products": len(dataset.products)},
        "embedder_id": embedder_id,
        "index_checksum": index.checksum(),
        "parity": parity,
        "ranker": ranker_manifest,
        "artifact_details": {**details, **gpu_details},
        "options": asdict(options),
        "tuning": {"models": tuning.to_json()["models"], "measured_on": tuning.measured.get("machine")},
        **({"recommender": rec_manifest} if rec_manifest else {}),
    }
    layout_repository(
        out,
        [
            ModelVersion(tok, {TOKENIZER_FILE: checkpoint / TOKENIZER_FILE}, manifest=provenance),
            ModelVersion(emb, embedder_files, manifest={**provenance, "artifact": served_name, "embedder_id": embedder_id,
                                                        "parity": parity[served_name]}),
            ModelVersion(rank, ranker_files,
                         manifest={**provenance, "embedder_id": embedder_id, "index_checksum": index.checksum(), **ranker_manifest}),
            ModelVersion(post, {CATALOG_FILE: work / "catalog" / CATALOG_FILE}, manifest=provenance),
            ModelVersion(search, manifest=provenance),
            *rec_versions,
        ],
        manifest,
    )
    timings["total_s"] = round(time.time() - started, 2)
    size = repository_size_bytes(out)
    log(f"model repository: {out} ({size / 1e6:.1f} MB, target {options.target}, embedder {served_name}, {timings['total_s']}s)")
    return {**manifest, "timings": timings, "repository_bytes": size}
