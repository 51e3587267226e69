"""`make build-repo`: checkpoint -> verified ONNX -> catalog index -> Triton model repository."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shopsearch.data.schema import Dataset
from shopsearch.embedding import OnnxEmbedder, embed_texts
from shopsearch.export import check_parity, export_onnx, read_signature
from shopsearch.index import INDEX_MANIFEST, INDEX_VECTORS, CatalogIndex
from shopsearch.modeling import CHECKPOINT_WEIGHTS, TOKENIZER_FILE, load_checkpoint
from shopsearch.results import CATALOG_FILE, CatalogLookup
from shopsearch.serving.ensemble import load_declaration, wire_ensemble
from shopsearch.serving.model_config import DynamicBatching
from shopsearch.serving.repository import ModelVersion, layout_repository, repository_size_bytes
from shopsearch.serving.search_models import (
    embedder_config, postprocess_config, ranker_config, tokenizer_config,
)
from shopsearch.serving.steps import EMBEDDER_FILE
from shopsearch.tokenization import TextEncoder
from shopsearch.training import git_revision

# Fixed queries every export is checked on, besides a sample of the dataset's own: edge cases
# (one character, long, mixed case, digits, unknown words) are where exports tend to drift.
PARITY_PROBES = ("a", "RED Running Shoes size 10", "stainless steel 12 inch frying pan", "x" * 400,
                 "cordless drill 20v with 2 batteries and charger kit", "zzqx unknownword 123")


@dataclass(frozen=True)
class BuildOptions:
    n_candidates: int = 100
    top_k: int = 10
    intra_op_threads: int = 0
    max_queue_delay_us: int = 1000
    parity_queries: int = 64


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def build_repository(checkpoint: Path, dataset: Dataset, out: Path, work: Path,
                     options: BuildOptions = BuildOptions(), log=print) -> dict:
    timings: dict[str, float] = {}
    started = time.time()
    model, card = load_checkpoint(checkpoint)
    cfg = model.config
    work.mkdir(parents=True, exist_ok=True)

    t = time.time()
    onnx_path = export_onnx(model, work / EMBEDDER_FILE)
    signature = read_signature(onnx_path)
    query_encoder = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, cfg.max_query_length)
    product_encoder = TextEncoder.from_file(checkpoint / TOKENIZER_FILE, cfg.max_product_length)
    sample = sorted(dataset.queries.get("dev", dataset.queries.get("train", {})).values())[: options.parity_queries]
    probes = list(PARITY_PROBES) + sample + [p.search_text() for p in dataset.products[:16]]
    parity = check_parity(model, onnx_path, query_encoder, probes)
    timings["export_and_parity_s"] = round(time.time() - t, 2)
    log(f"onnx export: {onnx_path} parity {json.dumps(parity)}")

    t = time.time()
    # The index is embedded by the exported artifact itself, so it matches what serves queries.
    embedder = OnnxEmbedder(onnx_path)
    vectors = embed_texts(embedder, product_encoder, [p.search_text() for p in dataset.products])
    embedder_id = file_sha256(onnx_path)
    index = CatalogIndex(vectors, embedder_id)
    index.save(work / "index")
    CatalogLookup.from_products(dataset.products).save(work / "catalog")
    timings["index_s"] = round(time.time() - t, 2)
    log(f"catalog index: {len(index)} products x {index.dim} dims ({timings['index_s']}s)")

    batching = DynamicBatching(max_queue_delay_us=options.max_queue_delay_us)
    tok = tokenizer_config(signature, cfg.max_query_length, batching)
    emb = embedder_config(signature, cfg.vocab_size, cfg.max_positions, options.intra_op_threads, batching)
    rank = ranker_config(emb.outputs[0], min(options.n_candidates, len(index)), embedder_id, batching)
    post = postprocess_config(rank, options.top_k, batching)
    models = {c.name: c for c in (tok, emb, rank, post)}
    search = wire_ensemble(load_declaration("search"), models)

    manifest = {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": git_revision(),
        "checkpoint": {"path": str(checkpoint), "sha256": file_sha256(checkpoint / CHECKPOINT_WEIGHTS),
                       "dataset": card.get("dataset", {}), "dev_metrics": card.get("dev_metrics", {})},
        "catalog": {"dataset": dataset.name, "fingerprint": dataset.fingerprint(), "products": len(dataset.products)},
        "embedder_id": embedder_id,
        "index_checksum": index.checksum(),
        "parity": {"onnx_fp32_vs_pytorch": parity, "probes": len(probes)},
        "options": asdict(options),
    }
    layout_repository(
        out,
        [
            ModelVersion(tok, {TOKENIZER_FILE: checkpoint / TOKENIZER_FILE}),
            ModelVersion(emb, {EMBEDDER_FILE: onnx_path}),
            ModelVersion(rank, {INDEX_VECTORS: work / "index" / INDEX_VECTORS, INDEX_MANIFEST: work / "index" / INDEX_MANIFEST}),
            ModelVersion(post, {CATALOG_FILE: work / "catalog" / CATALOG_FILE}),
            ModelVersion(search),
        ],
        manifest,
    )
    timings["total_s"] = round(time.time() - started, 2)
    size = repository_size_bytes(out)
    log(f"model repository: {out} ({size / 1e6:.1f} MB, {timings['total_s']}s)")
    return {**manifest, "timings": timings, "repository_bytes": size}
