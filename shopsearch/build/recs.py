"""Recommender checkpoint -> verified user encoder + item index -> the recommendation models and
ensembles of a Triton repository (laid out by `layout_repository`, with or without search)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from shopsearch.build.options import BuildOptions
from shopsearch.build.rec_configs import (
    item_embedding_config, item_lookup_config, rec_postprocess_config, rec_ranker_config, user_encoder_config,
    user_encoder_gpu_config,
)
from shopsearch.build.versions import model_version
from shopsearch.core.index import INDEX_MANIFEST, INDEX_VECTORS, CatalogIndex
from shopsearch.core.provenance import file_sha256, git_revision, utc_timestamp
from shopsearch.core.recommender import REC_WEIGHTS, load_rec_catalog, load_recommender
from shopsearch.core.results import CATALOG_FILE, CatalogLookup
from shopsearch.errors import ConfigError
from shopsearch.export.onnx import read_signature
from shopsearch.export.tensorrt import BUILD_COMMAND_FILE, ENGINE_CARD, ENGINE_FILE, PROFILES_FILE, engine_profile_batches
from shopsearch.export.user_encoder import check_user_encoder, export_user_encoder
from shopsearch.serving.rec_steps import POPULARITY_FILE, USER_ENCODER_FILE
from shopsearch.triton.ensemble import load_declaration, wire_ensemble
from shopsearch.triton.model_config import DynamicBatching
from shopsearch.triton.repository import ModelVersion, layout_repository

MAX_K = 100  # the most products one request may ask for (TOPK)
MAX_SEEN = 256  # history + EXCLUDE rows a response leaves out
REC_ENSEMBLES = ("recommend", "similar_items")


def build_rec_models(checkpoint: Path, work: Path, batching: DynamicBatching, top_k: int = 10, threads: int = 0,
                     target: str = "cpu", tuning=None, provenance: dict | None = None, log=print,
                     gpu_backend: str = "onnxruntime", trt_version_compatible: bool = False) -> tuple[list[ModelVersion], dict]:
    """The five recommendation models and two ensembles, each artifact checked before it is laid out.
    TARGET=gpu: the user encoder runs natively on the GPU (a TensorRT FP16 engine, or ONNX Runtime);
    the other models stay Python."""
    started = time.time()
    model, card = load_recommender(checkpoint)
    item_ids, titles, counts, probes = load_rec_catalog(checkpoint)
    if len(item_ids) != model.config.n_items:
        raise ConfigError("user_encoder", "n_items", f"checkpoint catalog has {len(item_ids)} items, the model {model.config.n_items}")
    if not 1 <= top_k <= MAX_K:
        raise ConfigError("rec_postprocess", "top_k", f"must be between 1 and {MAX_K}")
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = export_user_encoder(model, work / "user_encoder" / USER_ENCODER_FILE)
    signature = read_signature(onnx_path)
    vectors = model.catalog_vectors()
    onnx_parity = check_user_encoder(model, onnx_path, probes or [[0]], vectors)
    parity = {"onnx_fp32": onnx_parity}
    log(f"user_encoder parity: max abs diff {onnx_parity['max_abs_diff']:.2e}, top-10 overlap {onnx_parity['top10_overlap']:.4f}")
    encoder_id = file_sha256(onnx_path)
    index = CatalogIndex(vectors, encoder_id)
    index.save(work / "rec_index")
    CatalogLookup(item_ids, titles).save(work / "rec_catalog")
    (work / "rec_catalog" / POPULARITY_FILE).write_text(json.dumps({"counts": [int(c) for c in counts]}))

    encoder_files: dict[str, Path] = {USER_ENCODER_FILE: onnx_path}
    lookup = item_lookup_config(signature, MAX_SEEN, batching)
    if target == "cpu":
        encoder = user_encoder_config(signature, len(item_ids), threads, batching)
    elif gpu_backend == "tensorrt":
        engine, engine_parity = _user_encoder_engine(model, onnx_path, probes or [[0]], vectors, work, trt_version_compatible)
        parity.update(engine_parity)
        log(f"user_encoder TensorRT FP16 parity: max abs diff {engine_parity['trt_fp16']['max_abs_diff']:.2e}")
        encoder = user_encoder_gpu_config(signature, batching, "tensorrt", engine_profile_batches(engine))
        encoder_files = {name: engine.parent / name for name in (ENGINE_FILE, BUILD_COMMAND_FILE, PROFILES_FILE, ENGINE_CARD)}
    else:
        encoder = user_encoder_gpu_config(signature, batching)
    embedding = item_embedding_config(signature, batching)
    ranker = rec_ranker_config(signature, min(MAX_K + MAX_SEEN, len(index)), encoder_id, batching)
    post = rec_postprocess_config(ranker, lookup, top_k, min(MAX_K, len(index)), batching)
    if tuning is not None:
        lookup, encoder, embedding, ranker, post = (tuning.apply(c) for c in (lookup, encoder, embedding, ranker, post))
    models = {c.name: c for c in (lookup, encoder, embedding, ranker, post)}
    ensembles = [wire_ensemble(load_declaration(name), models) for name in REC_ENSEMBLES]

    provenance = dict(provenance or {})
    provenance["recommender_sha256"] = file_sha256(checkpoint / REC_WEIGHTS)
    catalog_files = {CATALOG_FILE: work / "rec_catalog" / CATALOG_FILE}
    index_files = {INDEX_VECTORS: work / "rec_index" / INDEX_VECTORS, INDEX_MANIFEST: work / "rec_index" / INDEX_MANIFEST}
    versions = [
        model_version(lookup, catalog_files, provenance),
        model_version(encoder, encoder_files, {**provenance, "encoder_id": encoder_id, "parity": parity}),
        model_version(embedding, {INDEX_VECTORS: work / "rec_index" / INDEX_VECTORS}, {**provenance, "index_checksum": index.checksum()}),
        model_version(ranker, index_files, {**provenance, "encoder_id": encoder_id, "index_checksum": index.checksum()}),
        model_version(post, {**catalog_files, POPULARITY_FILE: work / "rec_catalog" / POPULARITY_FILE}, provenance),
        *(model_version(e, {}, provenance) for e in ensembles),
    ]
    manifest = {
        "checkpoint": str(checkpoint),
        "dataset": card.get("dataset", {}),
        "model_config": card.get("config", {}),
        "title_vectors": card.get("title_vectors"),
        "encoder_id": encoder_id,
        "index_checksum": index.checksum(),
        "items": len(item_ids),
        "parity": parity,
        "seconds": round(time.time() - started, 2),
        **{k: v for k, v in provenance.items() if k == "recommender_sha256"},
    }
    log(f"recommender: {len(item_ids)} items x {index.dim} dims, ensembles {', '.join(REC_ENSEMBLES)}")
    return versions, manifest


def _user_encoder_engine(model, onnx_path: Path, probes: list[list[int]], vectors, work: Path,
                         version_compatible: bool = False) -> tuple[Path, dict]:
    """A TensorRT FP16 engine of the exported user encoder (one profile: the batcher's batches of the
    fixed item window), from its FP16 ONNX graph; both gated against PyTorch like the FP32 graph."""
    from shopsearch.export.user_encoder import ITEMS_INPUT, trt_engine_runner
    from shopsearch.build.search_configs import MAX_BATCH_SIZE
    from shopsearch.export.tensorrt import FixedWidthProfile, build_engine, to_fp16_onnx
    from shopsearch.export.user_encoder import onnx_runner

    profile = FixedWidthProfile("batched", "dynamic batches of recommendation requests; the item window is fixed",
                                ITEMS_INPUT, model.config.max_length, (1, 32, MAX_BATCH_SIZE))
    fp16 = to_fp16_onnx(onnx_path, work / "user_encoder.fp16.onnx")
    parity = {"onnx_fp16": check_user_encoder(model, fp16, probes, vectors, "onnx_fp16", onnx_runner(fp16))}
    engine = build_engine(fp16, work / "user_encoder_engine", (profile,), version_compatible)
    with trt_engine_runner(engine) as run:
        parity["trt_fp16"] = check_user_encoder(model, onnx_path, probes, vectors, "trt_fp16", run)
    return engine, parity


def build_rec_repository(checkpoint: Path, out: Path, work: Path, top_k: int = 10, threads: int = 0,
                         batching: DynamicBatching | None = None, log=print) -> dict:
    """A repository with the recommendation models only (e.g. a catalog search is not built for)."""
    batching = batching or BuildOptions().batching
    provenance = {"built_at": utc_timestamp(), "code_version": git_revision()}
    versions, manifest = build_rec_models(checkpoint, work, batching, top_k, threads, provenance=provenance, log=log)
    full = {**provenance, "recommender": manifest, "options": {"top_k": top_k, "intra_op_threads": threads}}
    layout_repository(out, versions, full)
    return full
