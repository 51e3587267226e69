"""`make eval-rec`: popularity, last-item transitions and our recommender - in-process and served
through Triton's `recommend` ensemble - side by side in one run, leave-one-out with full ranking."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shopsearch.evaluation.rec_baselines import BASELINES
from shopsearch.data.interactions import Interactions
from shopsearch.evaluation.recs import CUTOFF, ModelScorer, evaluate_scorer, leave_one_out_metrics
from shopsearch.core.recommender import load_recommender

BASELINE_ROW = "transitions"


def served_rankings(url: str, data: Interactions, batch_size: int = 64, concurrency: int = 4,
                    protocol: str = "grpc") -> list[list[str]]:
    """Every user's top-10 from the served `recommend` ensemble, `batch_size` users per request."""
    from shopsearch.clients.recs import RecClient

    starts = list(range(0, len(data.histories), batch_size))

    def run(chunk_starts: list[int]) -> list[tuple[int, list[list[str]]]]:
        client = RecClient(url, protocol)
        try:
            out = []
            for start in chunk_starts:
                rows = [[data.item_ids[i] for i in h] for h in data.histories[start : start + batch_size]]
                out.append((start, [r.product_ids for r in client.recommend(rows, top_k=CUTOFF)]))
            return out
        finally:
            client.close()

    ranked: list[list[str]] = [[] for _ in data.histories]
    with ThreadPoolExecutor(concurrency) as pool:
        for part in pool.map(run, [starts[i::concurrency] for i in range(concurrency)]):
            for start, rows in part:
                ranked[start : start + len(rows)] = rows
    return ranked


def evaluate_recommenders(data: Interactions, checkpoint: Path, url: str | None, log=print) -> dict:
    rows: dict[str, dict[str, float]] = {}
    for baseline in BASELINES:
        t = time.time()
        rows[baseline.name] = evaluate_scorer(baseline.fit(data), data.histories, data.targets, data.item_ids)
        rows[baseline.name]["seconds"] = round(time.time() - t, 1)
        log(f"{baseline.name}: HR@10 {rows[baseline.name]['hr@10']:.4f} NDCG@10 {rows[baseline.name]['ndcg@10']:.4f}")
    model, card = load_recommender(checkpoint)
    t = time.time()
    scorer = ModelScorer(model)
    rows[scorer.name] = evaluate_scorer(scorer, data.histories, data.targets, data.item_ids)
    rows[scorer.name]["seconds"] = round(time.time() - t, 1)
    log(f"{scorer.name}: HR@10 {rows[scorer.name]['hr@10']:.4f}")
    report = {"dataset": data.name, "stats": data.stats(), "fingerprint": data.fingerprint(),
              "checkpoint": str(checkpoint), "trained_on": card.get("dataset", {}).get("fingerprint"),
              "train_seconds": card.get("seconds"), "title_vectors": card.get("title_vectors"), "rows": rows}
    if card.get("dataset", {}).get("fingerprint") != data.fingerprint():
        report["warning"] = "the checkpoint was trained on different interactions than the ones evaluated"
    if url:
        t = time.time()
        ranked = served_rankings(url, data)
        seconds = time.time() - t
        served = leave_one_out_metrics(ranked, [data.item_ids[x] for x in data.targets])
        served["seconds"] = round(seconds, 1)
        served["users_per_s"] = round(len(ranked) / seconds, 1)
        rows["model (served, recommend ensemble)"] = served
        log(f"served: HR@10 {served['hr@10']:.4f} NDCG@10 {served['ndcg@10']:.4f} ({served['users_per_s']} users/s)")
    base = rows[BASELINE_ROW]
    for row in rows.values():
        row["hr@10_vs_transitions"] = row["hr@10"] / base["hr@10"] if base["hr@10"] else float("nan")
    return report


def markdown(report: dict) -> str:
    lines = [f"# Recommendations: {report['dataset']} (leave-one-out, full ranking, history excluded)", "",
             f"{int(report['stats']['users'])} users, {int(report['stats']['items'])} items; "
             f"checkpoint {report['checkpoint']}", "",
             "| recommender | HR@10 | NDCG@10 | HR@10 vs transitions |", "|---|---:|---:|---:|"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | {row['hr@10']:.4f} | {row['ndcg@10']:.4f} | {row['hr@10_vs_transitions']:.2f}x |")
    if "warning" in report:
        lines += ["", f"**Warning:** {report['warning']}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(markdown(report))
