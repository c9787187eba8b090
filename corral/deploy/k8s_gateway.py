"""The gateway on Kubernetes: its config (groups pointed at the in-cluster Services) in a ConfigMap, and a
Deployment and Service of ``corral gateway``. Foreign ``url:`` backends stay as written."""

from __future__ import annotations

import hashlib
import math

import yaml

from corral.deploy.k8s_common import (
    GATEWAY_PORT,
    REPLICA_PORT,
    K8sOptions,
    http_probe,
    labels,
    metadata,
    object_name,
    scrape_annotations,
    service,
    service_url,
)
from corral.gateway.config import GatewayConfig, parse_config

GATEWAY_NAME = "corral-gateway"
CONFIG_PATH = "/etc/corral/gateway.yaml"
# Optional Secret whose keys become the gateway's environment: the admin key (auth.admin_key_env) and
# CORRAL_AUDIT_KEY, which the gateway reads from its environment, never from the config.
SECRET_NAME = "corral-gateway"


def in_cluster_config(config: GatewayConfig, deployed_groups: set[str], namespace: str) -> dict:
    """The gateway's config as the cluster runs it: each deployed group's local backends become one backend,
    its Service; url backends are kept; the gateway listens on all addresses. Checked to load as it is."""
    data = {"host": "0.0.0.0", "port": GATEWAY_PORT,
            **config.model_dump(mode="json", exclude_unset=True, exclude={"host", "port"})}
    for group_name, group in data["groups"].items():
        group.pop("autoscaling", None)  # the cluster's autoscaler (KEDA) acts on it, not the gateway
        foreign = [backend for backend in group["backends"] if backend.get("local") is None]
        if group_name in deployed_groups:
            name = object_name(group_name)
            # The Service spreads connections over the pods, so a scrape would read a random one: count in
            # flight only. In this cluster, so local_only tenants may reach it.
            foreign.insert(0, {"name": name, "url": service_url(name, namespace, REPLICA_PORT),
                               "on_premises": True, "scrape_metrics": False})
        group["backends"] = foreign
    parse_config(data, "the in-cluster gateway config")  # an invariant: what is written loads
    return data


def gateway_objects(config: GatewayConfig, in_cluster: dict, options: K8sOptions) -> list[dict]:
    """ConfigMap, Deployment and Service of the gateway."""
    config_text = yaml.safe_dump(in_cluster, sort_keys=False)
    gateway_labels = labels("gateway")
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": metadata(GATEWAY_NAME, options.namespace, gateway_labels),
                  "data": {"gateway.yaml": config_text}}
    longest_drain_s = max(group.replicas.drain_timeout_s for group in config.groups.values())
    container = {
        "name": "corral-gateway",
        "image": options.image,
        "command": ["corral", "gateway", "--config", CONFIG_PATH],
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"}],
        "envFrom": [{"secretRef": {"name": SECRET_NAME, "optional": True}}],
        "resources": {"requests": {"cpu": options.gateway_cpu, "memory": options.gateway_memory},
                      "limits": {"memory": options.gateway_memory}},
        "readinessProbe": http_probe(2, 2, 2),
        "livenessProbe": http_probe(10, 2, 3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(options.drain_delay_s)]}}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/corral", "readOnly": True}],
    }
    # A changed config changes the pod template, so `kubectl apply` rolls the gateway onto it.
    annotations = {**scrape_annotations(GATEWAY_PORT),
                   "corral.dev/config-sha256": hashlib.sha256(config_text.encode()).hexdigest()}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(GATEWAY_NAME, options.namespace, gateway_labels),
        "spec": {
            "replicas": options.gateway_replicas,
            "selector": {"matchLabels": dict(gateway_labels)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": dict(gateway_labels), "annotations": annotations},
                "spec": {
                    "containers": [container],
                    "terminationGracePeriodSeconds": options.drain_delay_s + math.ceil(longest_drain_s),
                    "volumes": [{"name": "config", "configMap": {"name": GATEWAY_NAME}}],
                },
            },
        },
    }
    return [config_map, deployment, service(GATEWAY_NAME, options.namespace, gateway_labels, GATEWAY_PORT)]


def secret_notes(config: GatewayConfig) -> list[str]:
    """Lines for secrets that the config holds and the ConfigMap will show in plain text."""
    return [f"groups.{name}.backends.{index}.api_key: written into the ConfigMap in plain text"
            for name, group in config.groups.items() for index, backend in enumerate(group.backends)
            if backend.api_key is not None]
