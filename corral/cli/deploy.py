"""``corral deploy``: a gateway config's model groups run somewhere else. ``corral deploy k8s`` writes Kubernetes
Deployments, Services and KEDA ScaledObjects (docs/kubernetes.md); it never imports torch or talks to a cluster.
``corral deploy ray`` runs each group as a Ray Serve deployment on a local or joined Ray cluster (docs/ray.md) until
Ctrl-C or SIGTERM."""

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
    ray = targets.add_parser("ray", help="run each model group as a Ray Serve deployment (needs corral[ray])",
                             description="Runs, per model group with local backends, a Ray Serve deployment of "
                             "`corral serve` replicas at http://HOST:PORT/<group> (a gateway `url` backend), "
                             "autoscaled by the group's `autoscaling:` settings with corral's policy; stops on "
                             "Ctrl-C or SIGTERM.", formatter_class=HelpFormatter)
    _add_ray_arguments(ray)


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


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("what to run")
    source.add_argument("--config", required=True, metavar="FILE", help="the gateway's YAML (docs/gateway.md)")
    source.add_argument("--autoscaling", default=None, metavar="FILE",
                        help="group name -> autoscaling settings (docs/autoscaling.md); over the config's own")
    cluster = parser.add_argument_group("the Ray cluster")
    cluster.add_argument("--address", default=None, help="a running cluster to join (ray://... or HOST:PORT); "
                         "default: start a local one bound to 127.0.0.1, stopped on exit")
    cluster.add_argument("--num-cpus", type=int, default=None, metavar="N", help="a local cluster's cores "
                         "(default: all); each replica takes its group's replicas.cores_per_replica")
    cluster.add_argument("--host", default="127.0.0.1", help="address Ray Serve's HTTP proxy binds")
    cluster.add_argument("--port", type=int, default=8000, help="port Ray Serve's HTTP proxy binds")


def run(args: argparse.Namespace) -> int:
    if args.target == "ray":
        return _run_ray(args)
    return _run_k8s(args)


def _run_ray(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from corral.deploy.ray_config import plan
    from corral.deploy.ray_replica import parse_serve_args
    from corral.deploy.ray_serve import RayOptions, start
    from corral.deploy.source import DeployError, load_source

    if args.address is not None and args.num_cpus is not None:
        raise DeployError("--num-cpus: sizes a local cluster only; a joined cluster has its own cores")
    ray_plan = plan(load_source(args.config, args.autoscaling))
    for group in ray_plan.groups:
        parse_serve_args(list(group.serve_args))  # bad arguments fail here, not in a replica on the cluster
    for note in ray_plan.notes:
        print(f"corral deploy ray: note: {note}", file=sys.stderr)
    running = start(ray_plan, RayOptions(args.address, args.host, args.port, args.num_cpus))
    stop = threading.Event()
    # ray.init installs its own SIGTERM handler; ours, set after it, stops the applications first.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        for group in ray_plan.groups:
            print(f"{group.name}: {running.url(group)}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        print("corral deploy ray: stopping", file=sys.stderr, flush=True)
        running.stop()
    return 0


def _run_k8s(args: argparse.Namespace) -> int:
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
