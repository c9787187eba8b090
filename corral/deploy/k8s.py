"""``corral deploy k8s``: a gateway config as Kubernetes objects (docs/kubernetes.md). Per group with local
backends, a Deployment and a Service (k8s_replicas.py) and, when it autoscales, a KEDA ScaledObject (keda.py);
then the gateway's ConfigMap, Deployment and Service (k8s_gateway.py). One YAML file per group, one for the
gateway, each a stream of documents that ``kubectl apply -f DIR`` takes as it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from corral.deploy.k8s_common import K8sOptions, object_name
from corral.deploy.k8s_gateway import gateway_objects, in_cluster_config, secret_notes
from corral.deploy.k8s_replicas import replica_objects
from corral.deploy.keda import scaled_object
from corral.deploy.source import DeployError, DeploySource, local_groups, num_local_backends


@dataclass
class Manifests:
    """File name -> the objects written to it, in order; ``notes``: settings that could not be honoured exactly."""

    files: dict[str, list[dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def objects(self) -> list[dict]:
        return [obj for objs in self.files.values() for obj in objs]


def render(source: DeploySource, options: K8sOptions) -> Manifests:
    """Every object for the config; DeployError (one line, naming the key) for what cannot be deployed."""
    manifests = Manifests()
    config = source.config
    _check_names(list(config.groups))
    deployed: set[str] = set()
    for group_name, group, settings, args in local_groups(source):
        replicas = num_local_backends(group) if settings is None else settings.start_replicas
        objects = replica_objects(group_name, group, args, replicas, options)
        if settings is not None:
            scaler, notes = scaled_object(group_name, settings, options)
            objects.append(scaler)
            manifests.notes.extend(notes)
        manifests.files[f"{object_name(group_name)}.yaml"] = objects
        deployed.add(group_name)
    in_cluster = in_cluster_config(config, deployed, options.namespace)
    manifests.files["corral-gateway.yaml"] = gateway_objects(config, in_cluster, options)
    manifests.notes.extend(secret_notes(config))
    return manifests


def write_manifests(manifests: Manifests, out_dir: str | Path) -> list[Path]:
    """Writes each file (replacing one of the same name); returns their paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, objects in manifests.files.items():
            path = out / name
            path.write_text(yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False))
            paths.append(path)
    except OSError as error:
        raise DeployError(f"{out}: cannot write: {error.strerror}") from None
    return paths


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line strings (the ConfigMap's gateway.yaml) as readable ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _check_names(groups: list[str]) -> None:
    seen: dict[str, str] = {}
    for group in groups:
        name = object_name(group)
        if name in seen:
            raise DeployError(f"groups.{group}: its Kubernetes name {name!r} is also group {seen[name]!r}'s; "
                              "rename one")
        if name == "corral-gateway":
            raise DeployError(f"groups.{group}: its Kubernetes name {name!r} is the gateway's; rename it")
        seen[name] = group
