"""A model group's replicas on Kubernetes: a Deployment of ``corral serve`` pods and the Service in front of them.

corral serve has no drain endpoint. Draining is Kubernetes' own: the preStop hook sleeps while the pod leaves
its Service's endpoints (no new requests arrive), then SIGTERM makes uvicorn stop accepting connections and
wait for the requests in flight; ``terminationGracePeriodSeconds`` bounds that wait by the group's own
``replicas.drain_timeout_s`` (as the gateway's local autoscaler drains a replica) plus the sleep."""

from __future__ import annotations

import math

from corral.deploy.k8s_common import (
    REPLICA_PORT,
    K8sOptions,
    http_probe,
    labels,
    metadata,
    object_name,
    scrape_annotations,
    service,
)
from corral.gateway.config import GroupConfig

_STARTUP_PERIOD_S = 10


def replica_objects(group_name: str, group: GroupConfig, args: list[str], replicas: int,
                    options: K8sOptions) -> list[dict]:
    """The group's Deployment (``replicas`` pods to start with) and Service."""
    name = object_name(group_name)
    pod_labels = labels("replica", group_name)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, options.namespace, pod_labels, group_name),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(pod_labels)},
            # A new pod must pass its readiness probe before an old one is stopped: no capacity dip on rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": dict(pod_labels), "annotations": scrape_annotations(REPLICA_PORT)},
                "spec": _pod_spec(group_name, group, args, options),
            },
        },
    }
    return [deployment, service(name, options.namespace, pod_labels, REPLICA_PORT, group_name)]


def _pod_spec(group_name: str, group: GroupConfig, args: list[str], options: K8sOptions) -> dict:
    command = ["corral", "serve", *args, "--host", "0.0.0.0", "--port", str(REPLICA_PORT),
               "--served-model-name", group_name]
    health = group.health
    container = {
        "name": "corral-serve",
        "image": options.image,
        "command": command,
        "ports": [{"name": "http", "containerPort": REPLICA_PORT, "protocol": "TCP"}],
        "resources": _resources(options),
        # Loading a model takes as long as the gateway's own supervisor allows a local replica.
        "startupProbe": http_probe(_STARTUP_PERIOD_S, health.timeout_s,
                                   max(1, math.ceil(group.replicas.startup_timeout_s / _STARTUP_PERIOD_S))),
        "readinessProbe": http_probe(health.interval_s, health.timeout_s, health.unhealthy_after),
        "livenessProbe": http_probe(max(10.0, health.interval_s), health.timeout_s, 3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(options.drain_delay_s)]}}},
    }
    spec: dict = {
        "containers": [container],
        "terminationGracePeriodSeconds": options.drain_delay_s + math.ceil(group.replicas.drain_timeout_s),
    }
    if options.model_claim is not None:
        container["volumeMounts"] = [{"name": "models", "mountPath": options.model_mount, "readOnly": True}]
        spec["volumes"] = [{"name": "models",
                            "persistentVolumeClaim": {"claimName": options.model_claim, "readOnly": True}}]
    return spec


def _resources(options: K8sOptions) -> dict:
    requests = {"cpu": options.cpu, "memory": options.memory}
    limits: dict[str, str | int] = {"memory": options.memory}
    if options.gpus:
        limits["nvidia.com/gpu"] = options.gpus
    return {"requests": requests, "limits": limits}

