"""Custom Prometheus metrics of the served models, computed from what each step saw and answered.

Triton's own metrics (/metrics: nv_inference_*) count requests, queue and compute time; these say
what the traffic *is*: query lengths, how many candidates the ranker weighed, how often a search
came back empty, how many requests were refused for bad input. The Python-backend adapter
registers them through `pb_utils.MetricFamily`; `observations` is plain Python, tested in-process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shopsearch.core.results import PAD_PRODUCT_ID
from shopsearch.errors import ShopSearchError
from shopsearch.serving.tensors import KNOWN_ITEMS, PRODUCT_IDS, QUERY, STRATEGY, UNKNOWN_IDS

# Outcome keys that are not served tensors (the adapter sends only the config's outputs): what a
# step counted while it ran, per query, for the metrics below.
CANDIDATE_POOL = "_candidate_pool"  # ranker: candidates weighed
TOKEN_COUNTS = "_token_counts"  # tokenizer: tokens after truncation


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter | histogram
    description: str
    buckets: tuple[float, ...] = ()


REJECTED = MetricSpec("shopsearch_rejected_requests_total", "counter", "Requests refused with a client error (bad input)")
QUERY_CHARS = MetricSpec("shopsearch_query_chars", "histogram", "Characters per query received by the tokenizer",
                         (4, 8, 16, 32, 64, 128, 256, 1024))
QUERY_TOKENS = MetricSpec("shopsearch_query_tokens", "histogram", "Tokens per query after truncation", (2, 4, 8, 16, 32, 64))
CANDIDATES = MetricSpec("shopsearch_ranker_candidates", "histogram", "Candidates the ranker scored per query",
                        (10, 25, 50, 100, 150, 200, 300, 500))
QUERIES = MetricSpec("shopsearch_queries_total", "counter", "Queries answered with results")
EMPTY = MetricSpec("shopsearch_empty_results_total", "counter", "Queries answered with no product at all")
HISTORY_ITEMS = MetricSpec("shopsearch_rec_history_items", "histogram", "Known catalog items per recommendation history",
                          (0, 1, 2, 5, 10, 20, 50, 100, 500))
UNKNOWN = MetricSpec("shopsearch_rec_unknown_ids_total", "counter", "Product ids sent that the catalog does not know (ignored)")
RECOMMENDATIONS = MetricSpec("shopsearch_rec_answers_total", "counter", "Recommendation rows answered")
POPULARITY = MetricSpec("shopsearch_rec_popularity_fallbacks_total", "counter",
                        "Recommendation rows answered from popularity (no known history item)")

METRIC_SPECS: dict[str, tuple[MetricSpec, ...]] = {
    "tokenizer": (REJECTED, QUERY_CHARS, QUERY_TOKENS),
    "embedder": (REJECTED,),
    "ranker": (REJECTED, CANDIDATES),
    "postprocess": (REJECTED, QUERIES, EMPTY),
    "item_lookup": (REJECTED, HISTORY_ITEMS, UNKNOWN),
    "user_encoder": (REJECTED,),
    "item_embedding": (REJECTED,),
    "rec_postprocess": (REJECTED, RECOMMENDATIONS, POPULARITY),
}


def _text_length(value) -> int:
    return len(value.decode("utf-8", errors="replace")) if isinstance(value, bytes) else len(str(value))


def observations(step: str, requests: Sequence[dict[str, np.ndarray]], outcomes: Sequence) -> list[tuple[MetricSpec, float]]:
    """(metric, value) pairs for one executed batch: counters get increments, histograms samples."""
    out: list[tuple[MetricSpec, float]] = []
    for arrays, outcome in zip(requests, outcomes):
        if isinstance(outcome, ShopSearchError):
            out.append((REJECTED, 1.0))
            continue
        if step == "tokenizer":
            out += [(QUERY_CHARS, float(_text_length(q))) for q in arrays[QUERY].reshape(-1)]
            out += [(QUERY_TOKENS, float(n)) for n in outcome.get(TOKEN_COUNTS, ())]
        elif step == "ranker" and CANDIDATE_POOL in outcome:
            out += [(CANDIDATES, float(n)) for n in outcome[CANDIDATE_POOL]]
        elif step == "postprocess":
            ids = outcome[PRODUCT_IDS]
            empty = int(sum(all((i.decode() if isinstance(i, bytes) else str(i)) == PAD_PRODUCT_ID for i in row) for row in ids))
            out += [(QUERIES, float(len(ids))), (EMPTY, float(empty))]
        elif step == "item_lookup":
            out += [(HISTORY_ITEMS, float(n)) for n in outcome[KNOWN_ITEMS].reshape(-1)]
            out.append((UNKNOWN, float(sum(1 for row in outcome[UNKNOWN_IDS] for i in row if i))))
        elif step == "rec_postprocess":
            strategies = outcome[STRATEGY].reshape(-1)
            out += [(RECOMMENDATIONS, float(len(strategies))), (POPULARITY, float(sum(s == b"popularity" for s in strategies)))]
    return [(spec, value) for spec, value in out if spec in METRIC_SPECS.get(step, ())]


def merged(updates: Sequence[tuple[MetricSpec, float]]) -> list[tuple[MetricSpec, float]]:
    """One increment per counter (zeros dropped), every histogram sample kept: each update the
    Python backend sends is a round trip to the server process, on the request's path."""
    counters: dict[MetricSpec, float] = {}
    out: list[tuple[MetricSpec, float]] = []
    for spec, value in updates:
        if spec.kind == "counter":
            counters[spec] = counters.get(spec, 0.0) + value
        else:
            out.append((spec, value))
    return out + [(spec, total) for spec, total in counters.items() if total]


class MetricSender:
    """Takes a step's metric updates off the request path.

    Each update the Python backend sends (`Metric.increment` / `observe`) is a round trip from the
    stub to the server process: about 0.2 ms per tokenizer request under load on the 2-core CI
    machine, for two histogram samples. `add` only appends under a lock; a daemon thread sends
    what accumulated every `interval_s` (counters merged into one increment, every histogram sample
    kept), and `close` sends the rest. The backend releases the GIL while an update travels, so
    sending overlaps the next execution. At most `max_pending` updates wait; beyond that the
    newest are dropped and counted (a stalled server must not grow the stub without bound).
    """

    def __init__(self, send: Callable[[MetricSpec, float], None], interval_s: float = 0.5, max_pending: int = 100_000,
                 on_error: Callable[[BaseException], None] | None = None):
        self._send, self._interval_s, self._max_pending = send, interval_s, max_pending
        self._on_error = on_error
        self._pending: list[tuple[MetricSpec, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="shopsearch-metrics", daemon=True)
        self._thread.start()

    def add(self, updates: Sequence[tuple[MetricSpec, float]]) -> None:
        with self._lock:
            room = self._max_pending - len(self._pending)
            self._pending.extend(updates[:max(room, 0)])
            self.dropped += max(len(updates) - max(room, 0), 0)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        updates = merged(pending)
        for i, (spec, value) in enumerate(updates):
            try:
                self._send(spec, value)
            except Exception as exc:  # noqa: BLE001 - metrics must never take the model down
                # One report per flush, and the rest of this flush dropped: a broken metrics
                # channel must not flood the log once per update.
                self.dropped += len(updates) - i
                if self._on_error is not None:
                    self._on_error(exc)
                return

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()
