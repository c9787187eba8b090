"""Offline schema validation of Kubernetes objects: the built-in kinds against Kubernetes' own OpenAPI schemas
as kubernetes-validate ships them (strict: unknown keys refused, as ``kubectl apply``'s default strict field
validation does), KEDA's ScaledObject against tests/deploy/data's schema, which takes ObjectMeta and the HPA
behavior from the same Kubernetes definitions."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib.resources import files
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

KUBERNETES_VERSION = "1.37.0"
_KEDA_SCHEMA = Path(__file__).parent / "data" / "keda-scaledobject-v2.18.schema.json"


def validation_errors(obj: dict) -> list[str]:
    """Each problem with ``obj`` as ``path: message``; empty when it validates."""
    validator = _validator(obj.get("apiVersion", ""), obj.get("kind", ""))
    return [f"{'.'.join(str(part) for part in error.absolute_path) or '(top)'}: {error.message}"
            for error in validator.iter_errors(obj)]


def _schema_dir():
    return files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"


@cache
def _definitions() -> Resource:
    return Resource.from_contents(json.loads((_schema_dir() / "_definitions.json").read_text()))


@cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    if (api_version, kind) == ("keda.sh/v1alpha1", "ScaledObject"):
        schema = json.loads(_KEDA_SCHEMA.read_text())
    else:
        # kubernetes-validate's file names: <kind>-<group without domain>-<version>.json, or <kind>-<version>.
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        schema = json.loads((_schema_dir() / f"{kind.lower()}-{group_version}.json").read_text())
    registry = Registry().with_resources([(_definitions().id(), _definitions())])
    registry = registry.with_resource(schema.get("$id", "urn:corral:object"), Resource.from_contents(schema))
    return jsonschema.Draft202012Validator(schema, registry=registry)
