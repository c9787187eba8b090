"""What every Kubernetes object written by ``corral deploy k8s`` shares: the options, names and labels."""

from __future__ import annotations

import re
from dataclasses import dataclass

REPLICA_PORT = 8000  # corral serve's default port
GATEWAY_PORT = 8080
# Prometheus' in-cluster address as the kube-prometheus-stack chart names it (the `prometheus-operated` Service).
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
# Kubernetes caps Service names (DNS-1035 labels) at 63 characters.
_MAX_NAME = 63


@dataclass(frozen=True)
class K8sOptions:
    """The flags of ``corral deploy k8s``: where the objects go and what the replicas' pods get."""

    image: str = "corral:latest"  # `corral deploy k8s` defaults to the tag of its own version
    namespace: str = "default"
    prometheus_url: str = DEFAULT_PROMETHEUS
    cpu: str = "2"
    memory: str = "8Gi"
    gpus: int = 0
    gateway_cpu: str = "1"
    gateway_memory: str = "1Gi"
    gateway_replicas: int = 1
    # Seconds between a pod's removal from its Service's endpoints and its SIGTERM (the preStop sleep).
    drain_delay_s: int = 10
    polling_interval_s: int = 15  # KEDA's pollingInterval: how often the trigger queries Prometheus
    model_claim: str | None = None  # a PersistentVolumeClaim holding the models, mounted at model_mount
    model_mount: str = "/models"

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.gateway_replicas < 1 or self.drain_delay_s < 0 or self.polling_interval_s < 1:
            raise ValueError("gpus >= 0, gateway_replicas >= 1, drain_delay_s >= 0 and polling_interval_s >= 1")


def object_name(group: str) -> str:
    """A DNS-1035 name for a group's Deployment, Service and ScaledObject: ``corral-<group>``, lowercased, every
    other character as ``-``. Two groups with one name are refused by the caller."""
    slug = re.sub(r"[^a-z0-9-]+", "-", group.lower()).strip("-")
    return f"corral-{slug}"[:_MAX_NAME].rstrip("-")


def labels(component: str, group: str | None = None) -> dict[str, str]:
    """The labels that select a group's pods (the group's object name) or the gateway's."""
    selected = {"app.kubernetes.io/name": "corral", "app.kubernetes.io/component": component}
    if group is not None:
        selected["app.kubernetes.io/instance"] = object_name(group)
    return selected


def metadata(name: str, namespace: str, object_labels: dict[str, str], group: str | None = None) -> dict:
    meta: dict = {"name": name, "namespace": namespace, "labels": dict(object_labels)}
    if group is not None:
        meta["annotations"] = {"corral.dev/group": group}  # the name as clients send it, any characters
    return meta


def service(name: str, namespace: str, object_labels: dict[str, str], port: int, group: str | None = None) -> dict:
    """A ClusterIP Service in front of the pods with these labels, on the container port named ``http``."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, namespace, object_labels, group),
        "spec": {"type": "ClusterIP", "selector": dict(object_labels),
                 "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]},
    }


def service_url(name: str, namespace: str, port: int) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local:{port}"


def http_probe(period_s: float, timeout_s: float, failure_threshold: int) -> dict:
    """A probe of ``GET /health`` on the port named ``http`` (whole seconds, at least 1, as Kubernetes wants)."""
    return {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": max(1, round(period_s)),
            "timeoutSeconds": max(1, round(timeout_s)), "failureThreshold": failure_threshold}


def scrape_annotations(port: int) -> dict[str, str]:
    """The pod annotations that Prometheus' usual `kubernetes-pods` scrape job reads."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
