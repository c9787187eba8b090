"""``corral deploy``: manifests that run a gateway config somewhere else. ``corral deploy k8s`` writes Kubernetes
Deployments, Services and KEDA ScaledObjects (docs/kubernetes.md); it never imports torch or talks to a cluster."""

from __future__ import annotations

import argparse

import corral
from corral.cli import HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    k8s = targets.add_parser("k8s", help="Kubernetes objects and KEDA ScaledObjects for each model group",
                             description="Writes, per model group with local backends, a Deployment of `corral "
                             "serve`, a Service and (with `autoscaling:`) a KEDA ScaledObject; and the gateway's "
                             "ConfigMap, Deployment and Service. Apply with `kubectl apply -f DIR`.",
                             formatter_class=HelpFormatter)
    _add_k8s_arguments(k8s)


def _add_k8s_arguments(parser: argparse.ArgumentParser) -> None:
    from corral.deploy.k8s_common import DEFAULT_PROMETHEUS, K8sOptions

    defaults = K8sOptions()
    source = parser.add_argument_group("what to deploy")
    source.add_argument("--config", required=True, metavar="FILE", help="the gateway's YAML (docs/gateway.md)")
    source.add_argument("--autoscaling", default=None, metavar="FILE",
                        help="group name -> autoscaling settings (docs/autoscaling.md); over the config's own")
    source.add_argument("--out", required=True, metavar="DIR", help="directory to write the YAML files into")
    cluster = parser.add_argument_group("the cluster")
    cluster.add_argument("--image", default=f"corral:{corral.__version__}", help="container image with corral installed")
    cluster.add_argument("--namespace", default=defaults.namespace, help="namespace of every object")
    cluster.add_argument("--prometheus-url", default=DEFAULT_PROMETHEUS, metavar="URL",
                         help="Prometheus that KEDA queries for the replicas' load")
    cluster.add_argument("--polling-interval", type=int, default=defaults.polling_interval_s, metavar="SECONDS",
                         help="how often KEDA queries Prometheus")
    pods = parser.add_argument_group("the replicas' pods")
    pods.add_argument("--cpu", default=defaults.cpu, help="CPU request of each replica (a Kubernetes quantity)")
    pods.add_argument("--memory", default=defaults.memory, help="memory request and limit of each replica")
    pods.add_argument("--gpus", type=int, default=defaults.gpus, metavar="N", help="nvidia.com/gpu per replica")
    pods.add_argument("--drain-seconds", type=int, default=defaults.drain_delay_s, metavar="SECONDS",
                      help="preStop sleep while a stopping pod leaves its Service, before SIGTERM")
    pods.add_argument("--model-claim", default=None, metavar="PVC",
                      help="a PersistentVolumeClaim holding the models, mounted read-only at --model-mount")
    pods.add_argument("--model-mount", default=defaults.model_mount, metavar="PATH", help="where --model-claim goes")
    gateway = parser.add_argument_group("the gateway's pods")
    gateway.add_argument("--gateway-replicas", type=int, default=defaults.gateway_replicas, metavar="N",
                         help="gateway pods")
    gateway.add_argument("--gateway-cpu", default=defaults.gateway_cpu, help="CPU request of each gateway pod")
    gateway.add_argument("--gateway-memory", default=defaults.gateway_memory, help="memory of each gateway pod")


def run(args: argparse.Namespace) -> int:
    import sys

    from corral.deploy.k8s import render, write_manifests
    from corral.deploy.k8s_common import K8sOptions
    from corral.deploy.source import DeployError, load_source

    try:
        options = K8sOptions(image=args.image, namespace=args.namespace, prometheus_url=args.prometheus_url,
                             cpu=args.cpu, memory=args.memory, gpus=args.gpus, gateway_cpu=args.gateway_cpu,
                             gateway_memory=args.gateway_memory, gateway_replicas=args.gateway_replicas,
                             drain_delay_s=args.drain_seconds, polling_interval_s=args.polling_interval,
                             model_claim=args.model_claim, model_mount=args.model_mount)
    except ValueError as error:
        raise DeployError(str(error)) from None
    manifests = render(load_source(args.config, args.autoscaling), options)
    for note in manifests.notes:
        print(f"corral deploy k8s: note: {note}", file=sys.stderr)
    for path in write_manifests(manifests, args.out):
        print(path)
    return 0
