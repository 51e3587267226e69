"""`make bench-scale`: what catalog search costs from 20 thousand to 2 million products, per index kind.

One run: the default recipe's checkpoint is built once at 20k products (the real build: export,
parity gate) with the FP32 embedder, which batches (the INT8 one runs row by row and would take
about an hour over 2 million titles on 2 cores); that embedder then embeds the synthetic shop
generated at each size (the same generator and query families), in resumable chunks on disk. For each size and index kind
(`shopsearch.core.ann`), with the build's own `index_catalog` (recall gate included):

- build seconds, index bytes (what the ranker searches: the faiss file, or the float32 vectors);
- recall@100 against exact search on the size's dev queries;
- in-process ms per query at batch 1 and 16 (the loaded, memory-mapped index, one thread);
- a repository laid out by the build's own `search_models` over that catalog, served by a fresh
  tritonserver: q/s and p99 at concurrency 16 (perf_analyzer, gRPC) replaying a Zipf-distributed
  query stream (exponent 1.1 over every query the shop generates, like a shop's query log), the
  ranker instance's resident memory (its Python-backend stub process), then the same replay on a
  server with Triton's response cache on: q/s, p99 and the hit rate from Triton's statistics.

Ratios within one run are what to read: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from shopsearch.core.ann import INDEX_KINDS, IndexSpec
from shopsearch.errors import IndexRecallError, ShopSearchError

SIZES = (20_000, 200_000, 2_000_000)
CHUNK = 50_000  # products per embedded chunk on disk (the unit of resumption)
CONCURRENCY = 16
ZIPF_EXPONENT = 1.1
ZIPF_REQUESTS = 60_000  # long enough that a measurement does not wrap around the stream


@dataclass
class ScaleRow:
    products: int
    kind: str
    build_s: float | None = None
    index_bytes: int | None = None
    recall_at_100: float | None = None
    ms_per_query_b1: float | None = None
    ms_per_query_b16: float | None = None
    ms_per_query_b1_cold: float | None = None  # batch 1, the float32 vectors' pages dropped before each query
    served_qps: float | None = None
    served_p99_ms: float | None = None
    ranker_rss_mb: float | None = None  # the ranker stub's VmRSS under load
    ranker_rss_anon_mb: float | None = None  # of which private (not file-backed, not shareable)
    # Filtered search (category; category + in stock + at most the category's median price) against
    # exact filtered search: share of dev queries whose top 10 is the same list, and ms per query.
    filtered_same_top10_category: float | None = None
    filtered_same_top10_narrow: float | None = None
    filtered_ms_category: float | None = None
    filtered_ms_narrow: float | None = None
    cached_qps: float | None = None  # the same replay with the response cache on
    cached_p99_ms: float | None = None
    cache_hit_rate: float | None = None
    note: str = ""


@dataclass
class ScaleReport:
    machine: str
    checkpoint: str
    embedder: str
    started_at: str
    code_version: str
    sizes: dict = field(default_factory=dict)  # products -> {generate_s, embed_s, dev_queries}
    rows: list[ScaleRow] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "rows"}, "rows": [asdict(r) for r in self.rows]}


def embed_catalog(embedder, encoder, texts: list[str], directory: Path, embedder_id: str, log=print) -> np.ndarray:
    """The catalog's vectors, embedded CHUNK products at a time into `directory` (each chunk written
    atomically): a run stopped halfway resumes at the first missing chunk. Chunks of another
    embedder or catalog are discarded."""
    from tqdm.auto import tqdm

    from shopsearch.core.embedding import embed_texts

    directory.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256((embedder_id + "\n" + "\n".join(texts)).encode()).hexdigest()[:16]
    stamp = directory / "chunks.json"
    if not stamp.exists() or json.loads(stamp.read_text()).get("key") != key:
        for old in directory.glob("chunk_*.npy"):
            old.unlink()
        stamp.write_text(json.dumps({"key": key, "products": len(texts), "chunk": CHUNK}))
    chunks = []
    starts = range(0, len(texts), CHUNK)
    with tqdm(total=len(texts), desc=f"embedding {len(texts):,} products", unit="product", smoothing=0.1) as bar:
        for number, start in enumerate(starts):
            path = directory / f"chunk_{number:05d}.npy"
            if not path.exists():
                vectors = embed_texts(embedder, encoder, texts[start : start + CHUNK])
                partial = path.with_suffix(".partial.npy")
                np.save(partial, vectors)
                os.replace(partial, path)
            chunks.append(np.load(path))
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks)


def time_search(index, queries: np.ndarray, batch: int, max_queries: int, k: int = 100) -> float:
    """Mean in-process ms per query searching `queries` `batch` at a time (one warm-up batch first)."""
    queries = queries[:max_queries]
    index.search(queries[:batch], k)
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        index.search(queries[start : start + batch], k)
    return (time.perf_counter() - started) * 1000 / len(queries)


def drop_vector_pages(index) -> None:
    """Evict the catalog's float32 vectors from this process and from the host's page cache (clean
    file pages: no privilege needed), so the next search reads what it needs of them from disk."""
    import mmap

    vectors = index.vectors
    if not isinstance(vectors, np.memmap):
        raise ShopSearchError(f"{index.spec.kind} index: its vectors are in memory, not mapped from a file")
    vectors._mmap.madvise(mmap.MADV_DONTNEED)  # numpy's own mapping of the file
    fd = os.open(vectors.filename, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_search_cold(index, queries: np.ndarray, k: int = 100) -> float:
    """Mean in-process ms per query (batch 1) when the float32 vectors are not in memory: what a
    ranker costs on a host without room for them in its page cache."""
    total = 0.0
    for query in queries:
        drop_vector_pages(index)
        started = time.perf_counter()
        index.search(query[None, :], k)
        total += time.perf_counter() - started
    return total * 1000 / len(queries)


COLD_QUERIES = 100
FILTERED_QUERIES = 300


def filter_sets(dataset, exact_top1: np.ndarray) -> dict[str, list]:
    """Per dev query, the filters a shopper would add: the category of its best exact match, and
    that category in stock at most its median price."""
    from shopsearch.core.filters import SearchFilters

    medians: dict[str, float] = {}
    for category in {p.category for p in dataset.products}:
        medians[category] = float(np.median([p.price for p in dataset.products if p.category == category]))
    categories = [dataset.products[row].category for row in exact_top1]
    return {"category": [SearchFilters(category=c) for c in categories],
            "narrow": [SearchFilters(category=c, price_max=medians[c], in_stock=True) for c in categories]}


def filtered_agreement(index, exact, facets, queries: np.ndarray, filters: list) -> tuple[float, float]:
    """(share of queries whose filtered top 10 equals exact filtered search's, ms per query)."""
    same, seconds = 0, 0.0
    for query, chosen in zip(queries, filters):
        allowed = facets.mask(chosen)
        started = time.perf_counter()
        rows = index.search_within(query[None, :], 10, allowed)[0][0]
        seconds += time.perf_counter() - started
        same += rows.tolist() == exact.search_within(query[None, :], 10, allowed)[0][0].tolist()
    return same / len(queries), seconds * 1000 / len(queries)


def stub_memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) of a process in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    kb = lambda name: int(fields[name].split()[0])  # noqa: E731
    return kb("VmRSS") / 1024, kb("RssAnon") / 1024


def zipf_stream(queries: list[str], n: int, exponent: float = ZIPF_EXPONENT, seed: int = 0) -> list[str]:
    """n queries drawn with probability proportional to 1 / rank^exponent, ranks a seeded shuffle
    of `queries` (a shop's log: a few head queries repeat a lot, a long tail comes once)."""
    rng = np.random.default_rng(seed)
    ranked = [queries[i] for i in rng.permutation(len(queries))]
    weights = 1.0 / np.arange(1, len(ranked) + 1) ** exponent
    return [ranked[i] for i in rng.choice(len(ranked), size=n, p=weights / weights.sum())]


def serve_and_measure(repo: Path, input_data: Path, work: Path, measurement_ms: int, cache: bool) -> dict:
    """q/s and p99 ms of the search ensemble at CONCURRENCY on a fresh tritonserver (its response
    cache on or off), the ranker stub's resident memory right after the load, and the cache's hit
    rate over the whole run."""
    from shopsearch.ops.server import TritonServer, stub_processes
    from shopsearch.perf.perf_analyzer import run_perf_analyzer
    from tritonclient.http import InferenceServerClient

    label = "cached" if cache else "uncached"
    with TritonServer(repo, log_path=work / f"tritonserver_{label}.log", profiling=True, response_cache=cache) as server:
        point = run_perf_analyzer("search", server.grpc_url, input_data, [CONCURRENCY], work / f"csv_{label}", measurement_ms)[0]
        ranker = [pid for pid, path in stub_processes(server.process.pid).items() if "/ranker/" in path]
        rss, anon = stub_memory_mb(ranker[0]) if ranker else (float("nan"), float("nan"))
        client = InferenceServerClient(server.http_url)
        stats = client.get_inference_statistics("search")["model_stats"][0]["inference_stats"]
        client.close()
    hits, misses = int(stats["cache_hit"]["count"]), int(stats["cache_miss"]["count"])
    return {"qps": point.throughput, "p99_ms": point.p99_ms, "rss_mb": rss, "anon_mb": anon,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0}


class BaseBuild:
    """The default checkpoint built once (20k products): the served embedder every size reuses."""

    def __init__(self, checkpoint: Path, work: Path, log):
        from shopsearch.build.options import BuildOptions
        from shopsearch.build.search import SearchCheckpoint, build_repository
        from shopsearch.data import load_dataset
        from shopsearch.export.onnx import read_signature

        self.repo, self.work = work / "base" / "model_repository", work / "base" / "work"
        dataset = load_dataset("synthetic")
        self.report = build_repository(checkpoint, dataset, self.repo, self.work, BuildOptions(precision="fp32"), log=log)
        self.source = SearchCheckpoint.load(checkpoint)
        self.signature = read_signature(self.work / "model.fp32.onnx")
        self.served_name = self.report["served_embedder"]
        self.served_path = self.repo / "embedder" / "1" / "model.onnx"
        self.embedder_id = self.report["embedder_id"]

    def embedder(self):
        from shopsearch.core.embedding import OnnxEmbedder
        from shopsearch.export.optimize import ROW_BY_ROW

        return OnnxEmbedder(self.served_path, intra_op_threads=0, row_by_row=self.served_name in ROW_BY_ROW)

    def lay_out(self, dataset, index, spec: IndexSpec, work: Path, out: Path) -> Path:
        """A search repository over `dataset` with `index` (saved in work/index), through the build's
        own config derivation and layout."""
        from shopsearch.build.options import BuildOptions
        from shopsearch.build.search import response_cache_manifest, search_models
        from shopsearch.core.results import CatalogLookup
        from shopsearch.triton.repository import RESPONSE_CACHE, layout_repository
        from shopsearch.triton.tuning import Tuning

        CatalogLookup.from_products(dataset.products).save(work / "catalog")
        provenance = {"bench": "bench-scale", "catalog_fingerprint": dataset.fingerprint()}
        options = BuildOptions(index=spec)
        versions, ranker = search_models(self.source, self.signature, [(self.served_name, self.served_path)], index, dataset,
                                         work, options, Tuning(), provenance, self.report["parity"], lambda m: None)
        return layout_repository(out, versions, {**provenance, "ranker": ranker, "embedder_id": self.embedder_id,
                                                 RESPONSE_CACHE: response_cache_manifest(options)})


def bench_size(base: BaseBuild, n: int, kinds: list[str], specs: dict[str, IndexSpec], work: Path, report: ScaleReport,
               hnsw_max: int, served: bool, measurement_ms: int, log) -> None:
    from shopsearch.build.search import index_catalog
    from shopsearch.core.embedding import embed_texts
    from shopsearch.data import load_dataset
    from shopsearch.export.parity import SideOutputs
    from shopsearch.core.filters import CatalogFacets
    from shopsearch.core.index import CatalogIndex
    from shopsearch.perf.perf_analyzer import query_input_data

    t = time.time()
    dataset = load_dataset("synthetic", n_products=n)
    generate_s = time.time() - t
    t = time.time()
    vectors = embed_catalog(base.embedder(), base.source.product_encoder, [p.search_text() for p in dataset.products],
                            work / f"n{n}" / "vectors", base.embedder_id, log)
    embed_s = time.time() - t
    queries = list(dataset.split("dev")[0].values())
    query_vectors = embed_texts(base.embedder(), base.source.query_encoder, queries)
    every_query = sorted({q for split in dataset.queries.values() for q in split.values()})
    stream = zipf_stream(every_query, ZIPF_REQUESTS)
    report.sizes[str(n)] = {"generate_s": round(generate_s, 1), "embed_s": round(embed_s, 1), "dev_queries": len(queries),
                            "vectors_bytes": int(vectors.nbytes), "replay_distinct_queries": len(every_query),
                            "replay_requests": len(stream), "replay_distinct_requested": len(set(stream))}
    input_data = work / f"n{n}" / "zipf_replay.json"
    input_data.write_text(json.dumps(query_input_data(stream)))
    side = SideOutputs(probe_vectors=query_vectors, catalog_vectors=vectors, top10=np.zeros((0, 10)), ndcg10=0.0,
                       query_vectors=query_vectors)
    exact = CatalogIndex(vectors, base.embedder_id)
    facets = CatalogFacets.from_products(dataset.products)
    filters = filter_sets(dataset, exact.search(query_vectors[:FILTERED_QUERIES], 1)[0][:, 0])
    for kind in kinds:
        row = ScaleRow(n, kind if specs[kind].reads_vectors else f"{kind}, rescore 0")
        report.rows.append(row)
        if kind == "hnsw" and n > hnsw_max:
            row.note = f"not built: HNSW above {hnsw_max:,} products takes too long to build on this machine"
            log(f"{n:,} {kind}: skipped ({row.note})")
            continue
        kind_work = work / f"n{n}" / kind
        try:
            index, built = index_catalog(side, base.embedder_id, specs[kind], kind_work / "index", log)
        except IndexRecallError as exc:
            row.recall_at_100, row.note = round(exc.recall, 4), f"refused by the recall gate: {exc}"
            log(f"{n:,} {kind}: {row.note}")
            continue
        row.build_s, row.recall_at_100 = built["build_s"], built.get("recall@100_vs_exact", 1.0)
        row.index_bytes = built["ann_bytes"] or int(vectors.nbytes)
        loaded = CatalogIndex.load(kind_work / "index")
        if kind == "exact":
            loaded.search(query_vectors[:1], 100)  # the ONNX session is built on first use: not a query's cost
        row.ms_per_query_b1 = round(time_search(loaded, query_vectors, 1, 200), 3)
        row.ms_per_query_b16 = round(time_search(loaded, query_vectors, 16, 640), 3)
        if specs[kind].approximate:
            row.ms_per_query_b1_cold = round(time_search_cold(loaded, query_vectors[:COLD_QUERIES]), 3)
        for name, chosen in filters.items():
            same, ms = filtered_agreement(loaded, exact, facets, query_vectors[:FILTERED_QUERIES], chosen)
            setattr(row, f"filtered_same_top10_{name}", round(same, 4))
            setattr(row, f"filtered_ms_{name}", round(ms, 3))
        del loaded, index
        if served:
            repo = base.lay_out(dataset, CatalogIndex.load(kind_work / "index"), specs[kind], kind_work,
                                kind_work / "model_repository")
            try:
                plain = serve_and_measure(repo, input_data, kind_work, measurement_ms, cache=False)
                row.served_qps, row.served_p99_ms = round(plain["qps"], 1), round(plain["p99_ms"], 1)
                row.ranker_rss_mb, row.ranker_rss_anon_mb = round(plain["rss_mb"], 1), round(plain["anon_mb"], 1)
                cached = serve_and_measure(repo, input_data, kind_work, measurement_ms, cache=True)
                row.cached_qps, row.cached_p99_ms = round(cached["qps"], 1), round(cached["p99_ms"], 1)
                row.cache_hit_rate = round(cached["hit_rate"], 4)
            except ShopSearchError as exc:  # e.g. exact search too slow for the queue timeout: a result too
                row.note = f"served measurement failed: {str(exc)[-200:]}"
            shutil.rmtree(kind_work / "model_repository")  # a copy of the index: gigabytes at 2M
        log(f"{n:,} {kind}: " + ", ".join(f"{k} {v}" for k, v in asdict(row).items() if v not in (None, "") and k not in ("products", "kind")))


def write_side_report(out: Path, rows: list[dict], lines: list[str]) -> str:
    """A single-measurement mode's rows to `out`.json and its table to `out`.md; the table back."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def ivf_rescore(index) -> int | None:
    return index.spec.rescore if index.spec.kind == "ivf" else None


def rescore_cell(row: dict) -> str:
    return "-" if row["rescore"] is None else str(row["rescore"])


def query_embedder(work: Path):
    """texts -> query vectors [n, dim], by the embedder and tokenizer of the run's base repository
    (the one every size's catalog was embedded with)."""
    from shopsearch.core.embedding import OnnxEmbedder, embed_texts
    from shopsearch.core.tokenization import TextEncoder

    base = work / "base" / "model_repository"
    embedder = OnnxEmbedder(base / "embedder" / "1" / "model.onnx", 0)
    encoder = TextEncoder.from_file(base / "tokenizer" / "1" / "tokenizer.json", 32)
    return lambda texts: embed_texts(embedder, encoder, texts)


def cold_only(sizes: list[int], kinds: list[str], work: Path, out: Path, log) -> str:
    """In-process ms per query at batch 1 with the float32 vectors in memory and not, on the
    approximate indexes a run left in `work`, written to `out`.md/.json."""
    from shopsearch.core.index import CatalogIndex
    from shopsearch.core.provenance import git_revision
    from shopsearch.data import load_dataset

    embed = query_embedder(work)
    rows = []
    for n in sizes:
        queries = list(load_dataset("synthetic", n_products=n).split("dev")[0].values())[:COLD_QUERIES]
        query_vectors = embed(queries)
        for kind in kinds:
            directory = work / f"n{n}" / kind / "index"
            if kind == "exact" or not directory.exists():
                continue
            index = CatalogIndex.load(directory)
            row = {"products": n, "kind": kind, "rescore": ivf_rescore(index),
                   "ms_b1_in_memory": round(time_search(index, query_vectors, 1, COLD_QUERIES), 3),
                   "ms_b1_not_in_memory": round(time_search_cold(index, query_vectors), 3)}
            log(f"{n:,} {kind}: {row}")
            rows.append(row)
    lines = [f"# Catalog search with the float32 vectors in memory and not (code {git_revision()})", "",
             f"{COLD_QUERIES} dev queries, batch 1, top 100, in process, one thread; 'not in memory': the vectors' pages "
             "dropped from the process and the page cache before each query (madvise + posix_fadvise).", "",
             "| products | index | IVF rescore | ms/query, vectors in memory | ms/query, not in memory |", "|---|---|---|---|---|"]
    lines += [f"| {r['products']:,} | {r['kind']} | {rescore_cell(r)} | {r['ms_b1_in_memory']} | "
              f"{r['ms_b1_not_in_memory']} |" for r in rows]
    return write_side_report(out, rows, lines)


def quality_only(sizes: list[int], kinds: list[str], work: Path, out: Path, log) -> str:
    """What an index's answers are worth against exact search's, on every dev query of the shop's
    judgments: nDCG@10, Recall@100, MRR@10 of the served order (pytrec_eval), and the share of
    queries whose top 10 is exact search's list, for the indexes a run left in `work`."""
    from shopsearch.core.index import CatalogIndex
    from shopsearch.core.metrics import evaluate_run
    from shopsearch.core.provenance import git_revision
    from shopsearch.data import load_dataset

    embed = query_embedder(work)
    rows = []
    for n in sizes:
        dataset = load_dataset("synthetic", n_products=n)
        queries, qrels = dataset.split("dev")
        qids = sorted(queries)
        query_vectors = embed([queries[q] for q in qids])
        ids = [p.product_id for p in dataset.products]

        def as_run(found: np.ndarray) -> dict[str, dict[str, float]]:
            # Scored by position: the metrics see the order the ranker serves, whatever its scores.
            return {q: {ids[r]: float(100 - i) for i, r in enumerate(row) if r >= 0} for q, row in zip(qids, found)}

        exact_rows = None
        for kind in kinds:
            directory = work / f"n{n}" / kind / "index"
            if not directory.exists():
                continue
            index = CatalogIndex.load(directory)
            if exact_rows is None:
                exact_rows = CatalogIndex(index.vectors, index.embedder_id).exact_search(query_vectors, 100)[0]
                rows.append({"products": n, "kind": "exact", "rescore": None, "same_top10_as_exact": 1.0,
                             **evaluate_run(as_run(exact_rows), qrels, dataset.relevant_min_gain)})
            found = index.search(query_vectors, 100)[0]
            same = float(np.mean([list(a[:10]) == list(e[:10]) for a, e in zip(found, exact_rows)]))
            rows.append({"products": n, "kind": kind, "rescore": ivf_rescore(index),
                         "same_top10_as_exact": round(same, 4), **evaluate_run(as_run(found), qrels, dataset.relevant_min_gain)})
            log(f"{n:,} {kind}: {rows[-1]}")
    lines = [f"# What each index's answers are worth (code {git_revision()})", "",
             "Every dev query of the synthetic shop's judgments, top 100 in the order served, pytrec_eval.", "",
             "| products | index | IVF rescore | nDCG@10 | Recall@100 | MRR@10 | top 10 = exact's list |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['products']:,} | {r['kind']} | {rescore_cell(r)} | {r['ndcg@10']:.4f} | "
              f"{r['recall@100']:.4f} | {r['mrr@10']:.4f} | {r['same_top10_as_exact']:.3f} |" for r in rows]
    return write_side_report(out, rows, lines)


def filters_only(sizes: list[int], kinds: list[str], work: Path, out: Path, log) -> str:
    """Filtered search again on the indexes a full run left in `work` (after a change to filtered
    search alone): the same queries, filters and comparison, written to `out`.md/.json."""
    from shopsearch.core.filters import CatalogFacets
    from shopsearch.core.index import CatalogIndex
    from shopsearch.core.provenance import git_revision
    from shopsearch.data import load_dataset

    embed = query_embedder(work)
    rows = []
    for n in sizes:
        dataset = load_dataset("synthetic", n_products=n)
        query_vectors = embed(list(dataset.split("dev")[0].values())[:FILTERED_QUERIES])
        facets = CatalogFacets.from_products(dataset.products)
        exact = None
        for kind in kinds:
            directory = work / f"n{n}" / kind / "index"
            if not directory.exists():
                continue
            index = CatalogIndex.load(directory)
            exact = exact or CatalogIndex(index.vectors, index.embedder_id)
            filters = filter_sets(dataset, exact.search(query_vectors, 1)[0][:, 0])
            row = {"products": n, "kind": kind}
            for name, chosen in filters.items():
                same, ms = filtered_agreement(index, exact, facets, query_vectors, chosen)
                row[name] = {"same_top10": round(same, 4), "ms": round(ms, 3)}
            log(f"{n:,} {kind}: {row}")
            rows.append(row)
    lines = [f"# Filtered search again (code {git_revision()}): "
             f"{FILTERED_QUERIES} dev queries on the indexes of the last full run", "",
             "| products | index | category: same top 10 | ms | narrow: same top 10 | ms |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['products']:,} | {r['kind']} | {r['category']['same_top10']:.4f} | {r['category']['ms']} | "
              f"{r['narrow']['same_top10']:.4f} | {r['narrow']['ms']} |" for r in rows]
    return write_side_report(out, rows, lines)


def markdown(report: ScaleReport) -> str:
    lines = [f"# Catalog search cost from 20k to 2M products ({report.machine})", "",
             f"One `make bench-scale` run (code {report.code_version}) started {report.started_at}, "
             f"{report.seconds / 60:.0f} minutes in all. "
             f"Checkpoint `{report.checkpoint}`, served embedder {report.embedder}; in-process = the loaded index, one "
             f"thread; served = a fresh tritonserver, perf_analyzer over gRPC at concurrency {CONCURRENCY}; "
             "ranker memory = its Python-backend stub's resident set under load (anonymous = private to the instance; "
             "the rest is file-backed, shared by every instance that maps the same file). Served q/s replay a Zipf "
             f"stream (exponent {ZIPF_EXPONENT}, {ZIPF_REQUESTS:,} requests over every query the shop generates) "
             "without and with Triton's response cache; the hit rate is Triton's own count over the cached run.", "",
             "| products | generate s | embed s | dev queries | float32 vectors MB | replay: distinct queries requested / in the shop |",
             "|---|---|---|---|---|---|"]
    for n, size in report.sizes.items():
        lines.append(f"| {int(n):,} | {size['generate_s']} | {size['embed_s']} | {size['dev_queries']} | {size['vectors_bytes'] / 1e6:.0f} | "
                     f"{size['replay_distinct_requested']:,} / {size['replay_distinct_queries']:,} |")
    lines += ["", "| products | index | build s | index MB | recall@100 vs exact | ms/query b1 | ms/query b16 | "
              "ms/query b1, vectors not in memory | served q/s | p99 ms | "
              "ranker RSS MB | of which private | cached q/s | cached p99 ms | cache hit rate | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    filtered_lines = ["", f"Filtered search, {FILTERED_QUERIES} dev queries, each filtered to the category of its best exact "
                      "match (category), or to that category in stock at most its median price (narrow); top 10 the same "
                      "list as exact filtered search, and in-process ms per query:", "",
                      "| products | index | category: same top 10 | ms | narrow: same top 10 | ms |", "|---|---|---|---|---|---|"]
    for r in report.rows:
        if r.filtered_same_top10_category is not None:
            filtered_lines.append(f"| {r.products:,} | {r.kind} | {r.filtered_same_top10_category:.4f} | {r.filtered_ms_category} | "
                                  f"{r.filtered_same_top10_narrow:.4f} | {r.filtered_ms_narrow} |")
    fmt = lambda v, spec="": "-" if v is None else format(v, spec)  # noqa: E731
    for r in report.rows:
        lines.append(f"| {r.products:,} | {r.kind} | {fmt(r.build_s)} | {fmt(r.index_bytes and r.index_bytes / 1e6, '.0f')} | "
                     f"{fmt(r.recall_at_100, '.4f')} | {fmt(r.ms_per_query_b1)} | {fmt(r.ms_per_query_b16)} | "
                     f"{fmt(r.ms_per_query_b1_cold)} | {fmt(r.served_qps)} | "
                     f"{fmt(r.served_p99_ms)} | {fmt(r.ranker_rss_mb, '.0f')} | {fmt(r.ranker_rss_anon_mb, '.0f')} | "
                     f"{fmt(r.cached_qps)} | {fmt(r.cached_p99_ms)} | {fmt(r.cache_hit_rate, '.3f')} | {r.note} |")
    return "\n".join(lines + filtered_lines) + "\n"


def plot(report: ScaleReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind in INDEX_KINDS:
        for batch, style in (("b1", "-o"), ("b16", "--s")):
            points = [(r.products, getattr(r, f"ms_per_query_{batch}")) for r in report.rows
                      if r.kind == kind and getattr(r, f"ms_per_query_{batch}") is not None]
            if points:
                ax.plot(*zip(*points), style, label=f"{kind}, batch {batch[1:]}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog products")
    ax.set_ylabel("in-process ms per query (top 100)")
    ax.set_title("Catalog search cost against catalog size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a search checkpoint of the default recipe")
    parser.add_argument("--recipe", type=Path, required=True, help="its recipe: [index] sets the approximate kinds' settings")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--kinds", default=",".join(INDEX_KINDS))
    parser.add_argument("--hnsw-max", type=int, default=200_000, help="skip HNSW above this many products (build time)")
    parser.add_argument("--no-serve", action="store_true", help="in-process numbers only")
    parser.add_argument("--filters-only", action="store_true",
                        help="only filtered search, on the indexes the last full run left in --work")
    parser.add_argument("--ivf-rescore", type=int, default=None,
                        help="override the recipe's [index] rescore for ivf (0: 8-bit scores, no float32 vectors read)")
    parser.add_argument("--quality-only", action="store_true",
                        help="only nDCG@10 / Recall@100 / MRR@10 of each index's served order, on the indexes in --work")
    parser.add_argument("--cold-only", action="store_true",
                        help="only ms per query with the float32 vectors in memory and not, on the indexes in --work")
    parser.add_argument("--measurement-ms", type=int, default=4000)
    parser.add_argument("--work", type=Path, default=Path("artifacts/bench_scale"))
    parser.add_argument("--out", type=Path, default=Path("loadtests/results/bench_scale_cpu_2core"))
    args = parser.parse_args(argv)
    from shopsearch.core.provenance import git_revision, utc_timestamp
    from shopsearch.train.recipes import load_recipe

    log = lambda m: print(m, flush=True)  # noqa: E731
    started = time.time()
    try:
        recipe = load_recipe(args.recipe)
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        if args.quality_only:
            print(quality_only(sorted(int(s) for s in args.sizes.split(",")), kinds, args.work, args.out, log))
            return 0
        if args.cold_only:
            print(cold_only(sorted(int(s) for s in args.sizes.split(",")), kinds, args.work, args.out, log))
            return 0
        if args.filters_only:
            print(filters_only(sorted(int(s) for s in args.sizes.split(",")), kinds, args.work, args.out, log))
            return 0
        specs = {kind: recipe.index_spec(kind) for kind in kinds}
        if args.ivf_rescore is not None and "ivf" in specs:
            specs["ivf"] = replace(specs["ivf"], rescore=args.ivf_rescore)
        base = BaseBuild(args.checkpoint, args.work, log)
        report = ScaleReport(machine=f"{os.cpu_count()}-core CPU", checkpoint=str(args.checkpoint),
                             embedder=base.served_name, started_at=utc_timestamp(), code_version=git_revision())
        for n in sorted(int(s) for s in args.sizes.split(",")):
            bench_size(base, n, kinds, specs, args.work, report, args.hnsw_max, not args.no_serve, args.measurement_ms, log)
            report.seconds = round(time.time() - started, 1)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps(report.to_json(), indent=2))  # kept after each size
            args.out.with_suffix(".md").write_text(markdown(report))
        plot(report, args.out.with_suffix(".png"))
    except ShopSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
