"""``corral deploy k8s``'s objects: every one validates against the Kubernetes (and KEDA) schemas, and what they
say comes from the gateway config: probes, replica bounds, the trigger, the in-cluster gateway config."""

from __future__ import annotations

import copy

import pytest
import yaml

from corral.deploy.k8s import render, write_manifests
from corral.deploy.k8s_common import K8sOptions
from corral.deploy.source import DeployError, DeploySource
from corral.gateway.config import parse_config
from tests.deploy.k8s_schemas import validation_errors

CONFIG = {
    "groups": {
        "smol": {
            "backends": [{"local": ["--model", "/models/smol.gguf", "--max-model-len", "4096"]}],
            "health": {"interval_s": 3, "timeout_s": 4, "unhealthy_after": 5},
            "replicas": {"startup_timeout_s": 600, "drain_timeout_s": 90},
            "autoscaling": {"min_replicas": 0, "max_replicas": 6, "target_ongoing_requests": 4,
                            "target_kv_cache_usage": 0.8, "upscale_delay_s": 10, "downscale_delay_s": 300,
                            "downscale_to_zero_delay_s": 900, "look_back_period_s": 60},
        },
        "Tiny.Q8_0": {
            "backends": [{"local": ["--model", "/models/tiny.gguf"]}, {"local": ["--model", "/models/tiny.gguf"]},
                         {"url": "http://10.0.0.7:8000", "model": "SmolLM2", "api_key": "secret"}],
        },
        "frontier": {"backends": [{"url": "https://api.example.com", "api_key": "k"}]},
    },
}
OPTIONS = K8sOptions(image="registry.local/corral:test", namespace="llm", gpus=1)


def source(data: dict = CONFIG) -> DeploySource:
    config = parse_config(copy.deepcopy(data), "gateway.yaml")
    settings = {name: group.autoscaling for name, group in config.groups.items() if group.autoscaling is not None}
    return DeploySource(config, settings)


def by_kind(objects: list[dict], kind: str, name: str) -> dict:
    return next(obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name)


def test_every_object_validates_against_its_schema():
    manifests = render(source(), OPTIONS)
    kinds = sorted(obj["kind"] for obj in manifests.objects)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Deployment", "ScaledObject", "Service", "Service",
                     "Service"]
    for obj in manifests.objects:
        assert validation_errors(obj) == [], (obj["kind"], obj["metadata"]["name"])
        assert obj["metadata"]["namespace"] == "llm"


@pytest.mark.parametrize(("kind", "path", "wrong"), [
    ("Deployment", ("spec", "template", "spec", "containers", 0), "readynessProbe"),
    ("ScaledObject", ("spec",), "minReplicas"),
    ("ScaledObject", ("spec", "advanced", "horizontalPodAutoscalerConfig", "behavior", "scaleUp"),
     "stabilizationWindow"),
])
def test_a_misspelt_field_fails_validation(kind, path, wrong):
    """The validation can fail: one renamed field in an otherwise valid object is named in the errors."""
    obj = copy.deepcopy(by_kind(render(source(), OPTIONS).objects, kind, "corral-smol"))
    parent = obj
    for part in path:
        parent = parent[part]
    right = {"readynessProbe": "readinessProbe", "minReplicas": "minReplicaCount",
             "stabilizationWindow": "stabilizationWindowSeconds"}[wrong]
    parent[wrong] = parent.pop(right)
    assert any(repr(wrong) in error for error in validation_errors(obj))


def test_replica_pods_come_from_the_group():
    objects = render(source(), OPTIONS).objects
    deployment = by_kind(objects, "Deployment", "corral-smol")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.local/corral:test"
    assert container["command"] == ["corral", "serve", "--model", "/models/smol.gguf", "--max-model-len", "4096",
                                    "--host", "0.0.0.0", "--port", "8000", "--served-model-name", "smol"]
    readiness = container["readinessProbe"]
    assert readiness["httpGet"] == {"path": "/health", "port": "http"}
    assert (readiness["periodSeconds"], readiness["timeoutSeconds"], readiness["failureThreshold"]) == (3, 4, 5)
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] == 600
    assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "10"]}}
    assert pod["terminationGracePeriodSeconds"] == 10 + 90  # the preStop sleep, then the group's drain timeout
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert deployment["spec"]["replicas"] == 0  # min_replicas 0 and no initial_replicas
    assert deployment["spec"]["selector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind(objects, "Service", "corral-smol")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_a_group_without_autoscaling_runs_its_local_backends_count():
    objects = render(source(), OPTIONS).objects
    assert by_kind(objects, "Deployment", "corral-tiny-q8-0")["spec"]["replicas"] == 2
    assert not [obj for obj in objects if obj["kind"] == "ScaledObject" and "tiny" in obj["metadata"]["name"]]


def test_the_gateway_config_points_at_services_and_keeps_foreign_urls():
    manifests = render(source(), OPTIONS)
    config_map = by_kind(manifests.objects, "ConfigMap", "corral-gateway")
    data = yaml.safe_load(config_map["data"]["gateway.yaml"])
    parse_config(data)  # loads as the gateway will load it
    assert (data["host"], data["port"]) == ("0.0.0.0", 8080)
    assert data["groups"]["smol"]["backends"] == [{"name": "corral-smol", "url": "http://corral-smol.llm.svc.cluster"
                                                   ".local:8000", "on_premises": True, "scrape_metrics": False}]
    assert "autoscaling" not in data["groups"]["smol"]  # KEDA scales; the in-cluster gateway must not
    tiny = data["groups"]["Tiny.Q8_0"]["backends"]
    assert [backend["url"] for backend in tiny] == ["http://corral-tiny-q8-0.llm.svc.cluster.local:8000",
                                                    "http://10.0.0.7:8000"]
    assert tiny[1] == {"url": "http://10.0.0.7:8000", "model": "SmolLM2", "api_key": "secret"}
    assert data["groups"]["frontier"]["backends"] == [{"url": "https://api.example.com", "api_key": "k"}]
    assert "corral-frontier.yaml" not in manifests.files  # nothing of it runs in the cluster
    assert any("api_key" in note for note in manifests.notes)
    gateway = by_kind(manifests.objects, "Deployment", "corral-gateway")["spec"]["template"]
    assert gateway["spec"]["containers"][0]["command"] == ["corral", "gateway", "--config",
                                                           "/etc/corral/gateway.yaml"]
    assert "corral.dev/config-sha256" in gateway["metadata"]["annotations"]


def test_groups_whose_names_collide_in_kubernetes_are_refused():
    data = {"groups": {"Smol": {"backends": [{"local": ["--model", "a"]}]},
                       "smol": {"backends": [{"local": ["--model", "b"]}]}}}
    with pytest.raises(DeployError, match=r"^groups\.smol: its Kubernetes name 'corral-smol' is also group 'Smol'"):
        render(source(data), OPTIONS)


def test_local_backends_with_different_arguments_are_refused():
    data = {"groups": {"g": {"backends": [{"local": ["--model", "a"]}, {"local": ["--model", "b"]}]}}}
    with pytest.raises(DeployError, match=r"^groups\.g\.backends\.1\.local: differs from backends\.0\.local"):
        render(source(data), OPTIONS)


def test_write_manifests_writes_one_yaml_stream_per_group_and_the_gateway(tmp_path):
    paths = write_manifests(render(source(), OPTIONS), tmp_path / "out")
    assert sorted(path.name for path in paths) == ["corral-gateway.yaml", "corral-smol.yaml", "corral-tiny-q8-0.yaml"]
    smol = list(yaml.safe_load_all((tmp_path / "out" / "corral-smol.yaml").read_text()))
    assert [obj["kind"] for obj in smol] == ["Deployment", "Service", "ScaledObject"]
    assert "gateway.yaml: |" in (tmp_path / "out" / "corral-gateway.yaml").read_text()
