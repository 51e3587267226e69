"""The scale-out manifests lint against Kubernetes' own schemas (offline, kubernetes-validate) and
agree with how the project runs tritonserver."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

MANIFESTS = sorted((Path(__file__).resolve().parents[1] / "deploy" / "kubernetes").glob("*.yaml"))
K8S_VERSION = "1.30.0"


def documents():
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_manifest_passes_the_kubernetes_schema():
    docs = documents()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                         "NetworkPolicy"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_lint_catches_a_broken_manifest():
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment["spec"]["replicas"] = 3
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_deployment_runs_triton_as_the_project_does():
    from shopsearch.ops.server import restricted_api_args

    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    triton = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton")
    # Explicit control with the model repository API behind the key, as `make serve` runs it. The
    # synced repository is one build's output, which holds exactly the models that build made, so
    # loading all of it loads the build manifest's list.
    assert {"--model-control-mode=explicit", "--load-model=*", *restricted_api_args("$(ADMIN_KEY)")} <= set(triton["args"])
    # The response cache the shipped recipes' builds ask for (BuildOptions' default size too).
    from shopsearch.build.options import BuildOptions
    from shopsearch.train.recipes import RECIPE_DIR, load_recipe

    for recipe in ("synthetic.toml", "homedepot.toml"):
        assert load_recipe(RECIPE_DIR / recipe).serving_options()["response_cache_mb"] == BuildOptions().response_cache_mb
    assert f"--cache-config=local,size={BuildOptions().response_cache_mb << 20}" in triton["args"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/models/search/ready"
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}


def test_clients_reach_the_gateway_and_triton_stays_internal():
    """The Service for clients exposes only the product API; Triton's own ports are ClusterIP and
    admitted only from operator pods (and metrics from Prometheus)."""
    docs = documents()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    gateway = containers["gateway"]
    assert gateway["command"][:2] == ["shopsearch", "gateway"] and "127.0.0.1:8001" in gateway["command"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/v1/ready"
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert [p["targetPort"] for p in services["shopsearch-api"]["spec"]["ports"]] == ["api"]
    assert services["shopsearch-triton"]["spec"]["type"] == "ClusterIP"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    open_rules = [r for r in policy["spec"]["ingress"] if "from" not in r]
    assert [p["port"] for r in open_rules for p in r["ports"]] == [8080]
