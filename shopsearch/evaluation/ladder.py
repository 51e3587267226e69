"""`make ladder`: from a large model to a fast one, every rung measured in one run.

A rung is a search checkpoint (the scratch encoder, MiniLM as-is, MiniLM fine-tuned, a pruned and
distilled student, ...). Each is built by the real build at each precision (FP32, INT8: the parity
gate passes or the build fails) and measured on the dev split:
- dense only: the served artifact's embeddings of the whole catalog, exact search (from the build's
  own parity run, so no extra embedding), nDCG@10 / Recall@100 / MRR@10;
- hybrid: the built `search` ensemble in this process (served == in-process is what the integration
  tests and `make eval` hold the server to): BM25 + dense candidates re-ranked by the rung's own
  re-ranker, the dense candidates from each catalog index asked for (`indexes`: exact search, or a
  faiss index that passed the build's recall gate), one row per index;
- size: parameters, FLOPs per query (the encoder at the mean dev query length), the embedder
  artifact's MB, seconds to embed the catalog;
- speed: the `search` ensemble served on a fresh tritonserver, q/s and p99 at concurrency 16
  (perf_analyzer over gRPC, the dataset's perf queries), once every rung is built, in `rounds`
  interleaved rounds (every row once per round, in ladder order), reported as each row's median;
  with `tune_each`, every row at the instances and batching `make tune` finds for it.
  On a shared 2-core machine the same graph measured twice in one run has differed by 19% q/s; a
  ratio between rows is only as good as that noise, and interleaving spreads drift over every row.
BM25 is measured beside them on the same queries. Report: JSON, Markdown and a Pareto plot (hybrid
nDCG@10 against served q/s).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from shopsearch.build.options import BuildOptions
from shopsearch.build.search import SearchCheckpoint, build_repository
from shopsearch.core.ann import IndexSpec
from shopsearch.lexical.bm25 import Bm25Index
from shopsearch.core.metrics import evaluate_run
from shopsearch.core.modeling import encoder_flops, load_checkpoint, parameter_count
from shopsearch.core.tokenization import TOKENIZER_FILE, TextEncoder
from shopsearch.data.schema import Dataset
from shopsearch.errors import ConfigError, ExportParityError, IndexRecallError
from shopsearch.evaluation.search import DEPTH, METRICS, _run
from shopsearch.export.parity import RetrievalSet, SideOutputs, reference_outputs
from shopsearch.perf.perf_analyzer import measure_repository
from shopsearch.perf.tune import TuneGrid, tune
from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.serving.steps import EMBEDDER_FILE
from shopsearch.triton.tuning import Tuning, variant_repository

PRECISIONS = ("fp32", "int8")
ARTIFACT = {"fp32": "onnx_fp32", "int8": "onnx_int8"}


@dataclass(frozen=True)
class Rung:
    label: str
    checkpoint: Path
    precisions: tuple[str, ...] = ()  # () = the ladder's

    @classmethod
    def parse(cls, text: str) -> "Rung":
        """LABEL=CHECKPOINT_DIR, or LABEL=CHECKPOINT_DIR:int8 (or :fp32,int8) for this rung's precisions."""
        label, sep, rest = text.partition("=")
        path, _, precisions = rest.partition(":")
        if not sep or not label or not path:
            raise ConfigError("ladder", "rung", f"takes LABEL=CHECKPOINT_DIR[:PRECISIONS], got '{text}'")
        chosen = tuple(p for p in precisions.split(",") if p)
        unknown = [p for p in chosen if p not in PRECISIONS]
        if unknown:
            raise ConfigError("ladder", label, f"precisions {unknown} are not among {PRECISIONS}")
        return cls(label, Path(path), chosen)


def measure_rung(rung: Rung, precision: str, dataset: Dataset, queries: dict[str, str], judged: dict[str, dict[str, int]],
                 work: Path, tuning: Tuning | None, log, reference: SideOutputs | None = None,
                 index: IndexSpec = IndexSpec()) -> dict:
    """One rung at one precision and catalog index: built, dense and hybrid quality, size (speed:
    `measure_speed`)."""
    started = time.time()
    repo = work / (f"{rung.label}_{precision}" + (f"_{index.kind}" if index.approximate else "")) / "model_repository"
    model, card = load_checkpoint(rung.checkpoint)
    report = build_repository(rung.checkpoint, dataset, repo, repo.parent / "work", BuildOptions(precision=precision, index=index),
                              log=lambda m: None, tuning=tuning, reference=reference)
    served = report["served_embedder"]
    encoder = TextEncoder.from_file(rung.checkpoint / TOKENIZER_FILE, model.config.max_query_length)
    query_tokens = round(float(encoder.encode_texts(list(queries.values())).attention_mask.sum(axis=1).mean()))
    t = time.time()
    hybrid = evaluate_run(_run(InProcessEnsemble.from_repository(repo).search, queries, list(judged)), judged,
                          dataset.relevant_min_gain)
    hybrid_seconds = time.time() - t
    row = {
        "label": rung.label, "precision": precision, "checkpoint": str(rung.checkpoint), "artifact": served,
        "repository": str(repo), "index": index_summary(report["index"]),
        "init_from": (card.get("init_from") or {}).get("name"), "teacher": (card.get("teacher") or {}).get("path"),
        "layers": model.config.num_layers, "hidden": model.config.hidden_size,
        "parameters_m": round(parameter_count(model) / 1e6, 2), "query_tokens": query_tokens,
        "mflops_per_query": round(encoder_flops(model.config, query_tokens) / 1e6, 1),
        "artifact_mb": round((repo / "embedder" / "1" / EMBEDDER_FILE).stat().st_size / 1e6, 1),
        "catalog_embedding_s": report["parity"][served]["catalog_seconds"],
        "dense": {m: report["parity"][served]["dense_metrics"][m] for m in METRICS},
        "hybrid": {m: round(hybrid[m], 4) for m in METRICS},
        "reranker": report["ranker"].get("reranker_card", {}).get("config"),
        "hybrid_eval_s": round(hybrid_seconds, 1),
        "build_s": report["timings"]["total_s"], "seconds": round(time.time() - started, 1),
    }
    log(f"{rung.label} {precision} {index.kind}: dense nDCG@10 {row['dense']['ndcg@10']:.4f}, hybrid {row['hybrid']['ndcg@10']:.4f}, "
        f"{row['parameters_m']} M parameters ({row['seconds']}s)")
    return row


def index_summary(index_report: dict) -> dict:
    """What a row says about its catalog index: kind, search breadth, recall@100 against exact."""
    spec = index_report.get("spec", {})
    breadth = {"ivf": "nprobe", "hnsw": "ef_search"}.get(index_report["kind"])
    return {"kind": index_report["kind"], "breadth": f"{breadth} {spec.get(breadth)}" if breadth else "-",
            "recall@100": index_report.get("recall@100_vs_exact", 1.0), "build_s": index_report.get("build_s")}


def tune_row(row: dict, perf_queries: Path, concurrency: int, log) -> None:
    """`make tune`'s sweep on the row's own repository; the row is then served with the settings
    it found (`served_repository`), so each rung is measured at its best, not at one rung's."""
    repo = Path(row["repository"])
    tuning = tune(repo, perf_queries, repo.parent / "tune", TuneGrid(), concurrency,
                  log=lambda m: log(f"{row['label']} {row['precision']} tune: {m}"))
    row["served_repository"] = str(variant_repository(repo, repo.parent / "model_repository_tuned", tuning))
    row["tuning"] = {"settings": {m: s.label() for m, s in sorted(tuning.models.items())},
                     **{k: tuning.measured[k] for k in ("as_built", "best", "seconds")}}


def measure_speed(report: dict, perf_queries: Path, concurrency: int, measurement_ms: int, rounds: int, log,
                  on_round=lambda: None, tune_each: bool = False) -> None:
    """Served q/s and p99 of every measured row, `rounds` interleaved rounds on fresh servers;
    each row keeps every round and reports the medians. `tune_each`: every row is first tuned on
    its own (`tune_row`) and served with its settings."""
    rows = measured(report)
    for row in rows:
        row["served_rounds"] = []
        if tune_each:
            tune_row(row, perf_queries, concurrency, log)
            on_round()
    for round_no in range(rounds):
        for row in rows:
            repo = Path(row.get("served_repository", row["repository"]))
            point = measure_repository(repo, perf_queries, concurrency, Path(row["repository"]).parent / "perf" / f"round{round_no}",
                                       measurement_ms)
            row["served_rounds"].append({"qps": round(point.throughput, 1), "p99_ms": round(point.p99_ms, 1)})
            row["served_qps"] = round(statistics.median(r["qps"] for r in row["served_rounds"]), 1)
            row["served_p99_ms"] = round(statistics.median(r["p99_ms"] for r in row["served_rounds"]), 1)
            log(f"{row['label']} {row['precision']} round {round_no + 1}/{rounds}: {point.throughput:.1f} q/s, p99 {point.p99_ms:.1f} ms")
        on_round()


def run_ladder(rungs: list[Rung], dataset: Dataset, out: Path, perf_queries: Path, split: str = "dev",
               precisions: tuple[str, ...] = PRECISIONS, concurrency: int = 16, tuning: Tuning | None = None,
               measurement_ms: int = 4000, rounds: int = 1, log=print, indexes: tuple[IndexSpec, ...] = (IndexSpec(),),
               tune_each: bool = False) -> dict:
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ConfigError("ladder", "precision", f"'{precision}' is not one of {PRECISIONS}")
    if rounds < 1 or measurement_ms < 500:
        raise ConfigError("ladder", "rounds/measurement_ms", f"need rounds >= 1 and a window >= 500 ms, got {rounds} and {measurement_ms}")
    for rung in rungs:  # refused before an hour goes into the others
        _, card = load_checkpoint(rung.checkpoint)
        trained_on = card.get("dataset", {}).get("fingerprint")
        if trained_on and trained_on != dataset.fingerprint():
            raise ConfigError("ladder", rung.label, f"{rung.checkpoint} was trained on another catalog ({trained_on})")
    queries, qrels = dataset.split(split)
    qids = sorted(queries)
    report: dict = {"dataset": dataset.name, "split": split, "queries": len(qids), "concurrency": concurrency,
                    "speed_rounds": rounds, "measurement_ms": measurement_ms, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}
    judged = {q: qrels.get(q, {}) for q in qids}
    bm25 = evaluate_run(Bm25Index(dataset.products).run(queries, qids, DEPTH), judged, dataset.relevant_min_gain)
    report["bm25"] = {m: round(bm25[m], 4) for m in METRICS}
    log(f"bm25: nDCG@10 {report['bm25']['ndcg@10']:.4f}")
    for rung in rungs:
        # The PyTorch reference the parity gate compares with, once per rung (a catalog's embedding).
        source = SearchCheckpoint.load(rung.checkpoint)
        reference = reference_outputs(source.model, source.query_encoder, source.product_encoder, RetrievalSet.from_dataset(dataset))
        for precision in rung.precisions or precisions:
            for index in indexes:
                try:
                    row = measure_rung(rung, precision, dataset, queries, judged, out / "work", tuning, log, reference, index)
                except ExportParityError as exc:  # the gate refused this artifact: the table says so, the rest go on
                    failing = "; ".join(f"{name} = {value:.4g} (bound {bound})" for name, value, bound, ok in exc.checks if not ok)
                    row = {"label": rung.label, "precision": precision, "checkpoint": str(rung.checkpoint), "index": {"kind": index.kind},
                           "refused": f"parity gate: {exc.artifact}: {failing}", "checks": [list(c) for c in exc.checks]}
                except IndexRecallError as exc:  # so did the recall gate: this index, not the rung
                    row = {"label": rung.label, "precision": precision, "checkpoint": str(rung.checkpoint), "index": {"kind": index.kind},
                           "refused": f"recall gate: {index.kind} recall@100 {exc.recall:.4f} < {exc.threshold}"}
                if "refused" in row:
                    log(f"{rung.label} {precision} {index.kind}: refused by the {row['refused']}")
                report["rows"].append(row)
                write_ladder(report, out)  # rows measured so far survive a later failure of a long run
    report["tuned_per_row"] = tune_each
    measure_speed(report, perf_queries, concurrency, measurement_ms, rounds, log, lambda: write_ladder(report, out), tune_each)
    return report


def measured(report: dict) -> list[dict]:
    """The rows that were built and measured (not refused by the parity or the recall gate)."""
    return [r for r in report["rows"] if "refused" not in r]


def ladder_markdown(report: dict) -> str:
    bm25 = report["bm25"]["ndcg@10"]
    lines = [f"# From a large model to a fast one: {report['dataset']} {report['split']} ({report['queries']} queries), "
             f"served at concurrency {report['concurrency']}", "",
             "| rung | precision | index | dense nDCG@10 | dense R@100 | dense MRR@10 | hybrid nDCG@10 | hybrid / BM25 | hybrid R@100 | "
             "hybrid MRR@10 | parameters (M) | MFLOPs / query | artifact MB | catalog embedding s | served q/s | p99 ms | "
             "q/s by round |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| BM25 (bm25s) | - | - | {bm25:.4f} | {report['bm25']['recall@100']:.4f} | {report['bm25']['mrr@10']:.4f} | - | 1.00 | - | - | - | - | - | - | - | - | - |"]
    for r in report["rows"]:
        index = r.get("index", {"kind": "exact"})
        if "refused" in r:
            lines.append(f"| {r['label']} | {r['precision']} | {index['kind']} | refused by the {r['refused']} |" + " - |" * 13)
            continue
        d, h = r["dense"], r["hybrid"]
        shown = index["kind"] if index["kind"] == "exact" else f"{index['kind']} ({index['breadth']}, R@100 {index['recall@100']:.4f})"
        lines.append(f"| {r['label']} | {r['precision']} | {shown} | {d['ndcg@10']:.4f} | {d['recall@100']:.4f} | {d['mrr@10']:.4f} | "
                     f"{h['ndcg@10']:.4f} | {h['ndcg@10'] / bm25:.2f} | {h['recall@100']:.4f} | {h['mrr@10']:.4f} | "
                     f"{r['parameters_m']} | {r['mflops_per_query']} | {r['artifact_mb']} | {r['catalog_embedding_s']} | "
                     f"{r.get('served_qps', '-')} | {r.get('served_p99_ms', '-')} | "
                     f"{' / '.join(str(x['qps']) for x in r.get('served_rounds', [])) or '-'} |")
    rounds = report.get("speed_rounds", 1)
    tuned = [r for r in measured(report) if "tuning" in r]
    if tuned:
        lines += ["", "Each row tuned on its own repository first (`make tune`'s sweep, single 2 s windows) and served with "
                  "what it found:", ""]
        lines += [f"- {r['label']} {r['precision']} {r.get('index', {}).get('kind', 'exact')}: "
                  + "; ".join(f"{m} {label}" for m, label in r["tuning"]["settings"].items())
                  + f" (sweep: as built {r['tuning']['as_built']['throughput']} -> {r['tuning']['best']['throughput']} q/s)"
                  for r in tuned]
    lines += ["", "Dense columns: the served embedder's vectors searched exactly; hybrid columns and served speed: "
              "the built ensemble with the row's catalog index (an approximate one passed the build's recall@100 gate "
              "against exact search on these queries).",
              "", f"Served speed: the median of {rounds} interleaved round{'s' * (rounds > 1)} of "
              f"{report.get('measurement_ms', 4000) / 1000:g} s perf_analyzer windows (each on a fresh tritonserver)."]
    return "\n".join(lines) + "\n"


def plot_pareto(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for precision, marker in (("fp32", "o"), ("int8", "s")):
        rows = [r for r in measured(report) if r["precision"] == precision and "served_qps" in r]
        ax.scatter([r["served_qps"] for r in rows], [r["hybrid"]["ndcg@10"] for r in rows], marker=marker, label=f"hybrid, {precision}")
        ax.scatter([r["served_qps"] for r in rows], [r["dense"]["ndcg@10"] for r in rows], marker=marker, facecolors="none",
                   edgecolors="gray", label=f"dense only, {precision}")
        for r in rows:
            name = r["label"] + ("" if r.get("index", {"kind": "exact"})["kind"] == "exact" else f" ({r['index']['kind']})")
            ax.annotate(name, (r["served_qps"], r["hybrid"]["ndcg@10"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(report["bm25"]["ndcg@10"], color="black", linestyle="--", linewidth=0.8, label="BM25")
    ax.set_xlabel(f"served q/s at concurrency {report['concurrency']} (search ensemble, gRPC)")
    ax.set_ylabel(f"nDCG@10 ({report['dataset']} {report['split']})")
    ax.set_title("Quality against served throughput, per rung and precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_ladder(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ladder.json").write_text(json.dumps(report, indent=2))
    (out / "ladder.md").write_text(ladder_markdown(report))
    return [out / "ladder.json", out / "ladder.md", plot_pareto(report, out / "ladder.png")]
