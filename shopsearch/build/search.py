"""`make build-repo`: checkpoint -> verified artifacts -> catalog index -> Triton model repository.

TARGET=cpu (default): Python-backend models; the embedder runs ONNX Runtime on the artifact chosen
by PRECISION (fp32, fused, int8). TARGET=gpu: the embedder becomes a native `tensorrt_plan`
(FP16 engine) or `onnxruntime_onnx` model on KIND_GPU for NVIDIA's Triton container; tokenizer,
ranker and postprocess stay Python. Every artifact passes the parity gate or the build fails.

`build_repository` reads top to bottom as the stages of a build: load the checkpoint, export and
measure the reference, derive the artifact chain, gate each link, index the catalog with the served
artifact, derive the configs, add the recommender, lay out the repository.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shopsearch.build.options import GPU_PAD_MULTIPLE, BuildOptions
from shopsearch.build.recs import build_rec_models
from shopsearch.build.search_configs import (
    MAX_BATCH_SIZE, embedder_config, embedder_gpu_config, postprocess_config, ranker_config, tokenizer_config,
)
from shopsearch.core.embedding import OnnxEmbedder
from shopsearch.core.filters import FACETS_ARRAYS, FACETS_MANIFEST, CatalogFacets
from shopsearch.core.hybrid import LEXICAL_DIR, RERANKER_ONNX, RESCORER_ONNX, LexicalScorer, popularity_feature
from shopsearch.build.versions import model_version
from shopsearch.core.ann import ANN_FILE, IndexSpec, recall_at, tune_search
from shopsearch.core.index import INDEX_MANIFEST, INDEX_VECTORS, CatalogIndex
from shopsearch.core.modeling import CHECKPOINT_WEIGHTS, BiEncoder, load_checkpoint
from shopsearch.core.provenance import file_sha256, git_revision, utc_timestamp
from shopsearch.core.recommender import load_rec_catalog
from shopsearch.core.reranker import PROBE_FEATURES, RERANKER_CARD, RERANKER_DIR, RerankerCascade, load_reranker
from shopsearch.core.results import CATALOG_FILE, CatalogLookup
from shopsearch.core.tokenization import TOKENIZER_FILE, TextEncoder
from shopsearch.data.schema import Dataset
from shopsearch.errors import ConfigError, FusionUnavailableError, IndexRecallError
from shopsearch.export.onnx import export_onnx, read_signature
from shopsearch.export.optimize import PARITY, ROW_BY_ROW, attention_shape, fuse_transformer, quantize_int8
from shopsearch.export.parity import (
    RetrievalSet, SideOutputs, compare, gate, onnxrt_runner, polygraphy_compare, reference_outputs, run_side,
)
from shopsearch.export.reranker import export_reranker
from shopsearch.export.tensorrt import (
    BUILD_COMMAND_FILE, ENGINE_CARD, ENGINE_FILE, PROFILES_FILE, ShapeProfile, TrtEmbedder, build_engine,
    engine_profile_batches, longest_sequence, profiles_for, read_engine_card, require_coverage, require_tensorrt,
    to_fp16_onnx, token_length_stats, trt_runner,
)
from shopsearch.serving.steps import EMBEDDER_FILE
from shopsearch.triton.ensemble import load_declaration, wire_ensemble
from shopsearch.triton.model_config import DynamicBatching
from shopsearch.triton.repository import RESPONSE_CACHE, ModelVersion, layout_repository, repository_size_bytes
from shopsearch.triton.tuning import Tuning

Chain = list[tuple[str, Path]]  # (artifact name, file), the served artifact last
RECALL_AT = 100  # the approximate index's gate: recall of exact search's top 100


@dataclass
class SearchCheckpoint:
    """The trained bi-encoder being built, with its card and the tokenizers of both sides."""

    path: Path
    model: BiEncoder
    card: dict
    query_encoder: TextEncoder
    product_encoder: TextEncoder

    @classmethod
    def load(cls, checkpoint: Path) -> "SearchCheckpoint":
        model, card = load_checkpoint(checkpoint)
        tokenizer = checkpoint / TOKENIZER_FILE
        return cls(checkpoint, model, card, TextEncoder.from_file(tokenizer, model.config.max_query_length),
                   TextEncoder.from_file(tokenizer, model.config.max_product_length))


def build_repository(checkpoint: Path, dataset: Dataset, out: Path, work: Path,
                     options: BuildOptions = BuildOptions(), log=print, tuning: Tuning | None = None,
                     rec_checkpoint: Path | None = None, reference: SideOutputs | None = None) -> dict:
    """`tuning` (from `make tune`) sets each model's instances and dynamic batching; None keeps the defaults.
    `rec_checkpoint`: also lay out the recommendation models and the recommend / similar_items ensembles.
    `reference`: the PyTorch model's parity outputs (`reference_outputs` on the same checkpoint,
    dataset and parity_queries), when the caller builds one checkpoint more than once."""
    if options.target == "gpu" and options.gpu_backend == "tensorrt":
        require_tensorrt()  # stop before any work when the engine cannot be built here
    timings: dict[str, float] = {}
    started = time.time()
    source = SearchCheckpoint.load(checkpoint)
    work.mkdir(parents=True, exist_ok=True)

    t = time.time()
    fp32 = export_onnx(source.model, work / "model.fp32.onnx")
    data = RetrievalSet.from_dataset(dataset, options.parity_queries)
    if reference is None:
        reference = reference_outputs(source.model, source.query_encoder, source.product_encoder, data)
    timings["export_and_reference_s"] = round(time.time() - t, 2)

    chain, details = artifact_chain(fp32, source, data, options, work)
    t = time.time()
    parity, served_side = gate_chain(chain, reference, source, data, options, log)
    timings["artifacts_and_parity_s"] = round(time.time() - t, 2)
    served_name, served_path = chain[-1]

    # The index is embedded by the served artifact itself, so queries and products share a space.
    embedder_id = file_sha256(served_path)
    t = time.time()
    index, index_report = index_catalog(served_side, embedder_id, options.index, work / "index", log)
    timings["index_s"] = round(time.time() - t, 2)
    CatalogLookup.from_products(dataset.products).save(work / "catalog")
    log(f"catalog index: {len(index)} products x {index.dim} dims, embedded by {served_name}, {options.index.kind} search")

    provenance = {
        "built_at": utc_timestamp(),
        "code_version": git_revision(),
        "checkpoint_sha256": file_sha256(checkpoint / CHECKPOINT_WEIGHTS),
        "training_data_fingerprint": source.card.get("dataset", {}).get("fingerprint"),
        "catalog_fingerprint": dataset.fingerprint(),
    }
    tuning = tuning or Tuning()
    versions, ranker_manifest = search_models(source, read_signature(fp32), chain, index, dataset, work, options,
                                              tuning, provenance, parity, log)
    rec_manifest = None
    if rec_checkpoint is not None:
        t = time.time()
        rec_versions, rec_manifest = recommendation_models(rec_checkpoint, dataset, work, options, tuning, provenance, log)
        versions += rec_versions
        timings["recommender_s"] = round(time.time() - t, 2)

    manifest = {
        **provenance,
        "target": options.target,
        "served_embedder": served_name,
        "checkpoint": {"path": str(checkpoint), "dataset": source.card.get("dataset", {}),
                       "dev_metrics": source.card.get("dev_metrics", {})},
        "catalog": {"dataset": dataset.name, "fingerprint": dataset.fingerprint(), "products": len(dataset.products)},
        "embedder_id": embedder_id,
        "index_checksum": index.checksum(),
        "index": index_report,
        RESPONSE_CACHE: response_cache_manifest(options),
        "parity": parity,
        "ranker": ranker_manifest,
        "artifact_details": details,
        "options": asdict(options),
        "tuning": {"models": tuning.to_json()["models"], "measured_on": tuning.measured.get("machine")},
        **({"recommender": rec_manifest} if rec_manifest else {}),
    }
    layout_repository(out, versions, manifest)
    timings["total_s"] = round(time.time() - started, 2)
    size = repository_size_bytes(out)
    log(f"model repository: {out} ({size / 1e6:.1f} MB, target {options.target}, embedder {served_name}, {timings['total_s']}s)")
    return {**manifest, "models": [v.config.name for v in versions], "timings": timings, "repository_bytes": size}


def response_cache_manifest(options: BuildOptions) -> dict | None:
    """What the build manifest tells the server about the response cache (TritonServer sizes it from this)."""
    return {"bytes": options.response_cache_mb << 20, "models": ["search"]} if options.response_cache_mb else None


def index_catalog(served: SideOutputs, embedder_id: str, spec: IndexSpec, out: Path, log) -> tuple[CatalogIndex, dict]:
    """The served artifact's catalog vectors indexed as `spec` says and saved in `out`. An
    approximate index is measured against exact search on the split's queries (recall@100) and
    refused below `spec.min_recall` (IndexRecallError): the build never ships an index that loses
    more of the catalog than the recipe allows."""
    vectors = served.catalog_vectors
    bar = None
    if spec.approximate:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(vectors), desc=f"{spec.kind} index", unit="product", disable=len(vectors) < 100_000)
    t = time.time()
    index = CatalogIndex.build(vectors, embedder_id, spec, threads=os.cpu_count(),
                               progress=(lambda done, _: bar.update(done - bar.n)) if bar else None)
    if bar is not None:
        bar.close()
    report = {"kind": spec.kind, "build_s": round(time.time() - t, 2)}
    if spec.approximate:
        queries = served.query_vectors
        k = min(RECALL_AT, len(index))
        exact_rows = index.exact_search(queries, k)[0]
        index.spec, report["tuning"] = tune_search(index.ann, spec, queries, exact_rows, lambda q, n: index.search(q, n)[0])
        spec = index.spec
        recall = recall_at(index.search(queries, k)[0], exact_rows)
        report.update({f"recall@{RECALL_AT}_vs_exact": round(recall, 4), "recall_queries": len(queries)})
        log(f"{spec.kind} index: recall@{RECALL_AT} {recall:.4f} against exact search on {len(queries)} queries "
            f"(threshold {spec.min_recall}), built in {report['build_s']}s")
        if recall < spec.min_recall:
            raise IndexRecallError(spec.kind, recall, spec.min_recall, len(queries))
    report["spec"] = spec.to_json()
    manifest = index.save(out)
    report["bytes"] = sum(f.stat().st_size for f in out.iterdir())
    report["ann_bytes"] = manifest.get("ann_bytes", 0)
    return index, report


def artifact_chain(fp32: Path, source: SearchCheckpoint, data: RetrievalSet, options: BuildOptions,
                   work: Path) -> tuple[Chain, dict]:
    """The artifacts to gate, in order, the served one last. CPU: fp32 -> fused -> int8, as far as
    PRECISION asks; GPU: the FP32 graph for ONNX Runtime, or a TensorRT FP16 engine built from it."""
    if options.target == "cpu":
        chain: Chain = [("onnx_fp32", fp32)]
        details: dict = {}
        shape = attention_shape(source.model.config)
        if options.precision == "fused" and shape is None:
            raise ConfigError("build", "PRECISION", "fused: this encoder's layers have different head counts, which "
                              "ONNX Runtime's attention fusion cannot take; build fp32 or int8")
        if options.precision in ("fused", "int8") and shape is not None:
            try:
                fused, fused_ops = fuse_transformer(fp32, work / "model.fused.onnx", *shape)
                details["fused_operators"] = fused_ops
                chain.append(("onnx_fused", fused))
            except FusionUnavailableError as exc:
                if options.precision == "fused":
                    raise
                # INT8 does not need the fusion, only runs faster with it: quantize the plain graph.
                details["fused_operators"] = f"none: {exc}"
        elif options.precision == "int8":
            details["fused_operators"] = "none: head counts differ per layer"
        if options.precision == "int8":
            chain.append(("onnx_int8", quantize_int8(chain[-1][1], work / "model.int8.onnx")))
        return chain, details
    if options.gpu_backend == "onnxruntime":
        return [("onnx_fp32", fp32)], {}
    profiles, lengths = engine_profiles(source, data)
    fp16 = to_fp16_onnx(fp32, work / "model.fp16.onnx")
    engine = build_engine(fp16, work / "engine", profiles, options.trt_version_compatible)
    return ([("onnx_fp32", fp32), ("onnx_fp16", fp16), ("trt_fp16", engine)],
            {"token_lengths": lengths, "profiles": [asdict(p) for p in profiles], "engine": read_engine_card(engine)})


def engine_profiles(source: SearchCheckpoint, data: RetrievalSet) -> tuple[tuple[ShapeProfile, ...], dict]:
    """The embedder engine's profiles: tuned for the measured query lengths, reaching the longest
    sequence either side sends (the build embeds the catalog through the engine; the server sends
    queries), checked against the longest tokenized catalog text and dev query."""
    stats = token_length_stats(source.query_encoder, data.query_texts or data.probes)
    max_length = max(source.query_encoder.max_length, source.product_encoder.max_length)
    profiles = profiles_for(stats, max_length, MAX_BATCH_SIZE, GPU_PAD_MULTIPLE)
    longest = {"catalog": longest_sequence(source.product_encoder, data.product_texts),
               "queries": longest_sequence(source.query_encoder, data.query_texts + data.probes)}
    for profile in profiles:
        require_coverage("embedder", profile, MAX_BATCH_SIZE, max(longest.values()))
    return profiles, {**stats, "longest": longest}


def gate_chain(chain: Chain, reference: SideOutputs, source: SearchCheckpoint, data: RetrievalSet,
               options: BuildOptions, log) -> tuple[dict[str, dict], SideOutputs]:
    """Every artifact against the PyTorch model (the build fails on the first one out of bounds);
    rewritten graphs and engines also tensor by tensor against the FP32 graph with Polygraphy.
    Returns the parity numbers per artifact and the served (last) artifact's outputs."""
    fp32 = chain[0][1]
    parity: dict[str, dict] = {}
    side = reference
    for name, path in chain:
        t = time.time()
        if name == "trt_fp16":
            with TrtEmbedder.from_engine(path, profile_index=1) as embedder:  # "batched": the catalog's batches
                side = run_side(embedder, source.query_encoder, source.product_encoder, data)
        else:
            embedder = OnnxEmbedder(path, options.intra_op_threads, row_by_row=name in ROW_BY_ROW)
            side = run_side(embedder, source.query_encoder, source.product_encoder, data)
        report = gate(compare(name, reference, side, PARITY[name]))
        parity[name] = report.to_json()
        if name in ("onnx_fused", "onnx_fp16", "trt_fp16"):
            feeds = [{"input_ids": b.input_ids, "attention_mask": b.attention_mask}
                     for b in (source.query_encoder.encode_texts(data.probes[i : i + 16]) for i in range(0, 48, 16))]
            candidate = trt_runner(path, 1, name) if name == "trt_fp16" else onnxrt_runner(path, name)
            parity[name]["polygraphy_vs_onnx_fp32"] = polygraphy_compare(
                onnxrt_runner(fp32, "onnx_fp32"), candidate, feeds, atol=PARITY[name].max_abs_diff)
        parity[name]["seconds"] = round(time.time() - t, 2)
        parity[name]["dense_metrics"] = {k: round(v, 4) for k, v in side.metrics.items()}
        parity[name]["catalog_seconds"] = side.catalog_seconds
        log(f"parity {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in report.numbers.items()))
    parity["pytorch_fp32"] = {"dense_metrics": {k: round(v, 4) for k, v in reference.metrics.items()},
                              "catalog_seconds": reference.catalog_seconds}
    return parity, side


def search_models(source: SearchCheckpoint, signature, chain: Chain, index: CatalogIndex, dataset: Dataset, work: Path,
                  options: BuildOptions, tuning: Tuning, provenance: dict, parity: dict, log) -> tuple[list[ModelVersion], dict]:
    """tokenizer -> embedder -> ranker -> postprocess and the `search` ensemble wiring them, each
    config derived from the artifacts (tensor names from the exported graph) and tuned."""
    cfg = source.model.config
    served_name, served_path = chain[-1]
    batching = options.batching
    if options.target == "cpu":
        emb = embedder_config(signature, cfg.vocab_size, cfg.max_positions, options.intra_op_threads, batching,
                              row_by_row=served_name in ROW_BY_ROW)
        embedder_files = {EMBEDDER_FILE: served_path}
    else:
        gpu_batching = DynamicBatching(preferred_batch_sizes=(8, 32), max_queue_delay_us=options.max_queue_delay_us,
                                       max_queue_size=options.max_queue_size, queue_timeout_us=options.queue_timeout_us)
        if options.gpu_backend == "tensorrt":
            emb = embedder_gpu_config(signature, "tensorrt", gpu_batching, engine_profile_batches(served_path))
            embedder_files = {name: served_path.parent / name for name in (ENGINE_FILE, BUILD_COMMAND_FILE, PROFILES_FILE, ENGINE_CARD)}
        else:
            emb = embedder_gpu_config(signature, "onnxruntime", gpu_batching)
            embedder_files = {EMBEDDER_FILE: served_path}
    ranker_files = {name: work / "index" / name for name in (INDEX_VECTORS, INDEX_MANIFEST, ANN_FILE)
                    if (work / "index" / name).exists()}
    CatalogFacets.from_products(dataset.products).save(work / "facets")  # what the filters read
    ranker_files.update({name: work / "facets" / name for name in (FACETS_ARRAYS, FACETS_MANIFEST)})
    hybrid, ranker_manifest = None, {"mode": "dense"}
    if (source.path / RERANKER_DIR / RERANKER_CARD).exists():
        hybrid, files, ranker_manifest = hybrid_ranker_artifacts(source.path / RERANKER_DIR, dataset, work, log)
        ranker_files.update(files)
    pad = GPU_PAD_MULTIPLE if options.target == "gpu" else 0
    tok = tokenizer_config(signature, cfg.max_query_length, batching, pad_multiple=pad, emit_text=hybrid is not None)
    rank = ranker_config(emb.outputs[0], min(options.n_candidates, len(index)), index.embedder_id, batching, hybrid)
    post = postprocess_config(rank, options.top_k, batching)
    tok, emb, rank, post = (tuning.apply(c) for c in (tok, emb, rank, post))
    search = wire_ensemble(load_declaration("search"), {c.name: c for c in (tok, emb, rank, post)})
    search = dataclasses.replace(search, response_cache=options.response_cache_mb > 0)
    embedder_manifest = {**provenance, "artifact": served_name, "embedder_id": index.embedder_id, "parity": parity[served_name]}
    versions = [
        model_version(tok, {TOKENIZER_FILE: source.path / TOKENIZER_FILE}, provenance),
        model_version(emb, embedder_files, embedder_manifest),
        model_version(rank, ranker_files, {**provenance, "embedder_id": index.embedder_id,
                                           "index_checksum": index.checksum(), "index": index.spec.to_json(),
                                           **ranker_manifest}),
        model_version(post, {CATALOG_FILE: work / "catalog" / CATALOG_FILE}, provenance),
        model_version(search, {}, provenance),
    ]
    return versions, ranker_manifest


def hybrid_ranker_artifacts(reranker_dir: Path, dataset: Dataset, work: Path, log) -> tuple[tuple[int, int, int], dict[str, Path], dict]:
    """The re-ranker as ONNX (checked against its in-process self: PyTorch's MLP or LightGBM's
    trees) and the BM25 index of the catalog; each carries its own checksum, so index, lexical
    index and re-ranker are versioned separately. A cascade's second stage is a second graph,
    gated the same way. Returns (dense candidates,
    BM25 candidates, rescore_top), the files and the manifest."""
    model, card = load_reranker(reranker_dir)
    probe = np.load(reranker_dir / PROBE_FEATURES)
    onnx_path, rescorer_path = work / "ranker" / RERANKER_ONNX, work / "ranker" / RESCORER_ONNX
    cascade = isinstance(model, RerankerCascade)
    export = export_reranker(model.first if cascade else model, onnx_path, probe)
    rescorer_export = export_reranker(model.second, rescorer_path, probe) if cascade else None
    lexical_dir = work / "ranker" / LEXICAL_DIR
    # Popularity counted exactly as during re-ranker training (same holdout), so served features match.
    holdout = card.get("holdout", 0.0)
    counted = dataset.with_holdout(holdout) if holdout else dataset
    cfg = card["config"]
    LexicalScorer.build(dataset.products, popularity_feature(counted, cfg.get("use_popularity", True))).save(lexical_dir)
    files = {RERANKER_ONNX: onnx_path, **({RESCORER_ONNX: rescorer_path} if cascade else {}),
             **{f"{LEXICAL_DIR}/{p.name}": p for p in sorted(lexical_dir.iterdir())}}
    manifest = {
        "mode": "hybrid",
        "reranker_sha256": file_sha256(onnx_path),
        "reranker_export": export,
        **({"rescorer_sha256": file_sha256(rescorer_path), "rescorer_export": rescorer_export,
            "rescore_top": model.top} if cascade else {}),
        "reranker_card": {k: card[k] for k in ("features", "config", "training_queries", "eval_metrics") if k in card},
        "lexical_sha256": {name: file_sha256(path) for name, path in files.items() if name.startswith(LEXICAL_DIR)},
    }
    log(f"hybrid ranker: BM25 top {cfg['n_lexical']} + dense top {cfg['n_dense']}, re-ranker ({cfg.get('kind', 'mlp')}) "
        f"export max abs diff {export['max_abs_diff']:.2e}"
        + (f"; its top {model.top} re-ordered by the trees, export max abs diff {rescorer_export['max_abs_diff']:.2e}" if cascade else ""))
    return (cfg["n_dense"], cfg["n_lexical"], model.top if cascade else 0), files, manifest


def recommendation_models(rec_checkpoint: Path, dataset: Dataset, work: Path, options: BuildOptions, tuning: Tuning,
                          provenance: dict, log) -> tuple[list[ModelVersion], dict]:
    """The recommendation models and ensembles beside search, noting whether both serve one catalog."""
    versions, manifest = build_rec_models(rec_checkpoint, work / "rec", options.batching, options.top_k,
                                          options.intra_op_threads, options.target, tuning, provenance, log,
                                          gpu_backend=options.gpu_backend, trt_version_compatible=options.trt_version_compatible)
    same = load_rec_catalog(rec_checkpoint)[0] == [p.product_id for p in dataset.products]
    manifest["same_catalog_as_search"] = same
    if not same:
        log("warning: the recommender was trained over another catalog than the one search serves")
    return versions, manifest
