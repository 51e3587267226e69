"""The parity gate: every artifact is measured against the PyTorch model before it ships.

Per artifact: max abs diff and cosine of query embeddings on a fixed probe set, top-10 overlap of
products retrieved from the full catalog, and dev nDCG@10 (the artifact embeds both the queries
and the catalog, as it will when served). Bounds come from `shopsearch.export.optimize.PARITY`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from shopsearch.data.schema import Dataset
from shopsearch.core.embedding import Embedder, TorchEmbedder, embed_texts
from shopsearch.errors import ExportParityError
from shopsearch.core.index import CatalogIndex
from shopsearch.core.metrics import evaluate_run
from shopsearch.export.optimize import ParityThresholds
from shopsearch.core.tokenization import TextEncoder

# Fixed queries every export is checked on besides the dataset's own: edge cases (one character,
# long, mixed case, digits, unknown words) are where exports tend to drift.
PARITY_PROBES = ("a", "RED Running Shoes size 10", "stainless steel 12 inch frying pan", "x" * 400,
                 "cordless drill 20v with 2 batteries and charger kit", "zzqx unknownword 123")


@dataclass
class RetrievalSet:
    """What both sides are compared on: probe texts, dev queries with judgments, the catalog."""

    probes: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    product_ids: list[str]
    product_texts: list[str]
    relevant_min_gain: int

    @classmethod
    def from_dataset(cls, dataset: Dataset, max_queries: int = 0) -> "RetrievalSet":
        split = "dev" if dataset.queries.get("dev") else "train"
        queries, qrels = dataset.split(split)
        qids = sorted(queries)[: max_queries or None]
        return cls(
            probes=list(PARITY_PROBES) + [queries[q] for q in qids[:64]] + [p.search_text() for p in dataset.products[:16]],
            query_ids=qids, query_texts=[queries[q] for q in qids], qrels={q: qrels.get(q, {}) for q in qids},
            product_ids=[p.product_id for p in dataset.products], product_texts=[p.search_text() for p in dataset.products],
            relevant_min_gain=dataset.relevant_min_gain,
        )


@dataclass
class SideOutputs:
    probe_vectors: np.ndarray
    catalog_vectors: np.ndarray
    top10: np.ndarray
    ndcg10: float
    metrics: dict[str, float] = field(default_factory=dict)  # dense retrieval on the split: nDCG@10, Recall@100, MRR@10
    catalog_seconds: float = 0.0  # embedding the whole catalog with this side's embedder
    query_vectors: np.ndarray | None = None  # the split's queries (the index's recall gate searches them)


@dataclass
class ParityReport:
    artifact: str
    numbers: dict[str, float]
    thresholds: ParityThresholds
    checks: list[tuple[str, float, str, bool]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(ok for *_, ok in self.checks)

    def to_json(self) -> dict:
        return {"numbers": self.numbers, "thresholds": asdict(self.thresholds), "passed": self.ok}


def run_side(embedder: Embedder, query_encoder: TextEncoder, product_encoder: TextEncoder, data: RetrievalSet) -> SideOutputs:
    probes = embed_texts(embedder, query_encoder, data.probes)
    started = time.perf_counter()
    catalog = embed_texts(embedder, product_encoder, data.product_texts)
    catalog_seconds = time.perf_counter() - started
    queries = embed_texts(embedder, query_encoder, data.query_texts)
    top, scores = CatalogIndex(catalog, "parity").search(queries, 100)  # ties to the lower row: top 10 = its first 10
    run = {qid: {data.product_ids[i]: float(s) for i, s in zip(top[r], scores[r])} for r, qid in enumerate(data.query_ids)}
    metrics = evaluate_run(run, data.qrels, data.relevant_min_gain)
    return SideOutputs(probes, catalog, top[:, :10], metrics["ndcg@10"], metrics, round(catalog_seconds, 2), queries)


def reference_outputs(model, query_encoder: TextEncoder, product_encoder: TextEncoder, data: RetrievalSet) -> SideOutputs:
    return run_side(TorchEmbedder(model), query_encoder, product_encoder, data)


def compare(artifact: str, reference: SideOutputs, candidate: SideOutputs, bounds: ParityThresholds) -> ParityReport:
    ref, got = reference.probe_vectors, candidate.probe_vectors
    cosine = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    overlap = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(reference.top10, candidate.top10)])
    numbers = {
        "max_abs_diff": float(np.max(np.abs(ref - got))),
        "mean_cosine": float(np.mean(cosine)),
        "min_cosine": float(np.min(cosine)),
        "top10_overlap": float(overlap),
        "ndcg10_reference": reference.ndcg10,
        "ndcg10": candidate.ndcg10,
        "ndcg10_drop": reference.ndcg10 - candidate.ndcg10,
    }
    report = ParityReport(artifact, numbers, bounds)
    if bounds.max_abs_diff is not None:
        report.checks.append(("embedding.max_abs_diff", numbers["max_abs_diff"], f"<= {bounds.max_abs_diff}", numbers["max_abs_diff"] <= bounds.max_abs_diff))
    report.checks += [
        ("embedding.mean_cosine", numbers["mean_cosine"], f">= {bounds.min_mean_cosine}", numbers["mean_cosine"] >= bounds.min_mean_cosine),
        ("retrieval.top10_overlap", numbers["top10_overlap"], f">= {bounds.min_top10_overlap}", numbers["top10_overlap"] >= bounds.min_top10_overlap),
        ("retrieval.ndcg10_drop", numbers["ndcg10_drop"], f"<= {bounds.max_ndcg10_drop}", numbers["ndcg10_drop"] <= bounds.max_ndcg10_drop),
    ]
    return report


def gate(report: ParityReport) -> ParityReport:
    """Raise with every number listed when any bound is broken."""
    if not report.ok:
        raise ExportParityError(report.artifact, report.checks)
    return report


def polygraphy_compare(reference_runner, candidate_runner, feeds: list[dict[str, np.ndarray]], atol: float, rtol: float = 0.0) -> dict:
    """Cross-runtime check with Polygraphy's Comparator (e.g. TensorRT vs ONNX Runtime FP32)."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc  # CompareFunc.simple: removed in 0.60
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.WARNING  # per-iteration stats would flood the build log
    results = Comparator.run([reference_runner, candidate_runner], data_loader=feeds)
    accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol))
    ref_name, cand_name = reference_runner.name, candidate_runner.name
    ref_out, cand_out = results[ref_name][0], results[cand_name][0]
    max_abs = max(float(np.max(np.abs(np.asarray(ref_out[n]) - np.asarray(cand_out[n])))) for n in ref_out.keys())
    return {"passed": bool(accuracy), "atol": atol, "rtol": rtol, "max_abs_diff_first_feed": max_abs,
            "runners": [ref_name, cand_name]}


def onnxrt_runner(path, name: str):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name=name)
