"""Deployment manifests for a gateway config (docs/kubernetes.md): ``corral deploy k8s`` writes Kubernetes and KEDA
objects from ``gateway.yaml``. Plain data in, plain dicts out: no torch, no engine, no cluster access."""
