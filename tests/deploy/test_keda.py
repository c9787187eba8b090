"""The autoscaling settings as a KEDA ScaledObject: bounds, trigger, windows (docs/kubernetes.md's table)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.deploy.k8s_common import K8sOptions
from corral.deploy.keda import ongoing_requests_query, scaled_object
from corral.deploy.source import DeployError
from corral.gateway.autoscale.config import AutoscalingConfig
from corral.gateway.metrics import GatewayMetrics
from tests.deploy.k8s_schemas import validation_errors

OPTIONS = K8sOptions(namespace="llm", prometheus_url="http://prom.monitoring:9090")
SERVER_METRICS = Path(__file__).resolve().parents[2] / "corral" / "server" / "metrics.py"


def spec_of(**settings) -> dict:
    obj, _ = scaled_object("chat", AutoscalingConfig(**settings), OPTIONS)
    assert validation_errors(obj) == []
    return obj["spec"]


def test_replica_bounds_and_windows_come_from_the_settings():
    spec = spec_of(min_replicas=2, max_replicas=9, upscale_delay_s=12.4, downscale_delay_s=420)
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 9)
    assert "idleReplicaCount" not in spec and "cooldownPeriod" not in spec
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 12
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 420
    # One HPA step may close the whole gap, as upscaling_factor 1 does.
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 9, "periodSeconds": 15}]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "corral-chat"}


def test_scale_to_zero_is_an_idle_count_with_a_cooldown_and_a_cold_start_trigger():
    spec = spec_of(min_replicas=0, max_replicas=3, downscale_to_zero_delay_s=900)
    assert (spec["idleReplicaCount"], spec["minReplicaCount"], spec["cooldownPeriod"]) == (0, 1, 900)
    cold = next(trigger for trigger in spec["triggers"] if trigger["name"] == "cold-start")
    assert cold["metadata"]["threshold"] == "1"
    assert 'group="chat"' in cold["metadata"]["query"] and cold["metadata"]["query"].startswith("clamp_max(")
    assert spec_of(min_replicas=0, max_replicas=3, downscale_delay_s=120)["cooldownPeriod"] == 120


def test_the_trigger_sums_ongoing_requests_of_the_groups_pods_per_target():
    spec = spec_of(max_replicas=4, target_ongoing_requests=2.5, look_back_period_s=45, aggregation_function="max")
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    metadata = trigger["metadata"]
    assert metadata["serverAddress"] == "http://prom.monitoring:9090"
    assert metadata["threshold"] == "2.5"
    assert metadata["query"] == ('sum(max_over_time({__name__=~"corral:num_requests_(running|waiting)",'
                                 'namespace="llm",pod=~"corral-chat-[a-z0-9]+-[a-z0-9]+"}[45s]))')


def test_the_pod_pattern_does_not_match_a_group_with_a_longer_name():
    pattern = re.search(r'pod=~"([^"]+)"', ongoing_requests_query("chat", AutoscalingConfig(max_replicas=2), "x"))
    assert re.fullmatch(pattern.group(1), "corral-chat-7d9f8b6c4-x2kqp")
    assert not re.fullmatch(pattern.group(1), "corral-chat-big-7d9f8b6c4-x2kqp")


def test_kv_cache_and_compute_targets_add_triggers():
    spec = spec_of(max_replicas=4, target_kv_cache_usage=0.75, target_compute_utilization=0.6)
    kv, cpu = spec["triggers"][1:]
    assert kv["metadata"]["threshold"] == "0.75" and "corral:kv_cache_usage_perc{" in kv["metadata"]["query"]
    assert cpu == {"type": "cpu", "name": "compute-utilization", "metricType": "Utilization",
                   "metadata": {"value": "60"}}


def test_what_has_no_equivalent_is_refused_or_noted():
    with pytest.raises(DeployError, match=r"^groups\.chat\.autoscaling\.downscale_delay_s: 7200 s is over"):
        scaled_object("chat", AutoscalingConfig(max_replicas=2, downscale_delay_s=7200), OPTIONS)
    gpu_options = K8sOptions(gpus=1)
    with pytest.raises(DeployError, match=r"^groups\.chat\.autoscaling\.target_compute_utilization: GPU"):
        scaled_object("chat", AutoscalingConfig(max_replicas=2, target_compute_utilization=0.5), gpu_options)
    _, notes = scaled_object("chat", AutoscalingConfig(max_replicas=2, downscaling_factor=0.5,
                                                       look_back_period_s=5), OPTIONS)
    assert [note.split(":")[0] for note in notes] == ["groups.chat.autoscaling",
                                                      "groups.chat.autoscaling.look_back_period_s"]


def test_every_metric_the_triggers_query_is_exposed():
    """A renamed metric fails here: the replica's names from its source, the gateway's from its registry."""
    spec = spec_of(min_replicas=0, max_replicas=4, target_kv_cache_usage=0.8)
    queries = " ".join(trigger["metadata"]["query"] for trigger in spec["triggers"])
    # A name followed by "(" is the alternation's stem, spelt out by hand here.
    replica_names = set(re.findall(r"corral:[a-z_]+(?![a-z_(])", queries)) | {"corral:num_requests_running",
                                                                  "corral:num_requests_waiting"}
    source = SERVER_METRICS.read_text()
    assert all(f'"{name}"' in source for name in replica_names), replica_names
    exposed = {sample.name for metric in GatewayMetrics().registry.collect() for sample in metric.samples}
    gateway_names = set(re.findall(r"corral_gateway_[a-z_]+", queries))
    assert gateway_names == {"corral_gateway_requests_total", "corral_gateway_fallbacks_total"}
    families = {metric.name for metric in GatewayMetrics().registry.collect()}
    assert all(name in exposed or name.removesuffix("_total") in families for name in gateway_names)
