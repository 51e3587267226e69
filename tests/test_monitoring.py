"""Metrics an operator sees: Triton's Prometheus endpoint carries the project's custom metrics, they
move with traffic, and every series the committed dashboard and alerts query really exists."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from shopsearch.clients.search import SearchClient

pytestmark = pytest.mark.integration

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
SERIES = re.compile(r"\b((?:nv|shopsearch)_[a-z0-9_]+)\b")


def scrape(server) -> dict[tuple[str, tuple], float]:
    """(sample name, labels) -> value. prometheus_client names counter samples `<family>_total`
    (OpenMetrics), whatever the exposition called them; a family's own name is kept under labels None."""
    with urllib.request.urlopen(f"http://{server.host}:{server.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict = {}
    for family in text_string_to_metric_families(text):
        samples[(family.name, None)] = 0.0
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return sum(v for (n, l), v in samples.items()
               if n == name and l is not None and all(dict(l).get(k) == want for k, want in labels.items()))


def test_custom_metrics_appear_and_move_with_traffic(triton_server, tiny_dataset):
    queries = sorted(tiny_dataset.queries["dev"].values())[:20]
    before = scrape(triton_server)
    client = SearchClient(triton_server.http_url)
    client.search(queries)
    for _ in range(3):
        with pytest.raises(InferenceServerException):
            client.search(["   "])
    client.close()
    after = scrape(triton_server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # Custom metrics reach the endpoint off the request path: each model's stub sends what it
    # counted every 0.5 s, on its own clock. Give every model's counters a bounded time to land
    # (waiting for the last model's alone once let the ranker's arrive after the check), then
    # check exact values.
    landed = {("shopsearch_query_chars_count", "tokenizer"): 20, ("shopsearch_rejected_requests_total", "tokenizer"): 3,
              ("shopsearch_ranker_candidates_count", "ranker"): 20, ("shopsearch_queries_total", "postprocess"): 20}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(delta(name, model=model) < n for (name, model), n in landed.items()):
        time.sleep(0.2)
        after = scrape(triton_server)

    assert delta("shopsearch_query_chars_count", model="tokenizer") == 20
    assert delta("shopsearch_query_chars_sum", model="tokenizer") == sum(len(q) for q in queries)
    assert delta("shopsearch_query_tokens_count", model="tokenizer") == 20
    assert delta("shopsearch_rejected_requests_total", model="tokenizer") == 3
    assert delta("shopsearch_ranker_candidates_count", model="ranker") == 20
    assert delta("shopsearch_ranker_candidates_sum", model="ranker") >= 20 * 100  # at least the 100 returned each
    assert delta("shopsearch_queries_total", model="postprocess") == 20
    assert delta("shopsearch_empty_results_total", model="postprocess") == 0
    assert delta("nv_inference_request_success_total", model="search") == 1


def test_every_series_the_dashboard_and_alerts_query_exists(triton_server):
    SearchClient(triton_server.http_url).search(["blue tent"])
    exposed = {name for name, _ in scrape(triton_server)}
    # Histogram and counter families expose _bucket/_sum/_count and _total samples.
    dashboard = json.loads((MONITORING / "grafana_dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    alerts = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs += [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    queried = {name for expr in exprs for name in SERIES.findall(expr)}
    assert queried and queried <= exposed, sorted(queried - exposed)
    assert any(n.startswith("shopsearch_") for n in queried) and any(n.startswith("nv_") for n in queried)
    scrape_config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    target = scrape_config["scrape_configs"][0]["static_configs"][0]["targets"][0]
    assert target == "127.0.0.1:8002"  # `make serve`'s metrics port
