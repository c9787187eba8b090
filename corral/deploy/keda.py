"""A group's ``autoscaling:`` settings as a KEDA ScaledObject (KEDA 2.18's ``keda.sh/v1alpha1``), as close to
Ray Serve's meaning as KEDA and the HPA under it go. The mapping, and what has no equivalent, is the table in
docs/kubernetes.md; each settings-to-field line below says why where it is not one to one.

The load signal is the policy's: ongoing requests (``corral:num_requests_running`` plus
``corral:num_requests_waiting``) summed over the group's pods, with ``target_ongoing_requests`` as the
trigger's per-replica threshold, so the HPA asks for ``ceil(total / target)`` replicas, the policy's own ask."""

from __future__ import annotations

import math

from corral.deploy.k8s_common import K8sOptions, labels, metadata, object_name
from corral.deploy.source import DeployError
from corral.gateway.autoscale.config import AutoscalingConfig

# The HPA refuses stabilization windows over an hour (autoscaling/v2 validation).
MAX_STABILIZATION_S = 3600
_POLICY_PERIOD_S = 15
# A window shorter than Prometheus' scrape interval may hold no sample at all.
_MIN_USEFUL_WINDOW_S = 30


def pod_selector(group: str, namespace: str) -> str:
    """PromQL label matchers for the group's pods: the ``namespace`` and ``pod`` labels that both Prometheus'
    `kubernetes-pods` scrape job and the Prometheus Operator's PodMonitor attach. A Deployment's pods are named
    ``<deployment>-<replicaset hash>-<suffix>``, so another group's longer name never matches."""
    return f'namespace="{namespace}",pod=~"{object_name(group)}-[a-z0-9]+-[a-z0-9]+"'


def ongoing_requests_query(group: str, settings: AutoscalingConfig, namespace: str) -> str:
    """The group's ongoing requests, each pod's series aggregated over the look-back window, then summed."""
    metric = f'{{__name__=~"corral:num_requests_(running|waiting)",{pod_selector(group, namespace)}}}'
    return f"sum({_over_time(settings)}({metric}[{_window_s(settings)}s]))"


def scaled_object(group: str, settings: AutoscalingConfig, options: K8sOptions) -> tuple[dict, list[str]]:
    """The ScaledObject for a group's Deployment, and a line for each setting that KEDA cannot honour exactly."""
    where = f"groups.{group}.autoscaling"
    notes: list[str] = []
    spec: dict = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": object_name(group)},
        "pollingInterval": options.polling_interval_s,
        "maxReplicaCount": settings.max_replicas,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(settings, where)}},
        "triggers": _triggers(group, settings, options, where),
    }
    if settings.scale_to_zero:
        # KEDA's idle count must be below its minimum and works only as 0: at zero, the first activity scales
        # to minReplicaCount = 1, which is the policy's cold start of exactly one replica.
        spec["idleReplicaCount"] = 0
        spec["minReplicaCount"] = 1
        spec["cooldownPeriod"] = round(settings.to_zero_delay_s)
    else:
        spec["minReplicaCount"] = settings.min_replicas
    if settings.upscaling_factor != 1 or settings.downscaling_factor != 1:
        notes.append(f"{where}: upscaling_factor/downscaling_factor other than 1 have no HPA equivalent; "
                     "each scale closes the whole gap")
    if _window_s(settings) < _MIN_USEFUL_WINDOW_S:
        notes.append(f"{where}.look_back_period_s: {settings.look_back_period_s:g} s may be shorter than "
                     "Prometheus' scrape interval; the trigger's query may find no sample")
    name = object_name(group)
    obj = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
           "metadata": metadata(name, options.namespace, labels("replica", group), group), "spec": spec}
    return obj, notes


def _triggers(group: str, settings: AutoscalingConfig, options: K8sOptions, where: str) -> list[dict]:
    selector = pod_selector(group, options.namespace)
    triggers = [_prometheus("ongoing-requests", options.prometheus_url,
                            ongoing_requests_query(group, settings, options.namespace),
                            settings.target_ongoing_requests)]
    if settings.target_kv_cache_usage is not None:
        kv_query = (f"sum({_over_time(settings)}(corral:kv_cache_usage_perc{{{selector}}}"
                    f"[{_window_s(settings)}s]))")
        triggers.append(_prometheus("kv-cache-usage", options.prometheus_url, kv_query,
                                    settings.target_kv_cache_usage))
    if settings.target_compute_utilization is not None:
        if options.gpus:
            raise DeployError(f"{where}.target_compute_utilization: GPU utilization has no KEDA trigger here "
                              "(it needs a GPU metrics exporter); drop the setting or deploy without --gpus")
        # KEDA's cpu trigger: the pods' CPU use over their CPU request, in percent.
        triggers.append({"type": "cpu", "name": "compute-utilization", "metricType": "Utilization",
                         "metadata": {"value": str(round(settings.target_compute_utilization * 100))}})
    if settings.scale_to_zero:
        triggers.append(_prometheus("cold-start", options.prometheus_url, _cold_start_query(group, settings,
                                                                                            options.namespace), 1))
    return triggers


def _prometheus(name: str, server: str, query: str, threshold: float) -> dict:
    return {"type": "prometheus", "name": name, "metricType": "AverageValue",
            "metadata": {"serverAddress": server, "query": query, "threshold": f"{threshold:g}",
                         "activationThreshold": "0"}}


def _cold_start_query(group: str, settings: AutoscalingConfig, namespace: str) -> str:
    """1 while the gateway turned away requests for the group in the window (none of its pods exists, so their
    own metrics are absent), else 0: at threshold 1 it asks for one replica at most, enough to wake the group.
    It reads the gateway's answers labelled with the group (5xx) and its fallbacks taken for want of a backend."""
    window = f"[{_window_s(settings)}s]"
    refused = (f'sum(increase(corral_gateway_requests_total{{namespace="{namespace}",group="{group}",'
               f'status=~"5.."}}{window}))')
    fell_back = (f'sum(increase(corral_gateway_fallbacks_total{{namespace="{namespace}",from="{group}",'
                 f'reason="no_backend"}}{window}))')
    return f"clamp_max(({refused} or vector(0)) + ({fell_back} or vector(0)), 1)"


def _behavior(settings: AutoscalingConfig, where: str) -> dict:
    """The HPA's stabilization windows are the policy's delays: a scale up is to the lowest count recommended
    throughout the window, a scale down to the highest, so a change waits until it was asked for all along."""
    up = _window(settings.upscale_delay_s, f"{where}.upscale_delay_s")
    down = _window(settings.downscale_delay_s, f"{where}.downscale_delay_s")
    # Without policies the HPA adds at most max(4 pods, 100%) per 15 s; these let one step close the whole gap.
    return {
        "scaleUp": {"stabilizationWindowSeconds": up, "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": settings.max_replicas, "periodSeconds": _POLICY_PERIOD_S}]},
        "scaleDown": {"stabilizationWindowSeconds": down, "selectPolicy": "Max",
                      "policies": [{"type": "Percent", "value": 100, "periodSeconds": _POLICY_PERIOD_S}]},
    }


def _window(delay_s: float, key: str) -> int:
    if delay_s > MAX_STABILIZATION_S:
        raise DeployError(f"{key}: {delay_s:g} s is over the {MAX_STABILIZATION_S} s that the Kubernetes HPA "
                          "allows for a stabilization window")
    return round(delay_s)


def _window_s(settings: AutoscalingConfig) -> int:
    return max(1, math.ceil(settings.look_back_period_s))


def _over_time(settings: AutoscalingConfig) -> str:
    """``aggregation_function`` over the look-back window, per pod (Ray's order: per replica, then summed)."""
    return {"mean": "avg_over_time", "max": "max_over_time", "min": "min_over_time"}[settings.aggregation_function]
